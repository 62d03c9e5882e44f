"""Token pooling: deterministic, about 1 / factor of the vectors, recorded in the
manifest, applied alike by build, add and upsert (a pooled index equals a fresh
pooled build of its live documents after any changes), carried through merges
and compactions, explained by the tokens each pooled vector merged; factor 1
changes nothing."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sie_index import CorruptIndex, Index, InvalidInput, SearchParams
from sie_index.cli import main as cli_main
from sie_index.encoders.base import EncoderSpec
from sie_index.pooling import MAX_POOL_FACTOR, pool_vectors
from storage.builder import StoreBuilder
from storage.merging import MergePolicy
from storage.segment import PendingDoc
from storage.snapshot import StoreSnapshot, parse_manifest, read_manifest
from storage.store_writer import StoreWriter
from storage.verify import verify_index
from tests.conftest import synthetic_corpus, synthetic_queries

DIM = 16
IDS, VECTORS = synthetic_corpus(120, DIM, seed=3, min_tokens=1, max_tokens=30)
PARAMS = SearchParams(k=5, n_rerank=5, k_token=16)


def _segment_files(path: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(path)): f.read_bytes()
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.parent.name.startswith("seg-")
    }


# -- the pooling itself ----------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_pooling_is_deterministic_and_keeps_about_one_vector_in_factor(factor: int) -> None:
    for D in VECTORS:
        a, b = pool_vectors(D, factor), pool_vectors(D.copy(), factor)
        want = math.ceil(len(D) / factor)
        if want >= len(D):
            assert a is None and b is None
            continue
        assert a is not None and b is not None
        assert a.vectors.tobytes() == b.vectors.tobytes()
        np.testing.assert_array_equal(a.sources, b.sources)
        # random vectors have no ties: fcluster gives exactly the clusters asked for
        assert a.vectors.shape == (want, DIM) and a.vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, rtol=1e-5)
        # sources: each original token's row; rows numbered by their first token
        assert len(a.sources) == len(D)
        firsts = [int(np.flatnonzero(a.sources == r)[0]) for r in range(want)]
        assert firsts == sorted(firsts) and firsts[0] == 0
        # each pooled vector is the normalized mean of the tokens it names
        for r in range(want):
            mean = D[a.sources == r].astype(np.float64).mean(axis=0)
            np.testing.assert_allclose(a.vectors[r], mean / np.linalg.norm(mean), atol=1e-6)


def test_pooling_merges_the_closest_tokens_first() -> None:
    """Ward's linkage: two identical tokens and a near one merge before far ones."""
    rng = np.random.default_rng(0)
    far = rng.standard_normal((3, DIM)).astype(np.float32)
    D = np.stack([far[0], far[1], far[0], far[2], far[0] + 0.01 * far[1]])
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    pooled = pool_vectors(D, 2)
    assert pooled is not None
    assert pooled.sources.tolist() == [0, 1, 0, 2, 0]


def test_a_long_document_is_pooled_in_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import sie_index.pooling as pooling

    monkeypatch.setattr(pooling, "MAX_POOL_TOKENS", 10)
    D = np.concatenate(VECTORS[:4])[:25]
    pooled = pool_vectors(D, 2)
    assert pooled is not None
    assert len(pooled.vectors) == 5 + 5 + 3
    # no pooled vector mixes tokens of two runs
    for lo in (0, 10, 20):
        assert not set(pooled.sources[lo : lo + 10]) & set(pooled.sources[:lo])


# -- build, manifest, door ---------------------------------------------------------------


def test_a_factor_2_build_has_about_half_the_tokens_and_records_it(tmp_path: Path) -> None:
    index = Index.from_vectors(tmp_path / "p2", IDS, VECTORS, pool_factor=2)
    want = sum(math.ceil(len(v) / 2) for v in VECTORS)
    assert index.info()["tokens"] == want
    assert want <= 0.5 * sum(len(v) for v in VECTORS) + len(VECTORS)
    assert index.info()["pool_factor"] == 2
    assert read_manifest(tmp_path / "p2").pool_factor == 2
    assert verify_index(tmp_path / "p2").ok
    # the stored vectors are the pooled ones, in document order
    with StoreSnapshot.open(tmp_path / "p2") as snap:
        for i in (0, 7, 50):
            start, count = snap.spans.token_start[i], snap.spans.token_count[i]
            stored = snap.tokens.read_spans(np.array([start]), np.array([count]))
            pooled = pool_vectors(VECTORS[i], 2)
            want_rows = VECTORS[i] if pooled is None else pooled.vectors
            np.testing.assert_allclose(stored.astype(np.float32), want_rows, atol=1e-3)


