"""Where a sharded index's shards run: in this process, or one Ray actor a shard.

Both executors run the same calls on an opened :class:`~sie_index.index.Index`
per shard (:func:`shard_call`: search, BM25 statistics, refresh, size) and answer one outcome a
shard, the value or the error, within a deadline; a shard that has not answered
by then is a :class:`ShardTimeout`. They decide nothing: the sharded index
merges, routes and reports.

- :class:`LocalExecutor` (the default, no Ray needed): the shards opened here,
  called on a thread pool.
- :class:`RayExecutor` (``pip install 'sie-index[ray]'``): one actor a shard, each
  opening (memory-mapping) its shard; query matrices go once into the object
  store, and an actor that dies is restarted by Ray (``max_restarts``) and
  reopens its shard, its calls retried.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any, Protocol

from sie_index.errors import ShardTimeout
from sie_index.index import Index

__all__ = ["LocalExecutor", "RayExecutor", "ShardExecutor", "ShardTimeout", "shard_call"]

ACTOR_RESTARTS = 3


def shard_call(index: Index, call: str, *args: Any, **kwargs: Any) -> Any:
    """The calls an executor runs on one shard (the same in every executor)."""
    if call == "search":
        queries, params, text, metadata, explain, threads, texts, stats = args
        return index.search_batch(
            queries,
            params=params,
            text=text,
            metadata=metadata,
            explain=explain,
            threads=threads,
            texts=texts,
            lexical_stats=stats,
        )
    if call == "lexical_stats":
        (texts,) = args
        return index.lexical_stats(texts)
    if call == "refresh":
        return index.refresh()
    if call == "len":
        return len(index)
    raise ValueError(f"unknown shard call {call!r}")  # a programming error


class ShardExecutor(Protocol):
    def run(
        self, call: str, *args: Any, deadline_s: float | None = None
    ) -> list[Any | BaseException]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """The shards opened in this process, called on a thread pool."""

    def __init__(self, paths: Sequence[Path], *, verify: bool = True) -> None:
        self.indexes: list[Index] = []
        try:
            for path in paths:
                self.indexes.append(Index.open(path, verify=verify, encoder=None))
        except BaseException:
            self.close()
            raise
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(len(self.indexes), 8)))

    def run(
        self, call: str, *args: Any, deadline_s: float | None = None
    ) -> list[Any | BaseException]:
        futures = [self._pool.submit(shard_call, index, call, *args) for index in self.indexes]
        wait_futures(futures, timeout=deadline_s)
        out: list[Any | BaseException] = []
        for position, future in enumerate(futures):
            if not future.done():
                future.cancel()
                out.append(ShardTimeout(f"shard {position} did not answer in {deadline_s} s"))
            elif future.exception() is not None:
                out.append(future.exception())
            else:
                out.append(future.result())
        return out

    def close(self) -> None:
        for index in self.indexes:
            index.close()
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=True)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "searching shards on Ray needs Ray: pip install 'sie-index[ray]'"
        ) from exc
    return ray


class _ShardActor:
    """One shard, opened in a Ray worker (the class Ray makes an actor of)."""

    def __init__(self, path: str, verify: bool) -> None:
        # Ray holds an actor's OpenMP and torch pools to one thread (OMP_NUM_THREADS=1):
        # a shard's search then ran single-threaded, twice as slow as in-process
        import faiss
        import torch

        cores = len(os.sched_getaffinity(0))
        faiss.omp_set_num_threads(cores)
        torch.set_num_threads(cores)
        self.index = Index.open(path, verify=verify)

    def call(self, call: str, *args: Any) -> Any:
        return shard_call(self.index, call, *args)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """One Ray actor a shard; ``address`` joins a running cluster (else Ray starts or
    reuses a local runtime)."""

    def __init__(
        self, paths: Sequence[Path], *, verify: bool = True, address: str | None = None
    ) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
        actor = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)(
            _ShardActor
        )
        self.actors = [actor.remote(str(p), verify) for p in paths]
        # opened (or failed to open) before the first search is timed
        ray.get([a.pid.remote() for a in self.actors])

    def run(
        self, call: str, *args: Any, deadline_s: float | None = None
    ) -> list[Any | BaseException]:
        ray = _ray()
        put = [ray.put(a) if call == "search" and i == 0 else a for i, a in enumerate(args)]
        refs = [a.call.remote(call, *put) for a in self.actors]
        start = time.monotonic()
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=deadline_s)
        done = set(ready)
        out: list[Any | BaseException] = []
        for position, ref in enumerate(refs):
            if ref not in done:
                ray.cancel(ref)
                waited = time.monotonic() - start
                out.append(ShardTimeout(f"shard {position} did not answer in {waited:.1f} s"))
                continue
            try:
                out.append(ray.get(ref))
            except Exception as exc:
                cause = getattr(exc, "cause", None)
                out.append(cause if isinstance(cause, BaseException) else exc)
        return out

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
