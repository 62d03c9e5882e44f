"""Centroid interaction: a second, cheaper screen between the candidates and MaxSim.

A document's approximate score (:mod:`sie_index.candidate_scores`) sees only the
tokens the ANN returned; a document the ANN reached through one or two query tokens
is scored on the rest by a floor. On a large index that screen is loose: on the
730k-document mixed corpus, of the relevant documents exhaustive MaxSim puts in its
top 10, 43 in 1,693 ranked past 187 by approximate score (2,000 dev queries), so at
k=10 187 candidates had to be reranked exactly to hold MRR@10 at 0.99x.

Centroid interaction (as in PLAID) scores every token of a candidate, not only the
ones found: each document token stands in for its inverted list's centroid, and
a query token's similarity to it is its similarity to that centroid. The coarse
step already has those similarities for the lists nearest each query token
(:class:`storage.token_index.NearLists`: the graph's answer, made wider); a list
beyond them is credited with the farthest of them, an upper bound as far as the
coarse answer is exact. A document's centroid score is, summed over query tokens,
the best of its tokens' list similarities. It needs no vector read: 4 bytes a token
(each row's list, :meth:`storage.TokenIndex.row_lists`) and a small table of the
near lists' similarities, reached through a slot a list (the near lists of all
query tokens, a few hundred, fit the first-level cache; a dense table over 16,384
lists took 0.46 ms a query to fill and read).

Measured on the mixed corpus (k=10, 385 rows a query token, 2,000 dev queries,
MRR@10 against MaxSim over the best 1,500 candidates, which equals exhaustive MaxSim
on the 500 queries it has: 0.6745 against 0.6744): the best 300 by approximate
score, screened to 64 by centroid score, held 0.995x, where 187 by approximate
score alone held 0.992x and 64 0.981x; 64 lists a query token held it as well as
every list (the best 16: 0.993x).

Two paths give the same scores: NumPy's (:func:`centroid_scores`) and a kernel
compiled by numba (:mod:`sie_index.compiled`). The cut is
:func:`sie_index.candidate_scores.cut`'s (ties: the smaller id).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sie_index.candidate_scores import cut, least_returned
from sie_index.compiled import LazyKernel, read_only, sum_in_order
from storage import NearLists

__all__ = ["KERNEL", "Kernel", "best", "centroid_scores"]

Kernel = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], np.ndarray
]
"""``(docs i64, token_start i64, token_count i64, row_lists i32, near lists [nq, n]
i64, near sims [nq, n] f32, n_lists) -> centroid scores f32``, one a document."""


def best(
    docs: np.ndarray,
    token_start: np.ndarray,
    token_count: np.ndarray,
    row_lists: np.ndarray,
    near: NearLists,
    first: int,
    stop: int,
    n: int,
) -> np.ndarray:
    """The best ``n`` of ``docs`` by centroid score for query tokens ``first:stop``
    of ``near``, by internal id (ascending)."""
    if len(docs) <= n:
        return np.sort(docs)
    args = (
        np.ascontiguousarray(docs, dtype=np.int64),
        read_only(token_start, np.int64),
        read_only(token_count, np.int64),
        read_only(row_lists, np.int32),
        np.ascontiguousarray(near.lists[first:stop], dtype=np.int64),
        np.ascontiguousarray(near.sims[first:stop], dtype=np.float32),
        int(near.n_lists),
    )
    run = KERNEL.get()
    scores = centroid_scores(*args) if run is None else run(*args)
    return cut(args[0], scores, n)


def centroid_scores(
    docs: np.ndarray,
    token_start: np.ndarray,
    token_count: np.ndarray,
    row_lists: np.ndarray,
    lists: np.ndarray,
    sims: np.ndarray,
    n_lists: int,
) -> np.ndarray:
    """Each document's centroid score (float32), for the query tokens of ``lists``
    and ``sims`` (their near lists, -1 where none, and their similarities): per
    query token, the best similarity of a list one of the document's tokens is in,
    a list not near that token counting as the least near one (a document without
    tokens: that least, for every query token); summed over query tokens."""
    nq = len(lists)
    if len(docs) == 0:
        return np.zeros(0, np.float32)
    valid = lists >= 0
    if (lists[valid] >= n_lists).any():
        raise IndexError("a near list past the lists")
    floor = least_returned(sims, valid)
    near_ids = np.unique(lists[valid])
    # slot of each near list; every other list the last slot, the floors
    slot = np.full(n_lists, len(near_ids), np.int64)
    slot[near_ids] = np.arange(len(near_ids))
    table = np.repeat(floor[None, :], len(near_ids) + 1, axis=0)  # [slots, nq]
    q_idx = np.broadcast_to(np.arange(nq)[:, None], lists.shape)[valid]
    np.maximum.at(table, (slot[lists[valid]], q_idx), sims[valid].astype(np.float32))
    starts = token_start[docs].astype(np.int64)
    counts = token_count[docs].astype(np.int64)
    if (counts < 0).any() or (starts < 0).any() or (starts > len(row_lists) - counts).any():
        raise IndexError("a document's tokens past the token rows")
    best_q = np.repeat(floor[:, None], len(docs), axis=1)  # [nq, docs]
    has = counts > 0
    if has.any():
        ends = np.cumsum(counts[has])
        rows = np.arange(int(ends[-1])) + np.repeat(starts[has] - (ends - counts[has]), counts[has])
        values = table[slot[row_lists[rows]]]  # [tokens, nq]
        best_q[:, has] = np.maximum.reduceat(values, ends - counts[has], axis=0).T
    # summed over query tokens in order, in float32 (as the kernel sums)
    return sum_in_order(best_q)


def _kernel(
    docs: np.ndarray,
    token_start: np.ndarray,
    token_count: np.ndarray,
    row_lists: np.ndarray,
    lists: np.ndarray,
    sims: np.ndarray,
    n_lists: int,
) -> np.ndarray:
    nq, width = lists.shape
    floor = np.full(nq, np.inf, np.float32)
    for q in range(nq):
        for j in range(width):
            if lists[q, j] >= 0 and sims[q, j] < floor[q]:
                floor[q] = sims[q, j]
        if not np.isfinite(floor[q]):
            floor[q] = np.float32(0.0)  # as NumPy's path
    slot = np.full(n_lists, -1, np.int32)
    used = 0
    for q in range(nq):
        for j in range(width):
            li = lists[q, j]
            if li >= 0:
                if li >= n_lists:
                    raise IndexError("a near list past the lists")
                if slot[li] < 0:
                    slot[li] = used
                    used += 1
    table = np.empty((used + 1, nq), np.float32)  # the last slot: the floors
    for u in range(used + 1):
        for q in range(nq):
            table[u, q] = floor[q]
    for q in range(nq):
        for j in range(width):
            li = lists[q, j]
            if li >= 0 and sims[q, j] > table[slot[li], q]:
                table[slot[li], q] = sims[q, j]
    best_q = np.empty(nq, np.float32)
    out = np.empty(len(docs), np.float32)
    for c in range(len(docs)):
        d = docs[c]
        if d < 0 or d >= len(token_start):
            raise IndexError("a document id past the documents")
        start = token_start[d]
        count = token_count[d]
        if count < 0 or start < 0 or start > len(row_lists) - count:
            raise IndexError("a document's tokens past the token rows")
        for q in range(nq):
            best_q[q] = floor[q]
        for t in range(start, start + count):
            li = row_lists[t]
            if li < 0 or li >= n_lists:
                raise IndexError("a token row in a list past the lists")
            u = slot[li]
            if u < 0:
                continue  # a list no query token has near: the floors, already there
            for q in range(nq):
                v = table[u, q]
                if v > best_q[q]:
                    best_q[q] = v
        total = np.float32(0.0)
        if nq:
            total = best_q[0]
            for q in range(1, nq):
                total += best_q[q]
        out[c] = total
    return out


def _jit(numba: Any) -> Kernel:
    types = numba.types
    signature = types.float32[::1](
        types.int64[::1],
        types.Array(types.int64, 1, "C", readonly=True),
        types.Array(types.int64, 1, "C", readonly=True),
        types.Array(types.int32, 1, "C", readonly=True),
        types.int64[:, ::1],
        types.float32[:, ::1],
        types.int64,
    )
    compiled: Kernel = numba.njit(signature, nogil=True, boundscheck=False, cache=False)(_kernel)
    # compiled by now (a signature was given); one tiny call proves it runs
    compiled(
        np.zeros(1, np.int64),
        read_only(np.zeros(1, np.int64), np.int64),
        read_only(np.ones(1, np.int64), np.int64),
        read_only(np.zeros(1, np.int32), np.int32),
        np.zeros((1, 1), np.int64),
        np.ones((1, 1), np.float32),
        1,
    )
    return compiled


KERNEL: LazyKernel[Kernel] = LazyKernel("the centroid-interaction kernel", _jit)
"""The compiled kernel, made on first use."""
