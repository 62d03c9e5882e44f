"""Kernels compiled by numba (the ``fast`` extra) the first time they are used.

A :class:`LazyKernel` compiles its function on its first use in a process (about a
second), not at import: numba's on-disk cache is a pickle, and pickles are not read
here. Without numba, or when the compile fails (logged once), :meth:`LazyKernel.get`
returns ``None`` and the caller keeps its NumPy or torch path, which gives the same
results. Benchmarks switch a kernel off with :meth:`LazyKernel.set_enabled` to
compare the two paths in one run.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["LazyKernel", "read_only", "sum_in_order"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class LazyKernel(Generic[F]):
    """One numba kernel: ``build(numba)`` compiles it (and proves it runs)."""

    def __init__(self, what: str, build: Callable[[Any], F]) -> None:
        self.what = what
        self._build = build
        self._lock = threading.Lock()
        self._compiled: tuple[F | None] | None = None  # (kernel,) or (None,) once tried
        self._enabled = True
        _kernels.add(self)

    def set_enabled(self, enabled: bool) -> None:
        """Use the kernel when numba is there (the default), or never."""
        self._enabled = enabled

    def get(self) -> F | None:
        """The compiled kernel, or ``None`` without numba, after a failed compile, or
        while the kernel is switched off."""
        if not self._enabled:
            return None
        compiled = self._compiled  # one read: forget() may clear it meanwhile
        if compiled is None:
            with self._lock:
                compiled = self._compiled
                if compiled is None:
                    compiled = self._compiled = (self._compile(),)
        return compiled[0]

    def forget(self) -> None:
        """Compile again on the next use (a test that makes ``import numba`` fail)."""
        with self._lock:
            self._compiled = None

    def _compile(self) -> F | None:
        try:
            import numba
        except ImportError:
            return None
        try:
            return self._build(numba)
        except Exception as exc:  # an LLVM or typing failure: the caller's path, not an error
            log.warning("%s did not compile (%s); the uncompiled path runs instead", self.what, exc)
            return None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


_kernels: weakref.WeakSet[LazyKernel[Any]] = weakref.WeakSet()


def _after_fork() -> None:
    """A child forked while another thread compiled would find a lock held forever."""
    for kernel in list(_kernels):
        kernel._after_fork()


os.register_at_fork(after_in_child=_after_fork)


def read_only(array: np.ndarray, dtype: Any) -> np.ndarray:
    """A contiguous read-only view of ``array`` (a copy only where it is not already
    contiguous ``dtype``): the one array type a kernel's signature takes."""
    view = np.ascontiguousarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view


def sum_in_order(rows: np.ndarray) -> np.ndarray:
    """``rows [n, m]`` summed over ``n`` in order, in float32, as the kernels sum
    (``ndarray.sum`` sums a contiguous run pairwise: a single column would differ)."""
    if len(rows) == 0:
        return np.zeros(rows.shape[1], np.float32)
    total = rows[0].astype(np.float32, copy=True)
    for row in rows[1:]:
        total += row
    return total
