"""One query's work split across the cores: a persistent pool for the rerank's parts.

The exact rerank scores its candidates in parts of about equal tokens, one part a
core: the compiled kernel (:mod:`sie_index.fused_maxsim`) releases the GIL. The
pool is made once a process (a thread costs about 50 us to start, a part about
0.5 ms to run) and forgotten in a forked child, whose copy of it would have no
threads behind it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TypeVar

import numpy as np

from sie_index.scoring import token_blocks

__all__ = ["MIN_PART_TOKENS", "cores", "on_cores", "split"]

T = TypeVar("T")
R = TypeVar("R")

MIN_PART_TOKENS = 1024
"""No part is made smaller than this many tokens: handing a part to another thread
costs tens of microseconds, about what a part this size takes (k=10 at 60k
documents reranks about 2,900 tokens, and two parts still gained 0.14 ms there)."""

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def split(counts: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive document ranges ``(start, stop)`` of about equal tokens: about one a
    core, of about :data:`MIN_PART_TOKENS` at least (cut at document ends, so a part
    may come out a little smaller and one more; a long document goes whole)."""
    total = int(np.sum(counts))
    parts = max(1, min(cores(), total // MIN_PART_TOKENS))
    if parts == 1 or len(counts) <= 1:
        return [(0, len(counts))]
    return token_blocks(np.asarray(counts), -(-total // parts))


def cores() -> int:
    """The cores this process may run on (its affinity, where the system tells)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def on_cores(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``fn`` of every item, in order: the first on this thread, the others on the
    pool meanwhile. Returns, or raises the first error, only once every part is done
    (a caller's lock then covers all of them)."""
    if len(items) == 1:
        return [fn(items[0])]
    futures = [_executor().submit(fn, item) for item in items[1:]]
    try:
        first = fn(items[0])
    finally:
        wait_futures(futures)
    return [first, *(future.result() for future in futures)]


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(1, cores() - 1), thread_name_prefix="sie-part"
            )
        return _pool


def _forget() -> None:
    global _lock, _pool
    _lock = threading.Lock()  # a fork inside another thread's ``with _lock`` leaves it held
    _pool = None


os.register_at_fork(after_in_child=_forget)