def test_the_same_pooled_build_twice_is_byte_identical(tmp_path: Path) -> None:
    for name in ("a", "b"):
        Index.from_vectors(tmp_path / name, IDS, VECTORS, pool_factor=3, index_kind="flat")
    assert _segment_files(tmp_path / "a") == _segment_files(tmp_path / "b")


def test_factor_1_leaves_the_index_as_it_was(tmp_path: Path) -> None:
    Index.from_vectors(tmp_path / "default", IDS, VECTORS, index_kind="flat")
    Index.from_vectors(tmp_path / "one", IDS, VECTORS, index_kind="flat", pool_factor=1)
    a, b = _segment_files(tmp_path / "default"), _segment_files(tmp_path / "one")
    assert a == b
    for path in (tmp_path / "default", tmp_path / "one"):
        raw = json.loads(next(path.glob("gen-*/manifest.json")).read_text())
        assert "pool_factor" not in raw  # the manifest of an index before pooling
        assert read_manifest(path).pool_factor == 1  # and it reads as factor 1
        assert raw["tokens"] == sum(len(v) for v in VECTORS)
        with StoreSnapshot.open(path) as snap:
            assert not snap.docs.readers[0].pooled  # no token_sources table


@pytest.mark.parametrize("factor", [0, -1, 1.5, 2.0, True, "2", None, MAX_POOL_FACTOR + 1])
def test_a_bad_pool_factor_is_refused_at_the_door(tmp_path: Path, factor: Any) -> None:
    with pytest.raises(InvalidInput, match="pool_factor"):
        Index.from_vectors(tmp_path / "x", IDS[:3], VECTORS[:3], pool_factor=factor)
    assert not (tmp_path / "x").exists()


def test_shards_refuse_pooling_they_cannot_keep(tmp_path: Path) -> None:
    from sie_index.sharded import ShardedIndex

    Index.from_vectors(tmp_path / "p2", IDS, VECTORS, pool_factor=2)
    with pytest.raises(InvalidInput, match="pooled"):
        ShardedIndex.from_index(tmp_path / "p2", tmp_path / "sharded", shards=2)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "a"}\n')
    args = ["build", str(corpus), str(tmp_path / "s"), "--shards", "2", "--pool-factor", "2"]
    assert cli_main(args) != 0


def test_the_cli_builds_a_pooled_index_and_info_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "vecs.npz", **dict(zip(IDS, VECTORS, strict=True)))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": i}) + "\n" for i in IDS))
    out = tmp_path / "idx"
    vecs = f"precomputed:{tmp_path / 'vecs.npz'}"
    rc = cli_main(
        ["--quiet", "build", str(corpus), str(out), "--encoder", vecs, "--pool-factor", "2"]
    )
    assert rc == 0
    capsys.readouterr()
    assert cli_main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pool_factor"] == 2
    assert info["tokens"] == sum(math.ceil(len(v) / 2) for v in VECTORS)
    assert cli_main(["build", str(corpus), str(tmp_path / "y"), "--pool-factor", "0"]) != 0


@pytest.mark.parametrize("value", [0, -2, MAX_POOL_FACTOR + 1, 1.0, True, "2"])
def test_a_manifest_with_a_bad_pool_factor_is_corrupt_and_never_committed(
    tmp_path: Path, value: Any
) -> None:
    Index.from_vectors(tmp_path / "idx", IDS[:5], VECTORS[:5], pool_factor=2)
    manifest = read_manifest(tmp_path / "idx")
    raw = json.loads(manifest.to_bytes())
    raw["pool_factor"] = value
    with pytest.raises(CorruptIndex, match="pool_factor"):
        parse_manifest(json.dumps(raw).encode(), "m")
    # the writer's door is the reader's check
    with (
        pytest.raises(InvalidInput, match="pool_factor"),
        StoreBuilder(tmp_path / "b", DIM) as builder,
    ):
        builder.add([PendingDoc(external_id="a", text=None, metadata=None, vectors=VECTORS[0])])
        builder.finish(encoder_spec=manifest.encoder, pool_factor=value)


