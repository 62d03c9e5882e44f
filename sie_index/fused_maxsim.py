"""Exact MaxSim over stored float16 rows in one pass, compiled by numba (the ``fast`` extra).

Why: a k=100 search on the full debian-pkgs index reranks about 11,000 stored
float16 rows. Widened by torch first, they become 17 MB of float32 written out and
read back by the product, whose 10 query columns leave BLAS nothing to block on:
0.6 ms to widen and 1.5 ms to multiply on 2 cores (a microbenchmark on the
candidates of 300 dev queries). This kernel widens one row at a time into a 1.5
KB buffer that stays in L1 and multiplies it by four query tokens at once, so a
row is loaded once for four dot products; the same microbenchmark's widening and
product fell from about 2.9 to 0.9 ms, and ``bench.py phases`` compares the whole
query with the kernel, torch and NumPy.

Exact: the widening moves a float16's sign, exponent and mantissa bits into a
float32's places, which gives the same value times 2^-112 (subnormals included:
a float16 has 10 mantissa bits, a float32 subnormal 23). The query is scaled by
2^112 in exchange (a power of two, so exact while every |q| < 2^16, which
:func:`fits` checks: a larger one would overflow, and such a query takes torch's
path), so every product is the product of the same two float32 values the
widened path multiplies, as long as the CPU does not treat subnormal inputs as
zero (no library here sets that flag). What differs is the rounding of the sums:
their order, and fused multiply-adds, within float32 rounding, as torch's and
NumPy's products differ from each other. Each document is scored whole by one
call, so a score does not depend on how the candidates are split between threads.

Without numba, :func:`kernel` returns ``None`` and the searcher keeps torch's path.
The kernel compiles on its first use in a process (about a second), not at import:
numba's on-disk cache is a pickle, and pickles are not read here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sie_index.compiled import LazyKernel
from sie_index.errors import InvalidInput
from sie_index.scoring import _check_kernel_input

__all__ = [
    "KERNEL",
    "QUERY_LIMIT",
    "QUERY_SCALE",
    "Kernel",
    "fits",
    "kernel",
    "maxima",
    "set_enabled",
]

Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]
"""``(Q scaled by 2^112 [nq, dim] f32, rows [T, dim] u16, counts [n] i64, out [n, nq] f32)``."""

QUERY_SCALE = np.float32(2.0**112)
"""What the query is multiplied by to meet rows widened as bits (times 2^-112)."""

QUERY_LIMIT = 2.0**16
"""Every |q| must be below this: 2^16 x 2^112 is float32's overflow."""


def set_enabled(enabled: bool) -> None:
    """Use the kernel when numba is there (the default), or never: the searcher then
    widens and multiplies by torch (benchmarks compare the two this way)."""
    KERNEL.set_enabled(enabled)


def fits(Q: np.ndarray) -> bool:
    """Whether the kernel scores query ``Q`` exactly (every |q| below :data:`QUERY_LIMIT`;
    an encoder's normalized rows are at most 1)."""
    return bool(np.abs(Q).max(initial=0.0) < QUERY_LIMIT)


def kernel() -> Kernel | None:
    """The compiled kernel, or ``None`` when numba is not installed or the kernel is
    switched off."""
    return KERNEL.get()


def maxima(Q: np.ndarray, rows: np.ndarray, counts: np.ndarray, run: Kernel) -> np.ndarray:
    """Per document and query token, the best similarity: float32 ``[n, nq]``, C-order,
    as :func:`sie_index.scoring.segment_max` of the product (its rows sum to MaxSim).

    ``Q`` is float32 ``[nq, dim]``, ``rows`` the documents' float16 rows concatenated
    ``[sum(counts), dim]``, ``counts`` their positive token counts."""
    if rows.dtype != np.float16 or rows.ndim != 2 or Q.ndim != 2 or Q.shape[1] != rows.shape[1]:
        raise InvalidInput(f"rows {rows.dtype} {rows.shape} and Q {Q.shape} do not fit the kernel")
    if not fits(Q):
        raise InvalidInput("a query value of 2^16 or more overflows once scaled; use torch's path")
    _check_kernel_input(Q, rows, counts)  # the segment kernels' check: counts positive, summed
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    out = np.empty((len(counts), Q.shape[0]), np.float32)
    scaled = np.ascontiguousarray(Q, dtype=np.float32) * QUERY_SCALE
    run(scaled, np.ascontiguousarray(rows).view(np.uint16), counts, out)
    return out


def _jit(numba: Any) -> Kernel:
    signature = "void(float32[:, ::1], uint16[:, ::1], int64[::1], float32[:, ::1])"
    # reassociation lets LLVM keep 16-lane partial sums (the only rounding change);
    # no nnan/ninf: stored rows and queries are checked finite, but nothing here
    # should lean on that
    flags = {"reassoc", "contract", "nsz", "arcp"}
    jit = numba.njit(signature, nogil=True, fastmath=flags, boundscheck=False, cache=False)
    compiled: Kernel = jit(_kernel)
    compiled(  # compiled by now (a signature was given); one tiny call proves it runs
        np.ones((1, 1), np.float32),
        np.ones((1, 1), np.uint16),
        np.ones(1, np.int64),
        np.empty((1, 1), np.float32),
    )
    return compiled


def _kernel(Qs: np.ndarray, D16: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
    nq, dim = Qs.shape
    bits = np.empty(dim, np.uint32)
    row = bits.view(np.float32)
    low, sign = np.uint32(0x7FFF), np.uint32(0x8000)
    shift, sign_shift = np.uint32(13), np.uint32(16)
    t = 0
    for d in range(len(counts)):
        for i in range(nq):
            out[d, i] = -np.inf
        for _ in range(counts[d]):
            for j in range(dim):  # float16 bits in float32 places: the value times 2^-112
                h = np.uint32(D16[t, j])
                bits[j] = ((h & low) << shift) | ((h & sign) << sign_shift)
            i = 0
            while i + 4 <= nq:  # four query tokens per load of the row
                s0 = s1 = s2 = s3 = np.float32(0.0)
                for j in range(dim):
                    r = row[j]
                    s0 += Qs[i, j] * r
                    s1 += Qs[i + 1, j] * r
                    s2 += Qs[i + 2, j] * r
                    s3 += Qs[i + 3, j] * r
                out[d, i] = max(out[d, i], s0)
                out[d, i + 1] = max(out[d, i + 1], s1)
                out[d, i + 2] = max(out[d, i + 2], s2)
                out[d, i + 3] = max(out[d, i + 3], s3)
                i += 4
            while i < nq:
                s = np.float32(0.0)
                for j in range(dim):
                    s += Qs[i, j] * row[j]
                out[d, i] = max(out[d, i], s)
                i += 1
            t += 1


KERNEL: LazyKernel[Kernel] = LazyKernel("the float16 MaxSim kernel", _jit)
"""The compiled kernel, made on first use."""
