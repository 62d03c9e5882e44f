"""MaxSim scoring: the SIE SDK's public helpers and the searcher's segment kernels.

MaxSim (late interaction) scores a query token matrix ``Q [nq, dim]`` against a
document token matrix ``D [n, dim]`` as ``sum_i max_j Q[i] · D[j]``.

:func:`maxsim` and :func:`maxsim_batch` accept exactly what ``sie_sdk.scoring``
accepts and return the same shapes and values (similarities and sums in float32,
also for float16 input), so code written against the SDK runs unchanged. They
differ only in speed: the documents' tokens are concatenated and scored with one
matrix product per block of documents, and the per-document maximum is a
segment reduction (``np.maximum.reduceat``), not a Python loop per document.

The segment kernels (:func:`segment_maxsim`, :func:`segment_maxsim_explain`,
:func:`segment_maxsim_torch`) take documents already concatenated, with their
token ``counts``; the searcher uses them for the exact rerank.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sie_index.errors import DimensionMismatch, InvalidInput

if TYPE_CHECKING:
    import torch

__all__ = [
    "check_query",
    "maxsim",
    "maxsim_batch",
    "segment_max",
    "segment_maxsim",
    "segment_maxsim_explain",
    "segment_maxsim_torch",
    "top_k",
]

# Elements of one similarity block (query tokens x document tokens): 32 MiB of float32.
_BLOCK_ELEMS = 8 * 1024 * 1024
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32))


def _as_multivector(array: object, *, label: str) -> np.ndarray:
    """One multivector as a 2-D float16/float32 array with at least one token.

    Float16 input stays float16 here (it is cast to float32 block by block before
    any arithmetic), so a float16 corpus is never copied whole at float32.
    """
    if isinstance(array, np.ndarray) and array.dtype in _FLOATS:
        coerced = array
    else:
        coerced = np.asarray(array, dtype=np.float32)
    if coerced.ndim != 2:
        raise InvalidInput(
            f"{label} must be a 2-D array of shape [num_tokens, dim], got shape {coerced.shape}. "
            "A single token vector needs an outer dimension (use `vector[None, :]`); "
            "a list of documents belongs in the `documents` argument, not here."
        )
    if coerced.shape[0] == 0:
        raise InvalidInput(
            f"{label} has 0 tokens (shape {coerced.shape}); "
            "MaxSim is undefined with no tokens to match."
        )
    return coerced


def check_query(query: object, label: str, dim: int) -> np.ndarray:
    """A query multivector as float32 ``[n_tokens >= 1, dim]`` with finite values, or
    a typed error naming ``label``: the one query validator of search, the exhaustive
    oracle and the SDK helpers (which share its shape checks)."""
    Q = _f32(_as_multivector(query, label=label))
    if Q.shape[1] != dim:
        raise DimensionMismatch(f"{label} has dimension {Q.shape[1]}, the index has {dim}")
    if not np.isfinite(Q).all():
        raise InvalidInput(f"{label} holds NaN or Inf values")
    return Q


def _dim_mismatch(query_dim: int, doc_dim: int, index: int) -> InvalidInput:
    return InvalidInput(
        f"dim mismatch: query has dim {query_dim} but documents[{index}] has dim {doc_dim}. "
        "Both sides must come from the same model — check that the stored document vectors "
        "were produced by the model now encoding the query."
    )


def _document_list(documents: Any) -> list[Any]:
    """The SDK's reading of ``documents``: a 2-D ndarray is ONE document."""
    if isinstance(documents, np.ndarray) and documents.ndim == 2:
        return [documents]
    return list(documents)


def _check_documents(documents: Iterable[Any], query_dims: Sequence[int]) -> list[np.ndarray]:
    """Validate documents in order, as the SDK does: shape first, then width."""
    distinct = set(query_dims)
    checked = []
    for index, doc in enumerate(documents):
        array = _as_multivector(doc, label=f"documents[{index}]")
        if len(distinct) > 1 or (distinct and array.shape[1] not in distinct):
            query_dim = next(d for d in query_dims if d != array.shape[1])
            raise _dim_mismatch(query_dim, array.shape[1], index)
        checked.append(array)
    return checked


