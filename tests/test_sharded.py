"""Sharded indexes: routing, the shared quantizer, fan-out with an exact merge,
partial answers, resumable builds, and the same API as one index (local executor).
Ray's executor and its Ray Data build are in tests/test_sharded_ray.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sie_index import Hits, Index, IndexClosed, InvalidInput, ShardedIndex, open_index
from sie_index.shard_merge import merge_hits
from storage import read_shard_map, shard_of
from storage.failpoints import ENV
from tests.conftest import synthetic_corpus

ROOT = Path(__file__).resolve().parents[1]
DIM = 16


def _union_oracle(
    ids: list[str], vectors: list[np.ndarray], allowed: set[str], q: np.ndarray, k: int
) -> tuple[list[str], np.ndarray]:
    """Exact MaxSim (float64) over the allowed documents of the whole corpus, their
    vectors rounded to float16 as the store keeps them: the top ``k`` ids and scores."""
    scored = []
    for ext, v in zip(ids, vectors, strict=True):
        if ext in allowed:
            D = v.astype(np.float16).astype(np.float64)
            scored.append((-(q.astype(np.float64) @ D.T).max(axis=1).sum(), ext))
    scored.sort()
    top = scored[:k]
    return [e for _, e in top], np.array([-s for s, _ in top])


def _normalized(vectors: list[np.ndarray]) -> list[np.ndarray]:
    return [v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n_docs=st.integers(1, 40),
    shards=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    k=st.integers(1, 12),
    group=st.sampled_from([None, "a", "b", "nowhere"]),
)
def test_the_merge_equals_exhaustive_maxsim_over_the_union(
    tmp_path_factory: pytest.TempPathFactory,
    ann_calls: list[int],
    n_docs: int,
    shards: int,
    seed: int,
    k: int,
    group: str | None,
) -> None:
    """1-5 shards, empty ones included, a filter that allows nothing in some: on the
    ANN path, the merged top k is the exact top k of one index over the union."""
    ids, vectors = synthetic_corpus(n_docs, DIM, seed=seed, max_tokens=8)
    vectors = _normalized(vectors)
    groups = ["a" if i % 3 == 0 else "b" for i in range(n_docs)]
    path = tmp_path_factory.mktemp("sharded") / "idx"
    with ShardedIndex.from_vectors(
        path,
        ids,
        vectors,
        shards=shards,
        metadata=[{"g": g} for g in groups],
        index_kind="flat",
    ) as index:
        assert len(index) == n_docs
        q = _normalized(synthetic_corpus(1, DIM, seed=seed + 1, max_tokens=5)[1])[0]
        flt = None if group is None else {"g": group}
        ann_calls.clear()
        hits = index.search(q, k=k, filter=flt, exact_threshold=0, n_rerank=max(k, 40))
        allowed = {e for e, g in zip(ids, groups, strict=True) if group is None or g == group}
        want_ids, want_scores = _union_oracle(ids, vectors, allowed, q, k)
        assert [h.external_id for h in hits] == want_ids
        np.testing.assert_allclose([h.score for h in hits], want_scores, rtol=1e-5, atol=1e-5)
        assert not hits.partial
        # every shard with an allowed document ran the token ANN
        assert len(ann_calls) >= len({shard_of(e, shards) for e in allowed}) > 0 or not allowed


def test_merge_breaks_ties_by_shard_then_internal_id() -> None:
    from sie_index import Hit

    a = [Hit(doc_id=3, external_id="x", score=1.0), Hit(doc_id=1, external_id="y", score=0.5)]
    b = [Hit(doc_id=0, external_id="z", score=1.0), Hit(doc_id=2, external_id="w", score=1.0)]
    merged = merge_hits([b, a], 3)
    assert [(h.external_id, h.shard) for h in merged] == [("z", 0), ("w", 0), ("x", 1)]
    partial = merge_hits([None, a], 1, missing=(0,))
    assert isinstance(partial, Hits) and partial.partial and partial.missing == (0,)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[np.ndarray]]:
    ids, vectors = synthetic_corpus(400, DIM, seed=11)
    return ids, _normalized(vectors)


def test_an_id_lives_in_the_one_shard_its_hash_names(tmp_path: Path, corpus) -> None:
    ids, vectors = corpus
    path = tmp_path / "idx"
    with ShardedIndex.from_vectors(
        path, ids[:200], vectors[:200], shards=3, index_kind="flat"
    ) as index:
        index.add_vectors(ids[200:300], vectors[200:300])
        index.add_vectors(ids[:50], vectors[300:350], replace=True)  # upserts, each in its shard
        index.delete(ids[100:120])
        index.delete_where(ids=ids[120:125])
        assert len(index) == 300 - 25
        report = index.verify()
        assert report["ok"], report
        seen: dict[str, int] = {}
        for position, shard in enumerate(index.shard_paths):
            with Index.open(shard) as one:
                for ext in one.lookup(one.external_ids()):
                    assert ext not in seen, f"{ext} is live in shards {seen[ext]} and {position}"
                    assert shard_of(ext, 3) == position
                    seen[ext] = position
        assert len(seen) == 275
        with pytest.raises(InvalidInput, match="document id is already"):
            index.add_vectors(ids[:1], vectors[:1])


def test_the_quantizer_is_trained_once_and_shared(tmp_path: Path, corpus) -> None:
    ids, vectors = corpus
    path = tmp_path / "idx"
    ShardedIndex.from_vectors(
        path, ids, vectors, shards=3, index_kind="ivf-flat", index_options={"nlist": 16}
    ).close()
    trained = {
        (shard / name / "trained.faiss").read_bytes()
        for shard in sorted(path.glob("shards-*"))
        for name in os.listdir(shard)
        if name.startswith("seg-")
    }
    assert len(trained) == 1
    shard_map = read_shard_map(path)
    assert shard_map is not None and shard_map.token_index is not None
    assert shard_map.token_index["nlist"] == 16


def test_the_same_api_as_one_index(tmp_path: Path, corpus) -> None:
    ids, vectors = corpus
    texts = [f"text of {e}" for e in ids]
    with (
        ShardedIndex.from_vectors(
            tmp_path / "sh", ids, vectors, shards=4, texts=texts, index_kind="flat"
        ) as sharded,
        Index.from_vectors(tmp_path / "one", ids, vectors, texts=texts, index_kind="flat") as one,
    ):
        qs = [vectors[i][:3] for i in (1, 50, 300)]
        # deep enough that both reach the true top 7 (the default 32 candidates of the
        # ANN need not, on these synthetic near ties, and then differ by where they miss)
        for a, b in zip(
            sharded.search_batch(qs, k=7, text=True, n_rerank=100),
            one.search_batch(qs, k=7, text=True, n_rerank=100),
            strict=True,
        ):
            assert [h.external_id for h in a] == [h.external_id for h in b]
            assert [h.text for h in a] == [h.text for h in b]
        explained = sharded.search(qs[0], k=2, explain=True)
        assert all(h.explain for h in explained)
        assert sharded.info()["documents"] == len(sharded) == 400
        sharded.compact()
        with pytest.raises(InvalidInput, match="shares one quantizer"):
            sharded.compact(retrain=True)
        assert isinstance(open_index(tmp_path / "sh"), ShardedIndex)
        assert isinstance(open_index(tmp_path / "one"), Index)
    with pytest.raises(IndexClosed):
        sharded.search(qs[0])


def test_a_failing_shard_is_named_or_left_out_when_partial_is_allowed(
    tmp_path: Path, corpus
) -> None:
    ids, vectors = corpus
    with ShardedIndex.from_vectors(
        tmp_path / "sh", ids, vectors, shards=3, index_kind="flat"
    ) as index:
        index._executor.indexes[1].close()  # type: ignore[union-attr]  # a shard gone
        with pytest.raises(IndexClosed, match="shard 1"):
            index.search(vectors[0][:3], k=5)
        hits = index.search(vectors[0][:3], k=5, allow_partial=True)
        assert hits.partial and hits.missing == (1,)
        assert len(hits) == 5 and all(shard_of(h.external_id, 3) != 1 for h in hits)


_BUILD_CHILD = """
import sys
import numpy as np
from sie_index import ShardedIndex
from tests.conftest import synthetic_corpus

