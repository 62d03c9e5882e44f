"""Exhaustive MaxSim against a brute-force loop over a small on-disk token store."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sie_index.errors import CorruptIndex, DimensionMismatch, InvalidInput
from sie_index.exhaustive import exhaustive_scores, exhaustive_search
from storage.vectors import TokenReader, TokenWriter

DIM = 6


def write_store(
    folder: Path, docs: list[np.ndarray], gap_rows: int = 0
) -> tuple[TokenReader, np.ndarray, np.ndarray]:
    """Documents' rows back to back in doc-id order, ``gap_rows`` unowned rows before each."""
    writer = TokenWriter(folder, DIM)
    starts, counts = [], []
    for doc_id, doc in enumerate(docs):
        if gap_rows:
            writer.append(np.full((gap_rows, DIM), 7, dtype=np.float16), np.full(gap_rows, -1))
        starts.append(writer.append(doc, np.full(len(doc), doc_id)) if len(doc) else writer.rows)
        counts.append(len(doc))
    n_tokens = writer.rows
    writer.close()
    reader = TokenReader(folder, DIM, n_tokens)
    return reader, np.array(starts, dtype=np.int64), np.array(counts, dtype=np.int64)


def integer_docs(rng: np.random.Generator, n_docs: int, max_len: int = 9) -> list[np.ndarray]:
    # Small integers: float16 holds them exactly and every MaxSim is exact in float32.
    return [
        rng.integers(-3, 4, size=(int(n), DIM)).astype(np.float16)
        for n in rng.integers(1, max_len + 1, n_docs)
    ]


def integer_queries(rng: np.random.Generator, n_queries: int) -> list[np.ndarray]:
    return [
        rng.integers(-3, 4, size=(int(n), DIM)).astype(np.float32)
        for n in rng.integers(1, 6, n_queries)
    ]


def brute_force_scores(query: np.ndarray, docs: list[np.ndarray]) -> np.ndarray:
    scores = np.full(len(docs), -np.inf, dtype=np.float32)
    for doc_id, doc in enumerate(docs):
        if len(doc):
            scores[doc_id] = np.sum(np.max(query @ doc.astype(np.float32).T, axis=-1))
    return scores