def token_blocks(counts: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive document ranges ``(start, stop)`` of about ``budget`` tokens each
    (``counts`` are the documents' token counts); a longer document goes alone."""
    ends = np.cumsum(counts)
    blocks = []
    start = 0
    while start < len(counts):
        before = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, before + budget, side="right")))
        blocks.append((start, stop))
        start = stop
    return blocks


def _groups(counts: np.ndarray, rows: int, dim: int) -> list[tuple[int, int]]:
    """Document ranges whose blocks (``rows x tokens`` similarities and ``tokens x dim``
    float32 vectors) stay near the budget."""
    return token_blocks(counts, max(1, _BLOCK_ELEMS // max(rows, dim, 1)))


def _offsets(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts.size and int(counts.min()) < 1):
        raise InvalidInput("segment counts must be a 1-D array of positive token counts")
    return np.cumsum(counts) - counts


MAX_PRODUCT_ELEMS = 1 << 24
"""The most similarities one rerank product holds at once (64 MiB of float32)."""


def segment_max(S: np.ndarray, seg_start: np.ndarray, seg_end: np.ndarray) -> np.ndarray:
    """Column maxima of ``S`` over each ``[seg_start, seg_end)``, as ``[n_segments, rows]``.

    Segments are sorted and disjoint; gaps between them become extra segments of
    the reduction that are then dropped.
    """
    bounds = np.empty(2 * len(seg_start), dtype=np.int64)
    bounds[0::2], bounds[1::2] = seg_start, seg_end
    keep = bounds < S.shape[1]
    keep[1:] &= bounds[1:] != bounds[:-1]
    position = np.cumsum(keep)[0::2] - 1  # where each segment's start lands in bounds[keep]
    reduced = np.maximum.reduceat(S, bounds[keep], axis=1)
    return np.ascontiguousarray(reduced[:, position].T)


def _segment_max(Q: np.ndarray, D: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per document and query token, the best similarity: float32 ``[n, nq]``, C-order.

    The layout makes each document's query-token maxima one contiguous row, so a
    row sum adds them in the same (pairwise) order as the SDK's ``np.sum``.
    """
    S = Q @ D.T  # [nq, T]: reducing along the contiguous axis is the fast reduceat
    ends = np.append(offsets[1:], D.shape[0])
    return segment_max(S, offsets, ends)


def _f32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _check_kernel_input(Q: np.ndarray, D: np.ndarray, counts: np.ndarray) -> np.ndarray:
    offsets = _offsets(counts)
    if Q.ndim != 2 or D.ndim != 2 or Q.shape[1] != D.shape[1]:
        raise InvalidInput(f"Q {Q.shape} and D {D.shape} must be 2-D with the same dim")
    if int(np.sum(counts)) != D.shape[0]:
        raise InvalidInput(f"counts add up to {int(np.sum(counts))}, D has {D.shape[0]} rows")
    return offsets


def maxsim(query: Any, documents: Any) -> list[float]:
    """MaxSim scores of one query against documents, as ``sie_sdk.scoring.maxsim``.

    ``query`` is ``[num_query_tokens, dim]`` (float16, float32 or anything
    ``np.asarray`` reads as numbers). ``documents`` is a list of ``[n_i, dim]``
    multivectors, or one 2-D ndarray meaning a single document, or a 3-D ndarray
    meaning a stack of documents. Returns one float per document: the sum over
    query tokens of the best dot product with any document token, computed in
    float32. An empty ``documents`` gives ``[]``.

    Raises :class:`~sie_index.errors.InvalidInput` (a ``ValueError``, like the
    SDK's) when the query or a document is not 2-D, has no tokens, or a document's
    width differs from the query's; the message names the document's position.
    """
    doc_list = _document_list(documents)
    Q = _f32(_as_multivector(query, label="query"))
    docs = _check_documents(doc_list, [Q.shape[1]])
    counts = np.array([len(doc) for doc in docs], dtype=np.int64)
    scores = np.empty(len(docs), dtype=np.float32)
    for start, stop in _groups(counts, len(Q), Q.shape[1]):
        D = np.concatenate(docs[start:stop], axis=0, dtype=np.float32)
        scores[start:stop] = segment_maxsim(Q, D, counts[start:stop])
    return [float(score) for score in scores]


def maxsim_batch(queries: Sequence[Any], documents: Sequence[Any]) -> np.ndarray:
    """MaxSim scores of many queries against many documents, as ``sie_sdk.scoring.maxsim_batch``.

    ``queries`` and ``documents`` are sequences of ``[n_tokens, dim]`` multivectors
    (float16 or float32). Returns float32 ``[len(queries), len(documents)]`` with
    ``scores[i, j]`` the MaxSim of query ``i`` against document ``j``.

    Raises :class:`~sie_index.errors.InvalidInput` (a ``ValueError``) when a query
    or document is not 2-D, has no tokens, or a document's width differs from a
    query's.
    """
    query_list = [
        _f32(_as_multivector(query, label=f"queries[{i}]")) for i, query in enumerate(queries)
    ]
    docs = _check_documents(documents, [q.shape[1] for q in query_list])
    scores = np.zeros((len(query_list), len(docs)), dtype=np.float32)
    if not query_list or not docs:
        return scores
    Q = np.concatenate(query_list, axis=0)
    q_ends = np.cumsum([len(q) for q in query_list])
    q_starts = q_ends - np.array([len(q) for q in query_list])
    counts = np.array([len(doc) for doc in docs], dtype=np.int64)
    for start, stop in _groups(counts, len(Q), Q.shape[1]):
        D = np.concatenate(docs[start:stop], axis=0, dtype=np.float32)
        best = _segment_max(Q, D, _offsets(counts[start:stop]))  # [docs, all query tokens]
        for i, (q0, q1) in enumerate(zip(q_starts, q_ends, strict=True)):
            scores[i, start:stop] = best[:, q0:q1].sum(axis=1)
    return scores


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, ids)``, best first, ties to the smaller id; NaN ranks
    last. The one top-k of search and of the exhaustive oracle."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    if k < len(scores):
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= kth)  # every tie at the cut stays in
    else:
        candidates = np.arange(len(scores))
    order = candidates[np.lexsort((ids[candidates], -scores[candidates]))[:k]]
    return scores[order], ids[order]


def segment_maxsim(Q: np.ndarray, D: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """MaxSim of ``Q [nq, dim]`` against each of ``n`` documents concatenated in ``D``.

    ``D [T, dim]`` holds the documents' tokens back to back, ``counts [n]`` (all
    >= 1, summing to ``T``) their token counts. Returns float32 ``[n]``.
    """
    Q, D = _f32(Q), _f32(D)
    offsets = _check_kernel_input(Q, D, counts)
    if offsets.size == 0:
        return np.zeros(0, dtype=np.float32)
    result: np.ndarray = _segment_max(Q, D, offsets).sum(axis=1)
    return result


def segment_maxsim_explain(
    Q: np.ndarray, D: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`segment_maxsim` plus, per document and query token, the matched token.

    Returns ``(scores [n] float32, best_row [n, nq] int64, best_sim [n, nq] float32)``:
    ``best_row`` indexes rows of ``D`` (the first one on ties) and ``best_sim`` is
    that row's similarity, so ``scores == best_sim.sum(axis=1)``.
    """
    Q, D = _f32(Q), _f32(D)
    offsets = _check_kernel_input(Q, D, counts)
    nq = Q.shape[0]
    if offsets.size == 0:
        return (
            np.zeros(0, dtype=np.float32),
            np.zeros((0, nq), dtype=np.int64),
            np.zeros((0, nq), dtype=np.float32),
        )
    S = Q @ D.T  # [nq, T]
    best = segment_max(S, offsets, np.append(offsets[1:], D.shape[0])).T  # [nq, n]
    spread = np.repeat(best, np.asarray(counts, dtype=np.int64), axis=1)  # [nq, T]
    rows = np.where(spread == S, np.arange(D.shape[0], dtype=np.int64), D.shape[0])
    best_row = np.minimum.reduceat(rows, offsets, axis=1)
    # A NaN maximum matches no row: point at the segment's first row instead.
    best_row = np.where(best_row < D.shape[0], best_row, offsets)
    best_sim = np.ascontiguousarray(best.T)
    return best_sim.sum(axis=1), np.ascontiguousarray(best_row.T), best_sim


def segment_maxsim_torch(
    Q: np.ndarray | torch.Tensor,
    D: np.ndarray | torch.Tensor,
    counts: np.ndarray,
    device: str = "cpu",
) -> np.ndarray:
    """:func:`segment_maxsim` with the product computed by torch on ``device``
    (``"cpu"`` or ``"cuda"``).

    Same inputs and result (float32 ``[n]`` as a NumPy array) as the NumPy kernel,
    equal to it within float32 rounding. On the CPU the product ``D Qᵀ`` is torch's
    (on its own thread pool, where NumPy's BLAS is held to one thread by the
    searcher) and the segment maximum and sum are
    :func:`segment_max`'s, in the NumPy kernel's order. On a GPU the segment maximum
    stays there (:func:`_segment_maxsim_scatter`).
    """
    import torch

    Qt = _tensor(Q).to(device=device, dtype=torch.float32)
    Dt = _tensor(D).to(device=device, dtype=torch.float32)
    counts = np.asarray(counts, dtype=np.int64)
    offsets = _offsets(counts)
    if Qt.ndim != 2 or Dt.ndim != 2 or Qt.shape[1] != Dt.shape[1]:
        raise InvalidInput(f"Q {tuple(Qt.shape)} and D {tuple(Dt.shape)} must be 2-D, same dim")
    if int(counts.sum()) != Dt.shape[0]:
        raise InvalidInput(f"counts add up to {int(counts.sum())}, D has {Dt.shape[0]} rows")
    if len(counts) == 0:
        return np.zeros(0, dtype=np.float32)
    if Dt.device.type == "cpu":
        ends = np.append(offsets[1:], Dt.shape[0])
        rows = max(1, MAX_PRODUCT_ELEMS // max(Qt.shape[0], 1))
        if Dt.shape[0] > rows:
            return _segment_maxsim_blocks(Qt, Dt, offsets, ends, rows).sum(axis=1)
        # [T, nq]: torch's product is fastest this way round; its transpose is the
        # [nq, T] view segment_max reduces along T
        products = (Dt @ Qt.T).numpy()
        result: np.ndarray = segment_max(products.T, offsets, ends).sum(axis=1)
        return result
    return _segment_maxsim_scatter(Qt, Dt, counts)


def _segment_maxsim_blocks(
    Qt: torch.Tensor, Dt: torch.Tensor, offsets: np.ndarray, ends: np.ndarray, rows: int
) -> np.ndarray:
    """The ``[n, nq]`` maxima of :func:`segment_maxsim_torch` from products of at most
    ``rows`` document tokens at a time (a long query against a huge document would
    otherwise take gigabytes in one piece). A maximum of block maxima is the maximum;
    only the products' rounding may differ from one product's (within float32)."""
    best = np.full((len(offsets), Qt.shape[0]), -np.inf, dtype=np.float32)
    for lo in range(0, Dt.shape[0], rows):
        hi = min(lo + rows, Dt.shape[0])
        products = (Dt[lo:hi] @ Qt.T).numpy()
        first = int(np.searchsorted(ends, lo, side="right"))
        last = int(np.searchsorted(offsets, hi, side="left"))
        starts = np.maximum(offsets[first:last], lo) - lo
        stops = np.minimum(ends[first:last], hi) - lo
        part = segment_max(products.T, starts, stops)
        np.maximum(best[first:last], part, out=best[first:last])
    return best


def _tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor sharing ``x``'s memory, or of a copy when ``x`` is a read-only array
    (a mapped file, an SIE response): torch warns on those, though nothing here
    writes to them."""
    import torch

    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()
    return torch.as_tensor(x)


def _segment_maxsim_scatter(Qt: torch.Tensor, Dt: torch.Tensor, counts: np.ndarray) -> np.ndarray:
    """:func:`segment_maxsim_torch` on a GPU: the segment maximum is a
    ``scatter_reduce(..., "amax")`` over each token's document number, so only the
    ``[n]`` sums come back (it runs on any device; tests run it on the CPU)."""
    import torch

    n, nq, device = len(counts), Qt.shape[0], Dt.device
    S = Qt @ Dt.T  # [nq, T]
    doc_of_row = torch.repeat_interleave(
        torch.arange(n, device=device), torch.from_numpy(counts).to(device)
    )
    best = torch.full((nq, n), float("-inf"), device=device, dtype=torch.float32)
    best = best.scatter_reduce(1, doc_of_row.expand(nq, -1), S, "amax", include_self=True)
    result: np.ndarray = best.T.contiguous().sum(dim=1).cpu().numpy()
    return result
