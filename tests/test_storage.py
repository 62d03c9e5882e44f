"""The on-disk layer: round trips, atomic batches, checksums, typed errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sie_index.errors import (
    CorruptIndex,
    DimensionMismatch,
    FormatVersionMismatch,
    IndexLocked,
    InvalidInput,
    NotAnIndex,
    StorageError,
)
from storage.builder import PendingDoc, StoreBuilder, check_vectors
from storage.docstore import DOCS_NAME
from storage.generations import CURRENT_NAME
from storage.lock import WriteLock
from storage.manifest import MANIFEST_NAME
from storage.snapshot import StoreSnapshot
from storage.store_writer import StoreWriter
from storage.token_index import (
    TOKEN_INDEX_NAME,
    TRAIN_SAMPLE_MAX,
    TokenIndex,
    plan_token_index,
    training_rows,
)
from storage.vectors import TOKENS_NAME, TokenReader, TokenWriter
from tests.storage_helpers import data_path, resign, rewrite_manifest

SPEC = {"kind": "precomputed", "model": "test", "dim": 8, "options": {}}


def _doc(ext: str, n: int, dim: int = 8, seed: int = 0, **kw: object) -> PendingDoc:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return PendingDoc(
        external_id=ext,
        text=kw.get("text", f"text {ext}"),  # type: ignore[arg-type]
        metadata=kw.get("metadata"),
        vectors=v,
    )  # type: ignore[arg-type]


def _build(path: Path, batches: list[list[PendingDoc]], dim: int = 8) -> None:
    with StoreBuilder(path, dim) as b:
        for batch in batches:
            b.add(batch)
        b.finish(encoder_spec={**SPEC, "dim": dim}, index_kind="flat")


# storable text: a NUL or a lone surrogate is refused (storage.values)
chars = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
doc_strategy = st.lists(
    st.tuples(
        st.integers(1, 12),
        st.text(chars, min_size=1, max_size=30),
        st.one_of(
            st.none(), st.dictionaries(st.text(chars, max_size=5), st.integers(), max_size=3)
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(docs=doc_strategy, batch=st.integers(1, 7))
def test_round_trip_of_documents_and_vectors(tmp_path: Path, docs: list, batch: int) -> None:
    path = tmp_path / f"idx-{os.urandom(4).hex()}"
    pending = [
        PendingDoc(
            external_id=f"d{i}",
            text=text,
            metadata=meta,
            vectors=np.random.default_rng(i).standard_normal((n, 8)).astype(np.float32),
        )
        for i, (n, text, meta) in enumerate(docs)
    ]
    _build(path, [pending[i : i + batch] for i in range(0, len(pending), batch)])
    snap = StoreSnapshot.open(path)
    try:
        assert snap.manifest.documents == len(pending)
        assert snap.manifest.tokens == sum(len(d.vectors) for d in pending)
        stored = snap.docs.fetch(range(len(pending)), text=True, metadata=True)
        for i, d in enumerate(pending):
            assert stored[i].external_id == d.external_id
            assert stored[i].text == d.text
            assert stored[i].metadata == d.metadata
            start, count = snap.spans.token_start[i], snap.spans.token_count[i]
            got = snap.tokens.spans(np.array([start]), np.array([count]))
            np.testing.assert_array_equal(got, d.vectors.astype(np.float16).astype(np.float32))
            assert (snap.tokens.token_doc[start : start + count] == i).all()
        assert snap.token_index.ntotal == snap.manifest.tokens
    finally:
        snap.close()


def test_read_spans_concatenates_ranges(tmp_path: Path) -> None:
    writer = TokenWriter(tmp_path, 2)
    writer.append(np.arange(24, dtype=np.float32).reshape(12, 2), np.zeros(12))
    writer.close()
    got = TokenReader(tmp_path, 2, 12).read_spans(np.array([5, 0, 10]), np.array([2, 3, 1]))
    assert got[:, 0].tolist() == [2 * r for r in [5, 6, 0, 1, 2, 10]]


@pytest.mark.parametrize(
    ("vectors", "error", "needle"),
    [
        (np.full((2, 8), np.nan, np.float32), InvalidInput, "NaN"),
        (np.array([[np.inf] + [0.5] * 7], np.float32), InvalidInput, "NaN or Inf"),
        (np.ones((3, 7), np.float32), DimensionMismatch, "dimension 7"),
        (np.zeros((0, 8), np.float32), InvalidInput, "zero rows"),
        (
            np.vstack([np.ones((1, 8)), np.zeros((1, 8))]).astype(np.float32),
            InvalidInput,
            "all-zero",
        ),
        (np.array([["a"] * 8]), InvalidInput, "dtype"),
        (np.ones(8, np.float32), InvalidInput, "shape"),
        (np.full((1, 8), 1e6, np.float32), InvalidInput, "float16"),
    ],
)
def test_bad_vectors_are_rejected_naming_the_document(
    vectors: np.ndarray, error: type[Exception], needle: str
) -> None:
    with pytest.raises(error) as info:
        check_vectors(vectors, 8, doc_id="bad-doc")
    assert needle in str(info.value)
    assert "bad-doc" in str(info.value)


def test_a_bad_batch_commits_nothing_and_keeps_earlier_batches(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    with StoreBuilder(path, 8) as b:
        b.add([_doc("a", 3), _doc("b", 2)])
        bad = PendingDoc(external_id="c", text="t", metadata=None, vectors=np.full((2, 8), np.nan))
        with pytest.raises(InvalidInput, match="'c'"):
            b.add([_doc("x", 2), bad])
        with pytest.raises(InvalidInput, match="'a'"):
            b.add([_doc("y", 2), _doc("a", 2)])
        assert b.n_docs == 2
        assert b.n_tokens == 5
        b.add([_doc("d", 4)])
        b.finish(encoder_spec=SPEC, index_kind="flat")
    snap = StoreSnapshot.open(path)
    ids = [d.external_id for d in snap.docs.fetch(range(3)).values()]
    assert sorted(ids) == ["a", "b", "d"]
    assert snap.manifest.tokens == 9
    snap.close()


def test_failed_build_leaves_no_trace_and_keeps_the_old_index(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _build(path, [[_doc("a", 3)]])
    before = sorted(p.name for p in path.iterdir())
    current = (path / CURRENT_NAME).read_bytes()
    with pytest.raises(RuntimeError), StoreBuilder(path, 8, overwrite=True) as b:
        b.add([_doc("z", 2)])
        raise RuntimeError("killed mid-build")
    assert (path / CURRENT_NAME).read_bytes() == current
    assert sorted(p.name for p in path.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    with pytest.raises(StorageError, match="already holds an index"):
        StoreBuilder(path, 8)
    snap = StoreSnapshot.open(path)
    assert [d.external_id for d in snap.docs.fetch([0]).values()] == ["a"]
    snap.close()


def test_a_failed_first_build_leaves_no_folder(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), StoreBuilder(tmp_path / "new", 8) as b:
        b.add([_doc("z", 2)])
        raise RuntimeError("failed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StorageError, match="not a sie-index index"):
        StoreBuilder(tmp_path / "mine", 8, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_open_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(NotAnIndex, match=r"no committed generation \(CURRENT\)"):
        StoreSnapshot.open(tmp_path)
    with pytest.raises(NotAnIndex, match="not a folder"):
        StoreSnapshot.open(tmp_path / "absent")
    path = tmp_path / "idx"
    _build(path, [[_doc("a", 3)]])
    rewrite_manifest(path, lambda raw: raw.update(format_version=99))
    with pytest.raises(FormatVersionMismatch, match="format version 99"):
        StoreSnapshot.open(path)
    resign(path, b"{not json")
    with pytest.raises(CorruptIndex, match="not valid JSON"):
        StoreSnapshot.open(path)


def test_a_format_1_index_asks_for_a_rebuild_and_overwrite_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "old"
    path.mkdir()
    (path / MANIFEST_NAME).write_text(json.dumps({"format_version": 1}))
    (path / "tokens.f16").write_bytes(b"\0" * 16)
    (tmp_path / ".old.build-999999999-0123abcd").mkdir()  # a killed format-1 build
    with pytest.raises(FormatVersionMismatch, match="format version 1"):
        StoreSnapshot.open(path)
    with pytest.raises(StorageError, match="already holds an index"):
        StoreBuilder(path, 8)
    with StoreBuilder(path, 8, overwrite=True) as b:
        b.add([_doc("a", 3)])
        b.finish(encoder_spec=SPEC, index_kind="flat")
    assert sorted(p.name for p in path.iterdir()) == [
        CURRENT_NAME,
        "gen-000001",
        "seg-000001",
        "write.lock",
    ]
    # what lies beside the index is not the index's, whatever its name
    assert sorted(p.name for p in tmp_path.iterdir()) == [".old.build-999999999-0123abcd", "old"]
    StoreSnapshot.open(path).close()


def test_a_writer_removes_nothing_beside_its_folder(tmp_path: Path) -> None:
    """Folders named like a format-1 builder's scratch are the user's: they stay."""
    parent = tmp_path / "parent"
    path = parent / "myidx"
    _build(path, [[_doc("a", 3)]])
    mine = [parent / ".myidx.old-0badcafe", parent / ".myidx.build-999999-deadbeef"]
    for folder in mine:
        folder.mkdir()
        (folder / "notes.txt").write_text("the user's")
    with StoreWriter(path) as writer:
        writer.delete(["a"])
    with StoreBuilder(path, 8, overwrite=True) as b:
        b.add([_doc("b", 3)])
        b.finish(encoder_spec=SPEC, index_kind="flat")
    for folder in mine:
        assert (folder / "notes.txt").read_text() == "the user's"


@pytest.mark.parametrize("name", [TOKEN_INDEX_NAME, TOKENS_NAME, "token_doc.i32"])
def test_damaged_files_give_corrupt_index(tmp_path: Path, name: str) -> None:
    path = tmp_path / "idx"
    _build(path, [[_doc("a", 30), _doc("b", 20)]])
    target = data_path(path, name)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x40
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match=name.replace(".", r"\.")):
        StoreSnapshot.open(path)
    target.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(CorruptIndex, match=r"truncated|shorter"):
        StoreSnapshot.open(path)


def test_missing_sqlite_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _build(path, [[_doc("a", 3)]])
    data_path(path, DOCS_NAME).unlink()
    with pytest.raises(CorruptIndex, match=DOCS_NAME):
        StoreSnapshot.open(path)


def test_second_writer_gets_index_locked(tmp_path: Path) -> None:
    with WriteLock(tmp_path), pytest.raises(IndexLocked):
        WriteLock(tmp_path).acquire()
    with WriteLock(tmp_path):  # released: free again
        pass


@pytest.mark.parametrize(
    ("kind", "n_tokens", "resolved"),
    [
        ("auto", 16_384, "flat"),
        ("auto", 50_000, "ivf-pq"),
        ("auto", 2_000_000, "ivf-pq"),
        ("hnsw", 10, "hnsw"),
    ],
)
def test_auto_kind(kind: str, n_tokens: int, resolved: str) -> None:
    assert plan_token_index(kind, n_tokens, 384).kind == resolved


def test_nlist_follows_token_count_and_training_is_bounded() -> None:
    small = plan_token_index("ivf-pq", 200_000, 384)
    full = plan_token_index("ivf-pq", 1_000_000, 384)
    big = plan_token_index("ivf-pq", 50_000_000, 384)
    # sqrt(N) lists for a small corpus (fast k-means), 4 sqrt(N) from a million tokens
    assert small.nlist == 512 and full.nlist == 4096 and big.nlist == 32768
    lists = [plan_token_index("ivf-pq", n, 384).nlist for n in range(20_000, 3_000_000, 10_000)]
    assert lists == sorted(lists)  # never fewer lists for more tokens
    assert small.pq_m == 48
    assert big.train_sample == TRAIN_SAMPLE_MAX
    rows = training_rows(50_000_000, big.train_sample, seed=3)
    assert len(rows) == TRAIN_SAMPLE_MAX and len(np.unique(rows)) == len(rows)
    np.testing.assert_array_equal(rows, training_rows(50_000_000, big.train_sample, seed=3))


class _Rows:
    """Token rows as TokenIndex.train reads them."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.n_tokens, self.dim = x, len(x), x.shape[1]

    def sample_rows(self, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
        return self.x[rows]


def test_ivf_pq_trains_without_polysemous_ordering() -> None:
    """Polysemous training (four fifths of the training time, for Hamming filtering
    that no search here uses) is off, and the codebooks are trained all the same."""
    import faiss

    tokens = _Rows(np.random.default_rng(0).standard_normal((12_000, 16)).astype(np.float32))
    plan = plan_token_index("ivf-pq", tokens.n_tokens, tokens.dim)
    trained = TokenIndex.train(plan, tokens)
    index = faiss.downcast_index(trained)  # a view: ``trained`` owns the index
    assert index.is_trained and not index.do_polysemous_training
    codes = index.sa_encode(tokens.x[:500])
    error = np.linalg.norm(index.sa_decode(codes) - tokens.x[:500]) / np.linalg.norm(tokens.x[:500])
    assert error < 0.7, error


def test_too_small_for_ivf_says_so() -> None:
    with pytest.raises(InvalidInput, match="use index kind 'flat'"):
        plan_token_index("ivf-pq", 500, 32)
    with pytest.raises(InvalidInput, match="unknown index kind"):
        plan_token_index("annoy", 500, 32)
