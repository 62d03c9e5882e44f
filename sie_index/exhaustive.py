"""Exhaustive MaxSim: every query against every stored document, the test oracle.

No ANN, no pruning: the whole float16 token store is scanned in chunks of rows
and each document's exact MaxSim is computed in float32. The searcher's answers
are checked against these, and evaluation reports them beside the index's own so
the ANN loss is visible.

How a scan runs: the memory-mapped float16 rows of one chunk are converted into
a reused float32 buffer with torch's half-to-float copy, the stacked query tokens
of a group of queries are multiplied with them in one float32 matrix product by
NumPy (OpenBLAS), and ``np.maximum.reduceat`` takes each document's maximum per
query token. Measured on the 2-core machine, 1M stored tokens of 384 dims: the
conversion takes 0.07 s with torch and 0.65 s with NumPy; the product for 1,024
query tokens 4.4 s with NumPy and 6.1 s with torch (about even for 32).

A document cut by a chunk border carries its running maximum into the next
chunk; a finished document is summed over each query's tokens at once, so memory
stays at one chunk, one similarity block and one score row per query of the group.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from sie_index.errors import CorruptIndex, InvalidInput
from sie_index.scoring import check_query, segment_max, token_blocks, top_k
from storage import SegmentedTokens, TokenReader

__all__ = ["ResidentScan", "exhaustive_scores", "exhaustive_search"]


def exhaustive_search(
    queries: Sequence[np.ndarray],
    reader: TokenReader | SegmentedTokens,
    token_start: np.ndarray,
    token_count: np.ndarray,
    k: int,
    *,
    live: np.ndarray | None = None,
    chunk_tokens: int = 65536,
    max_block_elems: int = 50_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` documents by MaxSim for each query, over every stored document.

    ``queries`` are ``[nq_i, dim]`` token matrices; ``token_start``/``token_count``
    give each internal doc id's rows in ``reader``. Documents with ``live`` False,
    and documents with no tokens (MaxSim is undefined for them), are never returned.

    Returns ``(scores, doc_ids)``: float32 and int64 ``[len(queries), k']`` with
    ``k' = min(k, number of live documents with tokens)``, each row sorted by
    descending score, ties by ascending doc id.

    ``chunk_tokens`` rows are read per step; queries are processed in groups so
    that a group's similarity block (its query tokens x ``chunk_tokens``) and its
    score matrix (its queries x documents) each stay within ``max_block_elems``
    float32 values (a single query larger than that still runs alone).
    """
    if k < 1:
        raise InvalidInput(f"k must be at least 1, got {k}")
    if chunk_tokens < 1 or max_block_elems < 1:
        raise InvalidInput("chunk_tokens and max_block_elems must be positive")
    starts, counts = _check_spans(token_start, token_count, reader.n_tokens)
    scorable = counts > 0
    if live is not None:
        live = np.asarray(live, dtype=bool)
        if live.shape != scorable.shape:
            raise InvalidInput(f"live mask has shape {live.shape}, expected {scorable.shape}")
        scorable &= live
    doc_ids = np.flatnonzero(scorable).astype(np.int64)
    Qs = [_as_query(query, f"queries[{i}]", reader) for i, query in enumerate(queries)]
    k_out = min(k, len(doc_ids))
    top_scores = np.zeros((len(Qs), k_out), dtype=np.float32)
    top_ids = np.zeros((len(Qs), k_out), dtype=np.int64)
    if k_out == 0 or not Qs:
        return top_scores, top_ids
    spanned = int((starts + counts)[doc_ids].max() - starts[doc_ids].min())
    block_rows = min(chunk_tokens, spanned)  # the longest chunk a scan will read
    for group in _query_groups(Qs, len(doc_ids), block_rows, max_block_elems):
        scores = _scan(
            [Qs[i] for i in group], reader, starts[doc_ids], counts[doc_ids], chunk_tokens
        )
        for row, i in enumerate(group):
            top_scores[i], top_ids[i] = top_k(scores[row], doc_ids, k_out)
    return top_scores, top_ids


def exhaustive_scores(
    Q: np.ndarray,
    reader: TokenReader | SegmentedTokens,
    token_start: np.ndarray,
    token_count: np.ndarray,
    *,
    chunk_tokens: int = 65536,
) -> np.ndarray:
    """Exact MaxSim of one query ``Q [nq, dim]`` against every document: float32 ``[n_docs]``.

    A document with no tokens scores ``-inf``. This is the single-query scan whose
    latency evaluation reports for the exhaustive baseline.
    """
    if chunk_tokens < 1:
        raise InvalidInput("chunk_tokens must be positive")
    starts, counts = _check_spans(token_start, token_count, reader.n_tokens)
    query = _as_query(Q, "Q", reader)
    scores = np.full(len(starts), -np.inf, dtype=np.float32)
    has_tokens = counts > 0
    scores[has_tokens] = _scan(
        [query], reader, starts[has_tokens], counts[has_tokens], chunk_tokens
    )[0]
    return scores