def brute_force_top(
    queries: list[np.ndarray], docs: list[np.ndarray], k: int, live: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    allowed = [d for d in range(len(docs)) if len(docs[d]) and (live is None or live[d])]
    all_scores, all_ids = [], []
    for query in queries:
        scores = brute_force_scores(query, docs)
        ranked = sorted(allowed, key=lambda d: (-scores[d], d))[:k]
        all_scores.append(scores[ranked])
        all_ids.append(ranked)
    width = min(k, len(allowed))
    return (
        np.array(all_scores, dtype=np.float32).reshape(len(queries), width),
        np.array(all_ids, dtype=np.int64).reshape(len(queries), width),
    )


@pytest.mark.parametrize("chunk_tokens", [1, 2, 3, 7, 16, 65536])
def test_matches_brute_force_across_chunk_borders(tmp_path: Path, chunk_tokens: int) -> None:
    rng = np.random.default_rng(chunk_tokens)
    docs = integer_docs(rng, 25)
    queries = integer_queries(rng, 4)
    reader, starts, counts = write_store(tmp_path, docs)
    scores, ids = exhaustive_search(queries, reader, starts, counts, 8, chunk_tokens=chunk_tokens)
    expected_scores, expected_ids = brute_force_top(queries, docs, 8)
    assert scores.dtype == np.float32
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_array_equal(ids, expected_ids)


def test_random_float_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    docs = [rng.standard_normal((int(n), DIM)).astype(np.float16) for n in rng.integers(1, 40, 60)]
    queries = [rng.standard_normal((n, DIM)).astype(np.float32) for n in (5, 32)]
    reader, starts, counts = write_store(tmp_path, docs)
    scores, ids = exhaustive_search(queries, reader, starts, counts, 10, chunk_tokens=100)
    expected_scores, expected_ids = brute_force_top(queries, docs, 10)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    np.testing.assert_array_equal(ids, expected_ids)  # no near-ties in this draw
    for query, row in zip(queries, scores, strict=True):
        assert np.all(np.diff(row) <= 0)
        all_scores = exhaustive_scores(query, reader, starts, counts, chunk_tokens=37)
        np.testing.assert_allclose(all_scores, brute_force_scores(query, docs), rtol=1e-5)


def test_live_mask_excludes_documents(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    docs = integer_docs(rng, 30)
    queries = integer_queries(rng, 3)
    reader, starts, counts = write_store(tmp_path, docs)
    live = rng.random(30) < 0.5
    scores, ids = exhaustive_search(queries, reader, starts, counts, 5, live=live, chunk_tokens=4)
    expected_scores, expected_ids = brute_force_top(queries, docs, 5, live)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)
    assert live[ids].all()
    none = exhaustive_search(queries, reader, starts, counts, 5, live=np.zeros(30, dtype=bool))
    assert none[0].shape == (3, 0)
    assert none[1].shape == (3, 0)


def test_k_larger_than_the_corpus(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    docs = integer_docs(rng, 6)
    reader, starts, counts = write_store(tmp_path, docs)
    live = np.array([True, False, True, True, False, True])
    scores, ids = exhaustive_search(integer_queries(rng, 2), reader, starts, counts, 100, live=live)
    assert scores.shape == ids.shape == (2, 4)
    assert sorted(ids[0].tolist()) == [0, 2, 3, 5]


def test_ties_go_to_the_smaller_doc_id(tmp_path: Path) -> None:
    same = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=np.float16)
    weak = np.array([[0, 0, 1, 0, 0, 0]], dtype=np.float16)
    docs = [weak, same, weak, same, same, same]
    reader, starts, counts = write_store(tmp_path, docs)
    query = np.array([[1, 0, 0, 0, 0, 0]], dtype=np.float32)
    scores, ids = exhaustive_search([query], reader, starts, counts, 3, chunk_tokens=3)
    np.testing.assert_array_equal(ids, [[1, 3, 4]])
    np.testing.assert_array_equal(scores, [[1, 1, 1]])
    live = np.array([True, True, True, False, True, True])
    _, ids = exhaustive_search([query], reader, starts, counts, 5, live=live)
    np.testing.assert_array_equal(ids, [[1, 4, 5, 0, 2]])


def test_unowned_rows_and_empty_documents(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    docs = integer_docs(rng, 12)
    docs[3] = np.zeros((0, DIM), dtype=np.float16)
    docs[7] = np.zeros((0, DIM), dtype=np.float16)
    queries = integer_queries(rng, 3)
    reader, starts, counts = write_store(tmp_path, docs, gap_rows=2)  # rows of 7s nobody owns
    for chunk_tokens in (1, 5, 1000):
        scores, ids = exhaustive_search(
            queries, reader, starts, counts, 20, chunk_tokens=chunk_tokens
        )
        expected_scores, expected_ids = brute_force_top(queries, docs, 20)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_array_equal(scores, expected_scores)
    assert ids.shape == (3, 10)
    all_scores = exhaustive_scores(queries[0], reader, starts, counts, chunk_tokens=3)
    np.testing.assert_array_equal(all_scores, brute_force_scores(queries[0], docs))
    assert np.isneginf(all_scores[[3, 7]]).all()


def test_spans_in_any_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    docs = integer_docs(rng, 10)
    reader, starts, counts = write_store(tmp_path, docs)
    order = rng.permutation(10)  # doc id i now owns the rows written for docs[order[i]]
    queries = integer_queries(rng, 2)
    scores, ids = exhaustive_search(
        queries, reader, starts[order], counts[order], 10, chunk_tokens=4
    )
    expected_scores, expected_ids = brute_force_top(queries, [docs[j] for j in order], 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)


def test_query_groups_do_not_change_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    docs = integer_docs(rng, 40)
    queries = integer_queries(rng, 9)
    reader, starts, counts = write_store(tmp_path, docs)
    whole = exhaustive_search(queries, reader, starts, counts, 7)
    # 30 values: a group holds at most 30 // 8 query tokens and 30 // 40 -> 1 query.
    grouped = exhaustive_search(
        queries, reader, starts, counts, 7, chunk_tokens=8, max_block_elems=30
    )
    np.testing.assert_array_equal(grouped[0], whole[0])
    np.testing.assert_array_equal(grouped[1], whole[1])


def test_readers_of_other_kinds(tmp_path: Path) -> None:
    """A read-only in-memory array and a float32 array take the slower copy paths."""
    rng = np.random.default_rng(7)
    docs = integer_docs(rng, 15)
    queries = integer_queries(rng, 2)
    reader, starts, counts = write_store(tmp_path, docs)
    expected = exhaustive_search(queries, reader, starts, counts, 5, chunk_tokens=6)
    frozen = np.array(reader.vectors)
    frozen.flags.writeable = False
    for vectors in (frozen, np.array(reader.vectors, dtype=np.float32)):
        with patch.object(TokenReader, "vectors", vectors):
            result = exhaustive_search(queries, reader, starts, counts, 5, chunk_tokens=6)
        np.testing.assert_array_equal(result[0], expected[0])
        np.testing.assert_array_equal(result[1], expected[1])


def test_reading_the_map_raises_no_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    docs = integer_docs(rng, 5)
    reader, starts, counts = write_store(tmp_path, docs)
    assert not reader.vectors.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exhaustive_search(integer_queries(rng, 1), reader, starts, counts, 2)


def test_empty_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    reader, starts, counts = write_store(tmp_path, integer_docs(rng, 4))
    scores, ids = exhaustive_search([], reader, starts, counts, 3)
    assert scores.shape == ids.shape == (0, 3)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    empty_reader, no_starts, no_counts = write_store(empty_dir, [])
    scores, ids = exhaustive_search(integer_queries(rng, 2), empty_reader, no_starts, no_counts, 3)
    assert scores.shape == ids.shape == (2, 0)
    assert exhaustive_scores(
        integer_queries(rng, 1)[0], empty_reader, no_starts, no_counts
    ).shape == (0,)


def test_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    reader, starts, counts = write_store(tmp_path, integer_docs(rng, 4))
    query = integer_queries(rng, 1)
    with pytest.raises(InvalidInput, match="k must be"):
        exhaustive_search(query, reader, starts, counts, 0)
    with pytest.raises(DimensionMismatch, match=r"queries\[1\] has dimension 5"):
        exhaustive_search([query[0], np.ones((2, 5))], reader, starts, counts, 2)
    with pytest.raises(InvalidInput, match=r"queries\[0\] has 0 tokens"):
        exhaustive_search([np.zeros((0, DIM))], reader, starts, counts, 2)
    with pytest.raises(InvalidInput, match="live mask"):
        exhaustive_search(query, reader, starts, counts, 2, live=np.ones(3, dtype=bool))
    with pytest.raises(InvalidInput, match="same length"):
        exhaustive_search(query, reader, starts, counts[:3], 2)
    with pytest.raises(CorruptIndex, match="outside"):
        exhaustive_search(query, reader, starts, counts + 100, 2)
    overlapping = starts.copy()
    overlapping[1] = overlapping[0]
    with pytest.raises(CorruptIndex, match="overlap"):
        exhaustive_search(query, reader, overlapping, counts, 2)
    with pytest.raises(DimensionMismatch):
        exhaustive_scores(np.ones((2, DIM + 1)), reader, starts, counts)


@settings(max_examples=25, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_docs=st.integers(1, 20),
    chunk_tokens=st.integers(1, 40),
    k=st.integers(1, 25),
    with_live=st.booleans(),
)
def test_property_matches_brute_force(
    seed: int, n_docs: int, chunk_tokens: int, k: int, with_live: bool
) -> None:
    rng = np.random.default_rng(seed)
    docs = integer_docs(rng, n_docs, max_len=12)
    queries = integer_queries(rng, 3)
    live = rng.random(n_docs) < 0.7 if with_live else None
    with tempfile.TemporaryDirectory() as folder:
        reader, starts, counts = write_store(Path(folder), docs)
        scores, ids = exhaustive_search(
            queries, reader, starts, counts, k, live=live, chunk_tokens=chunk_tokens
        )
        del reader
    expected_scores, expected_ids = brute_force_top(queries, docs, k, live)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)


def test_resident_scan_matches_the_streaming_oracle(tmp_path: Path) -> None:
    from sie_index.exhaustive import ResidentScan, exhaustive_scores

    rng = np.random.default_rng(11)
    counts = rng.integers(1, 30, size=40)
    vectors = rng.standard_normal((int(counts.sum()), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writer = TokenWriter(tmp_path, 16)
    writer.append(vectors, np.repeat(np.arange(40), counts))
    writer.close()
    reader = TokenReader(tmp_path, 16, len(vectors))
    starts = np.cumsum(counts) - counts
    Q = rng.standard_normal((5, 16)).astype(np.float32)
    exact = exhaustive_scores(Q, reader, starts, counts)
    for dtype in ("float32", "bfloat16"):
        scan = ResidentScan(reader, starts, counts, dtype=dtype, block_tokens=50)
        tol = 1e-4 if dtype == "float32" else 0.1
        np.testing.assert_allclose(scan.scores(Q), exact, atol=tol)
    with pytest.raises(InvalidInput, match="contiguous"):
        ResidentScan(reader, starts[::-1].copy(), counts[::-1].copy())


@pytest.mark.parametrize("chunk_tokens", [7, 64, 10_000])
def test_a_many_segment_store_is_scanned_segment_by_segment(
    tmp_path: Path, chunk_tokens: int
) -> None:
    """An index of several segments: the scan reads each segment's own rows, chunks
    that cross segment borders included, and never puts every vector together in
    one array (8 GB at 10.6M tokens); the scores equal brute force's."""
    from sie_index import Index
    from storage.segmented import SegmentedTokens
    from storage.snapshot import StoreSnapshot
    from tests.conftest import synthetic_corpus, synthetic_queries

    ids, vectors = synthetic_corpus(90, 16, seed=2)
    index = Index.from_vectors(tmp_path / "idx", ids[:30], vectors[:30])
    index.add_vectors(ids[30:60], vectors[30:60])
    index.add_vectors(ids[60:], vectors[60:])
    snap = StoreSnapshot.open(index.path)
    assert isinstance(snap.tokens, SegmentedTokens) and len(snap.tokens.readers) == 3
    Qs = synthetic_queries(vectors, 3, seed=5)
    with patch.object(SegmentedTokens, "vectors", property(lambda self: pytest.fail("copy"))):
        scores, doc_ids = exhaustive_search(
            Qs,
            snap.tokens,
            snap.spans.token_start,
            snap.spans.token_count,
            10,
            chunk_tokens=chunk_tokens,
        )
    stored = [v.astype(np.float16).astype(np.float32) for v in vectors]
    for Q, got_scores, got_ids in zip(Qs, scores, doc_ids, strict=True):
        want = np.array([(Q @ d.T).max(axis=1).sum() for d in stored], np.float32)
        np.testing.assert_allclose(got_scores, np.sort(want)[::-1][:10], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(want[got_ids], got_scores, rtol=1e-5, atol=1e-5)