ids, vectors = synthetic_corpus(1200, 16, seed=5)
vectors = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors]
ShardedIndex.from_vectors(sys.argv[1], ids, vectors, shards=3, index_kind="flat", overwrite=True)
"""


@pytest.mark.parametrize("failpoint", ["shards:after-shard-0", "shards:before-map"])
def test_a_killed_build_leaves_the_old_index_and_resumes_to_the_same_index(
    tmp_path: Path, failpoint: str
) -> None:
    path = tmp_path / "idx"
    ids, vectors = synthetic_corpus(1200, DIM, seed=5)
    vectors = _normalized(vectors)
    ShardedIndex.from_vectors(path, ids[:10], vectors[:10], shards=3, index_kind="flat").close()
    old_map = (path / "SHARDS").read_bytes()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_BUILD_CHILD))
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV: failpoint}
    child = subprocess.run([sys.executable, str(script), str(path)], env=env, cwd=ROOT)
    assert child.returncode == -signal.SIGKILL
    assert (path / "SHARDS").read_bytes() == old_map  # the old index, untouched
    with ShardedIndex.open(path) as old:
        assert len(old) == 10
    committed = sorted(p.name for p in path.glob("shards-000002-*") if (p / "CURRENT").exists())
    assert committed == (
        ["shards-000002-000"]
        if failpoint.endswith("0")
        else [f"shards-000002-00{i}" for i in range(3)]
    )
    pointers = {name: (path / name / "CURRENT").read_bytes() for name in committed}
    resumed = ShardedIndex.from_vectors(
        path, ids, vectors, shards=3, index_kind="flat", resume=True, overwrite=True
    )
    # the shards that had committed were kept, not built again
    assert {name: (path / name / "CURRENT").read_bytes() for name in committed} == pointers
    fresh = ShardedIndex.from_vectors(tmp_path / "fresh", ids, vectors, shards=3, index_kind="flat")
    with resumed, fresh:
        assert len(resumed) == len(fresh) == 1200
        assert resumed.shard_map.generation == 2  # the interrupted build's, resumed
        q = vectors[3][:4]
        a, b = resumed.search(q, k=10), fresh.search(q, k=10)
        assert [(h.external_id, h.score) for h in a] == [(h.external_id, h.score) for h in b]
        assert resumed.verify()["ok"]
    assert not (path / "BUILDING").exists()
    assert sorted(p.name for p in path.glob("shards-*")) == [
        f"shards-000002-00{i}" for i in range(3)
    ]


def test_the_cli_builds_searches_changes_and_verifies_a_sharded_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sie_index.cli import main

    path = tmp_path / "sh"
    assert main(["-q", "build", "debian-pkgs", str(path), "--limit", "40", "--shards", "3"]) == 0
    assert "40 documents" in capsys.readouterr().out
    assert main(["search", str(path), "image viewer", "-k", "3", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count('"id"') == 3
    assert main(["info", str(path), "--json"]) == 0
    assert '"shards"' in capsys.readouterr().out
    doomed = next(iter(ShardedIndex.open(path).search("image viewer", k=1))).external_id
    assert main(["delete", str(path), doomed]) == 0
    assert main(["verify", str(path)]) == 0
    assert "every shard verified" in capsys.readouterr().out
    with ShardedIndex.open(path) as index:
        assert len(index) == 39


def test_resharding_an_index_moves_its_vectors_and_answers_the_same(
    tmp_path: Path, corpus: tuple[list[str], list[np.ndarray]]
) -> None:
    ids, vectors = corpus
    texts = [f"t {e}" for e in ids]
    with Index.from_vectors(tmp_path / "one", ids, vectors, texts=texts, index_kind="flat") as one:
        one.delete(ids[:7])
        with ShardedIndex.from_index(tmp_path / "one", tmp_path / "sh", shards=4) as sharded:
            assert len(sharded) == len(one) == 393
            assert sharded.build_report is not None and sharded.build_report.documents == 393
            for i in (9, 77, 300):
                deep = {"exact_threshold": 0, "n_rerank": 100}  # both reach the true top
                a = sharded.search(vectors[i][:3], k=6, text=True, **deep)
                b = one.search(vectors[i][:3], k=6, text=True, **deep)
                assert [(h.external_id, h.score, h.text) for h in a] == [
                    (h.external_id, h.score, h.text) for h in b
                ]


def test_ids_must_be_strings_and_a_string_is_not_a_list_of_ids(tmp_path: Path) -> None:
    ids = ["a", "b", "c", "abc"]
    vectors = _normalized(synthetic_corpus(4, DIM, seed=3)[1])
    with ShardedIndex.from_vectors(
        tmp_path / "sh", ids, vectors, shards=2, index_kind="flat"
    ) as index:
        for bad in ("abc", [1], [None]):
            with pytest.raises(InvalidInput):
                index.delete(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            index.add_vectors("abc", vectors[:3])
        assert len(index) == 4


def test_resume_needs_an_interrupted_build_with_the_same_settings(tmp_path: Path) -> None:
    from sie_index import StorageError

    ids, vectors = synthetic_corpus(30, DIM, seed=4)
    vectors = _normalized(vectors)
    path = tmp_path / "sh"
    ShardedIndex.from_vectors(path, ids, vectors, shards=2, index_kind="flat").close()
    with pytest.raises(StorageError, match="no interrupted build to resume"):
        ShardedIndex.from_vectors(path, ids[:5], vectors[:5], shards=2, resume=True)
    (path / "BUILDING").write_text('{"generation": 7, "shards": 2, "request": {}}')
    with pytest.raises(InvalidInput, match="started with"):
        ShardedIndex.from_vectors(path, ids, vectors, shards=2, index_kind="flat", resume=True)
    with ShardedIndex.open(path) as index:
        assert len(index) == 30


def test_an_open_sharded_index_follows_a_rebuild(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(60, DIM, seed=6)
    vectors = _normalized(vectors)
    path = tmp_path / "sh"
    ShardedIndex.from_vectors(path, ids[:20], vectors[:20], shards=2, index_kind="flat").close()
    with ShardedIndex.open(path) as reader:
        old = set(reader.shard_map.shards)
        ShardedIndex.from_vectors(
            path, ids, vectors, shards=3, index_kind="flat", overwrite=True
        ).close()
        # the folders the open reader holds are kept; it answers from them until it refreshes
        assert all((path / name).is_dir() for name in old)
        assert len(reader) == 20
        assert reader.refresh() and len(reader) == 60 and len(reader.shard_map.shards) == 3
        reader.delete([ids[0]])  # a write goes to the new shards
        assert len(reader) == 59
    ShardedIndex.from_vectors(
        path, ids, vectors, shards=3, index_kind="flat", overwrite=True
    ).close()
    assert not any((path / name).exists() for name in old)  # swept once no reader holds them


def test_a_projected_index_is_not_resharded(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(60, DIM, seed=8)
    Index.from_vectors(
        tmp_path / "one", ids, vectors, index_kind="flat", codec="f16", dim=8
    ).close()
    with pytest.raises(InvalidInput, match="projection"):
        ShardedIndex.from_index(tmp_path / "one", tmp_path / "sh", shards=2)


def test_resharding_keeps_the_source_quantizer(
    tmp_path: Path, corpus: tuple[list[str], list[np.ndarray]]
) -> None:
    ids, vectors = corpus
    Index.from_vectors(
        tmp_path / "one", ids, vectors, index_kind="ivf-flat", index_options={"nlist": 8}
    ).close()
    ShardedIndex.from_index(tmp_path / "one", tmp_path / "sh", shards=3).close()
    trained = {
        p.read_bytes()
        for p in [
            *tmp_path.glob("one/seg-*/trained.faiss"),
            *tmp_path.glob("sh/*/seg-*/trained.faiss"),
        ]
    }
    assert len(trained) == 1  # the source's, shared by every shard: nothing trained again