def test_a_resume_with_another_pool_factor_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sie_index.writer as writer

    calls = 0
    real = writer.batch_digest

    def fails_on_the_third_batch(batch: Sequence[Any]) -> str:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("the encoder died")
        return real(batch)

    monkeypatch.setattr(writer, "batch_digest", fails_on_the_third_batch)
    path = tmp_path / "idx"
    encoder, docs = Index.precomputed_documents(IDS, VECTORS)
    with pytest.raises(RuntimeError, match="died"):
        Index.build(path, docs, encoder=encoder, batch_size=20, pool_factor=2)
    monkeypatch.setattr(writer, "batch_digest", real)
    with pytest.raises(InvalidInput, match="pool_factor"):
        Index.build(path, docs, encoder=encoder, batch_size=20, pool_factor=3, resume=True)
    index = Index.build(path, docs, encoder=encoder, batch_size=20, pool_factor=2, resume=True)
    assert index.build_report is not None and index.build_report.resumed_documents == 40
    assert index.info()["tokens"] == sum(math.ceil(len(v) / 2) for v in VECTORS)


# -- adds pool alike: a pooled index equals a fresh pooled build --------------------------


def _vectors_of(ext: str, version: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{ext}|{version}".encode()))
    v = rng.standard_normal((int(rng.integers(1, 14)), DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _pending(ext: str, version: str, factor: int) -> PendingDoc:
    D = _vectors_of(ext, version)
    pooled = pool_vectors(D, factor)
    return PendingDoc(
        external_id=ext,
        text=f"{ext}|{version}",
        metadata=None,
        vectors=D if pooled is None else pooled.vectors,
        sources=None if pooled is None else pooled.sources,
    )


def _stored_state(path: Path) -> dict[str, tuple[bytes, list[int] | None]]:
    """External id -> its stored vectors' bytes and token sources, of every live document."""
    with StoreSnapshot.open(path) as snap:
        live = np.flatnonzero(~snap.spans.deleted)
        stored = snap.docs.fetch(live.tolist(), text=True)
        sources = snap.docs.sources(live.tolist())
        out = {}
        for d in live.tolist():
            rows = snap.tokens.read_raw(
                snap.spans.token_start[[d]], snap.spans.token_count[[d]]
            ).tobytes()
            src = sources.get(d)
            out[stored[d].external_id] = (rows, None if src is None else src.tolist())
        return out


_changes = st.lists(
    st.tuples(
        st.sampled_from(["add", "upsert", "delete", "compact"]),
        st.integers(0, 2**31),
    ),
    min_size=1,
    max_size=6,
)


@given(changes=_changes)
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_a_pooled_index_equals_a_fresh_pooled_build_after_changes(
    tmp_path_factory: pytest.TempPathFactory, changes: list[tuple[str, int]]
) -> None:
    """Adds, upserts and deletes through the Index API (which pool by the recorded
    factor), then search and every stored vector and token source compared with a
    fresh pooled build of the live documents."""
    tmp = tmp_path_factory.mktemp("living")
    factor = 2
    versions = {f"b{i}": "v0" for i in range(60)}
    ids = list(versions)
    index = Index.from_vectors(
        tmp / "idx",
        ids,
        [_vectors_of(e, "v0") for e in ids],
        texts=[f"{e}|v0" for e in ids],
        index_kind="flat",
        pool_factor=factor,
    )
    for n, (op, seed) in enumerate(changes):
        rng = np.random.default_rng(seed)
        live = sorted(versions)
        version = f"v{n + 1}"
        if op == "add":
            new = [f"n{n}-{i}" for i in range(int(rng.integers(1, 12)))]
            index.add_vectors(
                new, [_vectors_of(e, version) for e in new], texts=[f"{e}|{version}" for e in new]
            )
            versions.update(dict.fromkeys(new, version))
        elif op == "upsert":
            picked = [live[i] for i in rng.choice(len(live), size=4, replace=False)] + [f"u{n}"]
            index.add_vectors(
                picked,
                [_vectors_of(e, version) for e in picked],
                texts=[f"{e}|{version}" for e in picked],
                replace=True,
            )
            versions.update(dict.fromkeys(picked, version))
        elif op == "delete":
            doomed = [live[i] for i in rng.choice(len(live), size=5, replace=False)]
            index.delete(doomed)
            for e in doomed:
                versions.pop(e)
        else:
            index.compact()
    live_ids = sorted(versions)
    fresh = Index.from_vectors(
        tmp / "fresh",
        live_ids,
        [_vectors_of(e, versions[e]) for e in live_ids],
        texts=[f"{e}|{versions[e]}" for e in live_ids],
        index_kind="flat",
        pool_factor=factor,
    )
    assert index.info()["pool_factor"] == fresh.info()["pool_factor"] == factor
    assert index.info()["tokens"] - _dead_tokens(index) == fresh.info()["tokens"]
    assert _stored_state(tmp / "idx") == _stored_state(tmp / "fresh")
    qs = synthetic_queries([_vectors_of(e, versions[e]) for e in live_ids], 5, seed=len(changes))
    for got, want in zip(
        index.search_batch(qs, params=PARAMS), fresh.search_batch(qs, params=PARAMS), strict=True
    ):
        assert [h.external_id for h in got] == [h.external_id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
    assert verify_index(tmp / "idx").ok


def _dead_tokens(index: Index) -> int:
    """Tokens of deleted documents, still stored until a compaction."""
    with StoreSnapshot.open(index.path) as snap:
        return int(snap.spans.token_count[snap.spans.deleted].sum())


EAGER_MERGES = MergePolicy(factor=2, min_tokens=1, max_segments=2)


@given(changes=_changes)
@example(changes=[(op, 7) for op in ("add", "add", "upsert", "add", "delete", "add", "compact")])
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_token_sources_travel_through_merges_and_compactions(
    tmp_path_factory: pytest.TempPathFactory, changes: list[tuple[str, int]]
) -> None:
    """The storage layer alone, merging after nearly every add: each live document's
    stored rows and token sources stay those it was added with."""
    tmp = tmp_path_factory.mktemp("merges")
    spec = EncoderSpec(kind="precomputed", model="pool-test", dim=DIM).to_dict()
    with StoreBuilder(tmp / "idx", DIM) as builder:
        builder.add([_pending(f"b{i}", "v0", 2) for i in range(40)])
        builder.finish(encoder_spec=spec, index_kind="ivf-flat", index_options={"nlist": 4})
    versions = {f"b{i}": "v0" for i in range(40)}
    with StoreWriter(tmp / "idx", merge_policy=EAGER_MERGES) as writer:
        for n, (op, seed) in enumerate(changes):
            rng = np.random.default_rng(seed)
            version = f"v{n + 1}"
            live = sorted(writer.live)
            if op == "compact":
                writer.compact()
            elif op == "delete":
                doomed = [live[i] for i in rng.choice(len(live), size=3, replace=False)]
                writer.delete(doomed)
                for e in doomed:
                    versions.pop(e)
            else:
                ids = [f"n{n}-{i}" for i in range(int(rng.integers(1, 8)))]
                if op == "upsert":
                    ids += [live[i] for i in rng.choice(len(live), size=3, replace=False)]
                writer.add([[_pending(e, version, 2) for e in ids]], replace=op == "upsert")
                versions.update(dict.fromkeys(ids, version))
    state = _stored_state(tmp / "idx")
    assert set(state) == set(versions)
    for ext, (rows, sources) in state.items():
        want = _pending(ext, versions[ext], 2)
        assert want.vectors is not None
        assert rows == want.vectors.astype(np.float16).tobytes()
        assert sources == (None if want.sources is None else want.sources.tolist())
    assert verify_index(tmp / "idx").ok


def test_sources_that_do_not_describe_the_vectors_are_refused(tmp_path: Path) -> None:
    D = VECTORS[0][:4]
    bad_sources = [np.array([0, 1, 5]), np.array([0, 0, 0]), np.array([0.0, 1.0, 2.0, 3.0])]
    with StoreBuilder(tmp_path / "idx", DIM) as builder:
        for sources in bad_sources:
            doc = PendingDoc(external_id="a", text=None, metadata=None, vectors=D, sources=sources)
            with pytest.raises(InvalidInput, match="token sources"):
                builder.add([doc])
        builder.abort()


# -- explanations name the tokens a pooled vector merged -----------------------------------


class WordEncoder:
    """One vector a word, the same for the same word: pooling merges repeated words."""

    def __init__(self) -> None:
        self.spec = EncoderSpec(kind="test-words", model="words", dim=DIM)

    def _vec(self, word: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(word.encode())).standard_normal(DIM)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.stack([self._vec(w) for w in t.split()]) for t in texts]

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.encode_documents(texts)

    def token_texts(self, texts: Sequence[str], *, is_query: bool) -> list[list[str]]:
        return [t.split() for t in texts]


def test_explain_says_a_matched_vector_is_pooled_and_names_its_tokens(tmp_path: Path) -> None:
    docs = [
        {"id": "fruit", "text": "apple pear apple plum apple pear"},
        {"id": "other", "text": "stone river cloud"},
    ]
    index = Index.build(tmp_path / "idx", docs, encoder=WordEncoder(), pool_factor=2)
    assert index.info()["tokens"] == 3 + 2  # {apple x3, pear x2, plum}; 3 of 3 -> 2
    (hit, *_) = index.search("apple plum", k=1, explain=True)
    assert hit.external_id == "fruit"
    assert hit.explain is not None
    apple, plum = hit.explain
    assert apple.pooled and apple.merged_tokens == (0, 2, 4)
    assert apple.merged_texts == ("apple", "apple", "apple")
    assert apple.doc_text == "apple + apple + apple"
    assert apple.query_text == "apple" and apple.similarity == pytest.approx(1.0, abs=1e-3)
    # a vector of one token of a pooled document: its row, and its token's position
    assert not plum.pooled and (plum.doc_token, plum.merged_tokens) == (2, (3,))
    assert plum.doc_text == "plum" and plum.merged_texts == ("plum",)
    assert hit.to_dict()["explain"][0]["merged_texts"] == ["apple", "apple", "apple"]
    # an add pools alike, and its explanations name its tokens too
    index.add([{"id": "more", "text": "fig fig fig kiwi"}])
    (hit, *_) = index.search("fig", k=1, explain=True)
    assert hit.external_id == "more" and hit.explain is not None
    assert hit.explain[0].merged_texts == ("fig", "fig", "fig")
    # an unpooled index's explanations are as they were
    plain = Index.build(tmp_path / "plain", docs, encoder=WordEncoder())
    (hit, *_) = plain.search("apple plum", k=1, explain=True)
    assert hit.explain is not None
    assert [(m.doc_token, m.doc_text, m.merged_tokens) for m in hit.explain] == [
        (0, "apple", None),
        (3, "plum", None),
    ]
    assert "merged_tokens" not in hit.to_dict()["explain"][0]


def test_damaged_token_sources_are_found_by_verify_and_explain(tmp_path: Path) -> None:
    import sqlite3

    index = Index.from_vectors(tmp_path / "idx", IDS, VECTORS, pool_factor=2, index_kind="flat")
    Q = VECTORS[4][:3]
    (hit, *_) = index.search(Q, k=1, explain=True)
    assert hit.external_id == IDS[4]
    index.close()
    assert verify_index(tmp_path / "idx").ok
    (db,) = (tmp_path / "idx").glob("seg-*/docs.sqlite")
    conn = sqlite3.connect(db)
    data = bytearray(
        conn.execute("SELECT sources FROM token_sources WHERE doc_id = 4").fetchone()[0]
    )
    data[0] ^= 1  # one bit of one document's sources
    conn.execute("UPDATE token_sources SET sources = ? WHERE doc_id = 4", [bytes(data)])
    conn.commit()
    conn.close()
    report = verify_index(tmp_path / "idx")
    assert not report.ok and "token sources of document row 4" in (report.problem or "")
    with Index.open(tmp_path / "idx") as damaged, pytest.raises(CorruptIndex, match="sources"):
        damaged.search(Q, k=1, explain=True)