def _check_spans(
    token_start: np.ndarray, token_count: np.ndarray, n_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    starts = np.asarray(token_start, dtype=np.int64)
    counts = np.asarray(token_count, dtype=np.int64)
    if starts.ndim != 1 or starts.shape != counts.shape:
        raise InvalidInput(
            f"token_start {starts.shape} and token_count {counts.shape} must be 1-D, same length"
        )
    if len(starts) and (
        int(starts.min()) < 0 or int(counts.min()) < 0 or int((starts + counts).max()) > n_tokens
    ):
        raise CorruptIndex(f"document token spans fall outside the {n_tokens} stored rows")
    return starts, counts


def _as_query(query: Any, label: str, reader: TokenReader | SegmentedTokens) -> np.ndarray:
    """A query as float32 ``[nq, dim]`` in the store's space: of the encoder's
    dimension, then through the store's projection if it has one."""
    return reader.codec.project(check_query(query, label, reader.codec.input_dim))


def _query_groups(
    Qs: list[np.ndarray], n_docs: int, chunk_tokens: int, max_block_elems: int
) -> Iterator[list[int]]:
    """Consecutive query indices whose blocks fit in ``max_block_elems``."""
    max_rows = max_block_elems // chunk_tokens
    max_queries = max_block_elems // max(n_docs, 1)
    group: list[int] = []
    rows = 0
    for i, Q in enumerate(Qs):
        if group and (rows + len(Q) > max_rows or len(group) + 1 > max_queries):
            yield group
            group, rows = [], 0
        group.append(i)
        rows += len(Q)
    if group:
        yield group


def _scan(
    Qs: list[np.ndarray],
    reader: TokenReader | SegmentedTokens,
    starts: np.ndarray,
    counts: np.ndarray,
    chunk_tokens: int,
) -> np.ndarray:
    """MaxSim of each query against each document span: float32 ``[len(Qs), len(starts)]``.

    Spans must not overlap and have at least one token each; rows of the store
    that belong to no span are skipped.
    """
    n_docs = len(starts)
    result = np.zeros((len(Qs), n_docs), dtype=np.float32)
    if n_docs == 0:
        return result
    if np.any(np.diff(starts) < 0):
        order = np.argsort(starts, kind="stable")
        result[:, order] = _scan(Qs, reader, starts[order], counts[order], chunk_tokens)
        return result
    ends = starts + counts
    if np.any(starts[1:] < ends[:-1]):
        raise CorruptIndex("document token spans overlap")
    Q = np.concatenate(Qs, axis=0)
    q_ends = np.cumsum([len(q) for q in Qs])
    q_bounds = list(zip((q_ends - [len(q) for q in Qs]).tolist(), q_ends.tolist(), strict=True))
    chunk_tokens = min(chunk_tokens, int(ends[-1] - starts[0]))
    rows: _Float32Rows | _DecodedRows = (
        _Float32Rows(reader, chunk_tokens) if reader.codec.name == "f16" else _DecodedRows(reader)
    )
    similarities = np.empty(len(Q) * chunk_tokens, dtype=np.float32)  # reused, C-order
    carry_doc, carry = -1, np.empty(0, dtype=np.float32)
    s, hi = int(starts[0]), int(ends[-1])
    while s < hi:
        a = int(np.searchsorted(ends, s, side="right"))  # first document ending after s
        s = max(s, int(starts[a]))  # skip rows that belong to no document
        e = min(s + chunk_tokens, hi)
        b = int(np.searchsorted(starts, e, side="left"))  # documents [a, b) meet [s, e)
        S = similarities[: len(Q) * (e - s)].reshape(len(Q), e - s)
        np.matmul(Q, rows.load(s, e).T, out=S)  # [query tokens, e - s]
        seg_start = np.maximum(starts[a:b], s) - s
        seg_end = np.minimum(ends[a:b], e) - s
        best = segment_max(S, seg_start, seg_end)  # [b - a, query tokens], C-order
        if carry_doc == a:
            np.maximum(best[0], carry, out=best[0])
        finished = b if ends[b - 1] <= e else b - 1
        carry_doc = b - 1 if finished < b else -1
        if finished < b:
            carry = best[-1].copy()
        for row, (q0, q1) in enumerate(q_bounds):
            # A row slice sums in NumPy's pairwise order, like the SDK's np.sum.
            result[row, a:finished] = best[: finished - a, q0:q1].sum(axis=1)
        s = e
    return result


class _Float32Rows:
    """Rows of the float16 store converted into one reused float32 buffer, read from
    each segment's own file map: a chunk that spans segments is put together in the
    buffer, so the scan's memory is one chunk whatever the number of segments (a
    copy of every segment's vectors as one array took 8 GB at 10.6M tokens)."""

    def __init__(self, reader: TokenReader | SegmentedTokens, max_rows: int) -> None:
        parts = (
            list(zip(reader.bases.tolist(), reader.readers, strict=True))
            if isinstance(reader, SegmentedTokens)
            else [(0, reader)]
        )
        dim = reader.dim
        self._buffer = np.empty((max_rows, dim), dtype=np.float32)
        self._staging: np.ndarray | None = None
        self._parts: list[tuple[int, int, np.ndarray, bool]] = []  # base, stop, rows, staged
        import torch

        self._from_numpy = torch.from_numpy
        self._tensor = torch.from_numpy(self._buffer)
        for base, part in parts:
            vectors = part.vectors
            staged = False
            if vectors.dtype == np.float16 and vectors.dtype.isnative:
                alias = _writable_alias(vectors)
                if alias is None:
                    staged = True
                    if self._staging is None:
                        self._staging = np.empty((max_rows, dim), dtype=np.float16)
                else:
                    vectors = alias
            self._parts.append((int(base), int(base) + len(vectors), vectors, staged))

    def load(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float32, valid until the next call."""
        for base, end, source, staged in self._parts:
            lo, hi = max(start, base), min(stop, end)
            if lo >= hi:
                continue
            block = source[lo - base : hi - base]
            out = slice(lo - start, hi - start)
            if block.dtype != np.float16 or not block.dtype.isnative:
                np.copyto(self._buffer[out], block)
            elif staged:
                assert self._staging is not None
                np.copyto(self._staging[out], block)
                self._tensor[out].copy_(self._from_numpy(self._staging[out]))
            else:
                self._tensor[out].copy_(self._from_numpy(block))
        return self._buffer[: stop - start]


class _DecodedRows:
    """Rows of a compressed store, decoded chunk by chunk (never all at once)."""

    def __init__(self, reader: TokenReader | SegmentedTokens) -> None:
        self._reader = reader

    def load(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._reader.read_rows(start, stop), dtype=np.float32)


def _writable_alias(vectors: np.ndarray) -> np.ndarray | None:
    """``vectors`` itself if writable, else a private copy-on-write map of the same file.

    torch warns on read-only arrays, and the reader's map is read-only. A
    ``mode="c"`` map of the same bytes is writable in name only (nothing is
    written), costs no copy, and lets torch read the rows directly. None when
    ``vectors`` is read-only but not an original file map.
    """
    if vectors.flags.writeable:
        return vectors
    if isinstance(vectors, np.memmap) and isinstance(vectors.base, mmap.mmap) and vectors.filename:
        return np.memmap(
            vectors.filename,
            dtype=vectors.dtype,
            mode="c",
            offset=vectors.offset,
            shape=vectors.shape,
        )
    return None


class ResidentScan:
    """Exhaustive MaxSim with every stored vector held in memory, for latency baselines.

    The honest brute-force competitor of the searcher: all token vectors loaded
    once into a torch tensor (bfloat16 by default, as the usual in-memory
    MaxSim scan does), then each query is one matrix product per block of whole
    documents and a segment max. Needs ``n_tokens * dim * 2`` bytes of memory.
    Document spans must be contiguous and in doc-id order (as a build writes them).
    """

    def __init__(
        self,
        reader: TokenReader | SegmentedTokens,
        token_start: np.ndarray,
        token_count: np.ndarray,
        *,
        dtype: str = "bfloat16",
        block_tokens: int = 262_144,
    ) -> None:
        import torch

        counts = np.asarray(token_count, dtype=np.int64)
        ends = np.cumsum(counts)
        if len(counts) and (
            int(token_start[0]) != 0 or not np.array_equal(token_start[1:], ends[:-1])
        ):
            raise InvalidInput("ResidentScan needs contiguous document spans in doc-id order")
        self._torch = torch
        self.dim = reader.dim
        self._reader = reader
        self.n_docs = len(counts)
        self.vectors = torch.empty(
            (int(ends[-1]) if len(ends) else 0, reader.dim), dtype=getattr(torch, dtype)
        )
        for start, stop in reader.chunks(block_tokens):
            chunk = torch.from_numpy(reader.read_rows(start, stop))
            self.vectors[start:stop] = chunk.to(self.vectors.dtype)
        # blocks of whole documents, about block_tokens rows each
        self.blocks: list[tuple[int, int, int, int, np.ndarray]] = []
        for doc, stop in token_blocks(counts, block_tokens):
            row0, row1 = int(ends[doc] - counts[doc]), int(ends[stop - 1])
            offsets = np.concatenate([[0], ends[doc : stop - 1] - row0]).astype(np.int64)
            self.blocks.append((doc, stop, row0, row1, offsets))

    def scores(self, Q: np.ndarray) -> np.ndarray:
        """Exact MaxSim of ``Q [nq, dim]`` against every document: float32 ``[n_docs]``."""
        torch = self._torch
        Qt = torch.from_numpy(_as_query(Q, "query", self._reader)).to(self.vectors.dtype)
        out = np.empty(self.n_docs, np.float32)
        for doc0, doc1, row0, row1, offsets in self.blocks:
            S = (Qt @ self.vectors[row0:row1].T).float().numpy()
            out[doc0:doc1] = np.maximum.reduceat(S, offsets, axis=1).sum(axis=0)
        return out
