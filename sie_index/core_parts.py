"""One query's work split across the cores: a persistent pool for the rerank's parts.

The exact rerank reads and scores its candidates in parts of about equal tokens,
one part a core: ``pread`` and the compiled kernel (:mod:`sie_index.fused_maxsim`)
both release the GIL. The pool is made once a process (a thread costs about 50 us
to start, a part about 0.5 ms to run) and forgotten in a forked child, whose copy
of it would have no threads behind it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from sie_index.scoring import token_blocks

__all__ = ["MIN_PART_TOKENS", "on_cores", "split"]

T = TypeVar("T")
R = TypeVar("R")

MIN_PART_TOKENS = 1024
"""No part is made smaller than this many tokens: handing a part to another thread
costs tens of microseconds, about what a part this size takes (k=10 at 60k
documents reranks about 2,900 tokens, and two parts still gained 0.14 ms there)."""

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def split(counts: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive document ranges ``(start, stop)`` of about equal tokens, at most one
    a core and none under :data:`MIN_PART_TOKENS` (a longer document goes whole)."""
    total = int(np.sum(counts))
    parts = max(1, min(os.cpu_count() or 1, total // MIN_PART_TOKENS))
    if parts == 1 or len(counts) <= 1:
        return [(0, len(counts))]
    return token_blocks(np.asarray(counts), -(-total // parts))


def on_cores(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``fn`` of every item, in order: the first on this thread, the others on the
    pool meanwhile."""
    if len(items) == 1:
        return [fn(items[0])]
    futures = [_executor().submit(fn, item) for item in items[1:]]
    first = fn(items[0])
    return [first, *(future.result() for future in futures)]


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="sie-part"
            )
        return _pool


def _forget() -> None:
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget)
