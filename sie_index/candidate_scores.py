"""A query's candidates: documents by approximate score, from the token ANN's answer.

Steps 2 to 4 of the search (:mod:`sie_index.search`): each token row the ANN
returned maps to its document (rows of deleted or filtered-out documents drop out);
a document's approximate score is, summed over query tokens, the best similarity
returned for it, or, when none was, the lowest similarity that query token
returned (an upper bound of what was missed, as in XTR/WARP); the best ``n`` by
that score are reranked exactly.

Two paths give the same documents and scores: NumPy's (:func:`approximate`), and a
kernel compiled by numba (the ``fast`` extra, :mod:`sie_index.compiled`) that maps
rows to documents through a small hash table instead of sorting them. On the 730k
document index a k=10 query's ANN returns about 3,850 rows (10 query tokens x 385)
of about 3,000 documents; NumPy's sort, scatter and sums took about 0.6 ms of it in
a search. The cut (:func:`cut`) is shared: the ``n`` best scores, ties broken by the
smaller internal id, so both paths keep the same documents even on a tie.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sie_index.compiled import LazyKernel, read_only, sum_in_order

__all__ = ["KERNEL", "Kernel", "approximate", "best", "cut", "least_returned"]

Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(sims [nq, k] f32, rows [nq, k] i64, token_doc [T] i32, allowed [n_docs] bool) ->
(documents i64, approximate scores f32)``, in the order first seen."""


def best(
    sims: np.ndarray, rows: np.ndarray, token_doc: np.ndarray, allowed: np.ndarray, n: int
) -> np.ndarray:
    """The best ``n`` allowed documents by approximate score, by internal id."""
    run = KERNEL.get()
    if run is None:
        docs, approx = approximate(sims, rows, token_doc, allowed)
    else:
        docs, approx = run(
            np.ascontiguousarray(sims, dtype=np.float32),
            np.ascontiguousarray(rows, dtype=np.int64),
            read_only(token_doc, np.int32),
            read_only(allowed, np.bool_),
        )
    return cut(docs, approx, n)


def approximate(
    sims: np.ndarray, rows: np.ndarray, token_doc: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every allowed document the rows reach (ascending) and its approximate score."""
    valid = rows >= 0
    docs = np.where(valid, token_doc[np.where(valid, rows, 0)], -1)
    valid &= docs >= 0
    valid[valid] = allowed[docs[valid]]
    if not valid.any():
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    cand, inv = np.unique(docs[valid], return_inverse=True)
    nq = sims.shape[0]
    # a query token that did not reach a document scores at most the lowest
    # similarity it returned
    floor = least_returned(sims, valid)
    scores = np.repeat(floor[:, None].astype(np.float32), len(cand), axis=1)
    q_idx = np.broadcast_to(np.arange(nq)[:, None], sims.shape)[valid]
    np.maximum.at(scores, (q_idx, inv), sims[valid])
    # summed over query tokens in order, in float32 (as the kernel sums)
    return cand.astype(np.int64), sum_in_order(scores)


def least_returned(sims: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row of ``sims``, the lowest similarity where ``valid`` (float32; 0 where
    none is): the floor a missed token or list is credited with, here and in
    :mod:`sie_index.centroid_scores` (their kernels compute the same)."""
    floor = np.where(valid, sims, np.inf).min(axis=1).astype(np.float32)
    floor[~np.isfinite(floor)] = 0.0
    return floor


def cut(docs: np.ndarray, approx: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` documents of highest ``approx`` (ties: the smaller id), ascending."""
    if len(docs) > n:
        if n <= 0:
            return np.zeros(0, np.int64)
        kth = np.partition(approx, len(approx) - n)[len(approx) - n]  # the n-th highest
        above = approx > kth
        tied = np.flatnonzero(approx == kth)
        tied = tied[np.argsort(docs[tied], kind="stable")[: n - int(above.sum())]]
        docs = np.concatenate([docs[above], docs[tied]])
    return np.sort(docs)


def _kernel(
    sims: np.ndarray, rows: np.ndarray, token_doc: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    nq, k = sims.shape
    bits = 1
    while (1 << bits) < 2 * nq * k:  # at most half full: short probe runs
        bits += 1
    size = 1 << bits
    shift = np.uint64(64 - bits)
    keys = np.full(size, -1, np.int64)
    slots = np.empty(size, np.int64)
    docs = np.empty(nq * k, np.int64)
    where = np.full((nq, k), -1, np.int64)  # each row's document's slot, or -1
    floor = np.full(nq, np.inf, np.float32)
    n = 0
    for q in range(nq):
        for j in range(k):
            r = rows[q, j]
            if r < 0:
                continue
            if r >= len(token_doc):
                raise IndexError("a token row past the token map")
            d = np.int64(token_doc[r])
            if d < 0:
                continue
            if d >= len(allowed):
                raise IndexError("a document id past the documents")
            if not allowed[d]:
                continue
            # Fibonacci hashing: the top bits of d times 2^64 / golden ratio
            h = np.int64((np.uint64(d) * np.uint64(11400714819323198485)) >> shift)
            while keys[h] != -1 and keys[h] != d:
                h = (h + 1) & (size - 1)
            if keys[h] == -1:
                keys[h] = d
                slots[h] = n
                docs[n] = d
                n += 1
            where[q, j] = slots[h]
            if sims[q, j] < floor[q]:
                floor[q] = sims[q, j]
    scores = np.empty((nq, n), np.float32)
    for q in range(nq):
        f = floor[q] if np.isfinite(floor[q]) else np.float32(0.0)  # as NumPy's path
        for c in range(n):
            scores[q, c] = f
        for j in range(k):
            c = where[q, j]
            if c >= 0 and sims[q, j] > scores[q, c]:
                scores[q, c] = sims[q, j]
    approx = np.empty(n, np.float32)
    for c in range(n):
        total = scores[0, c]
        for q in range(1, nq):
            total += scores[q, c]
        approx[c] = total
    return docs[:n].copy(), approx


def _jit(numba: Any) -> Kernel:
    types = numba.types
    signature = types.Tuple((types.int64[::1], types.float32[::1]))(
        types.float32[:, ::1],
        types.int64[:, ::1],
        types.Array(types.int32, 1, "C", readonly=True),
        types.Array(types.bool_, 1, "C", readonly=True),
    )
    compiled: Kernel = numba.njit(signature, nogil=True, boundscheck=False, cache=False)(_kernel)
    token_doc = read_only(np.zeros(1, np.int32), np.int32)
    allowed = read_only(np.ones(1, np.bool_), np.bool_)
    # compiled by now (a signature was given); one tiny call proves it runs
    compiled(np.ones((1, 1), np.float32), np.zeros((1, 1), np.int64), token_doc, allowed)
    return compiled


KERNEL: LazyKernel[Kernel] = LazyKernel("the candidates kernel", _jit)
"""The compiled kernel, made on first use."""
