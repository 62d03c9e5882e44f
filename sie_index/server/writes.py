"""The server's one writer: requests queue for it, and it commits them in batches.

Writes that arrive within ``window_s`` of the first one waiting (up to
``max_documents`` documents) and are of one kind (adds of vectors, adds of
text, upserts of either, deletes by id) go into ONE commit through the index's
:class:`~sie_index.IndexWriter`. Each request is answered only after that
commit is durable and the index has moved to it (``refresh``), so a write
acknowledged to a client is in the next search and survives a crash. If the
combined commit fails on one request's input, nothing of it was committed, and
its requests are committed one by one, so a bad request fails alone. Deletes by
filter and compactions are committed alone. The writer holds the index's write
lock from the first write on; a writer elsewhere makes writes here answer 503
(``IndexLocked``) until it lets go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sie_index.corpus import Document
from sie_index.errors import (
    CorruptIndex,
    DimensionMismatch,
    IndexClosed,
    InvalidInput,
    ReadOnlyIndex,
    SieIndexError,
    StorageFull,
    TooManyOpenFiles,
)
from sie_index.index import Index
from sie_index.server.errors_http import UnknownDocument, WriteQueueFull
from sie_index.server.wire import ChangeOut
from sie_index.sharded import ShardedIndex
from sie_index.sharded_writer import ShardedWriter
from sie_index.updates import IndexWriter

__all__ = ["AddOp", "BatchingWriter", "CompactOp", "DeleteOp", "DeleteWhereOp", "WriteOp"]

log = logging.getLogger(__name__)

# Errors caused by one request's input: the rest of its batch is committed without it.
_REQUEST_ERRORS = (InvalidInput, DimensionMismatch, UnknownDocument)
# Errors that leave the server unable to write until something changes.
_DEGRADING = (StorageFull, ReadOnlyIndex, CorruptIndex, TooManyOpenFiles)


@dataclass(kw_only=True)
class WriteOp:
    """One request's write, waiting for the writer."""

    future: asyncio.Future[ChangeOut] | None = field(default=None, repr=False)
    arrived: float = 0.0

    @property
    def key(self) -> tuple[Any, ...] | None:
        """Requests with equal keys may share a commit; None: committed alone."""
        return None

    @property
    def size(self) -> int:
        return 1


@dataclass(kw_only=True)
class AddOp(WriteOp):
    """Documents to add (``replace``: upsert): ``vectors`` given, or ``texts`` encoded."""

    ids: list[str]
    texts: list[str | None]
    metadata: list[Mapping[str, Any] | None]
    vectors: list[np.ndarray] | None
    replace: bool = False

    @property
    def key(self) -> tuple[Any, ...] | None:
        return ("add", self.vectors is not None, self.replace)

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass(kw_only=True)
class DeleteOp(WriteOp):
    ids: list[str]
    must_exist: bool = False

    @property
    def key(self) -> tuple[Any, ...] | None:
        return None if self.must_exist else ("delete",)

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass(kw_only=True)
class DeleteWhereOp(WriteOp):
    filter: Mapping[str, Any] | None
    ids: Sequence[str] | None
    filter_sql: str | None


@dataclass(kw_only=True)
class CompactOp(WriteOp):
    retrain: bool = False


Outcome = ChangeOut | BaseException


class BatchingWriter:
    """The one writer task of a server (start it inside the server's event loop)."""

    def __init__(
        self,
        index: Index | ShardedIndex,
        *,
        window_s: float,
        max_documents: int,
        max_queued: int,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self._index = index
        self.window_s = window_s
        self.max_documents = max_documents
        self.max_queued = max_queued
        self._on_commit = on_commit
        self._queue: asyncio.Queue[WriteOp | None] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._queued_docs = 0
        self._in_flight = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sie-index-writer")
        self._writer: IndexWriter | ShardedWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failure: str | None = None
        """Why the last commit failed for a reason that stops every write (a full disk,
        a read-only folder, damage, no descriptors); None after a commit succeeds."""

    @property
    def depth(self) -> int:
        """Requests queued or being committed."""
        return self._queue.qsize() + self._in_flight

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sie-index-writer")

    async def submit(self, op: WriteOp) -> ChangeOut:
        """Queue ``op``; answers once its commit is durable and searchable."""
        if self._task is None or self._stopping:
            raise IndexClosed("the server is shutting down; nothing was written")
        if self.depth >= self.max_queued:
            raise WriteQueueFull(f"{self.depth} writes are waiting; nothing was queued, try again")
        loop = asyncio.get_running_loop()
        op.future = loop.create_future()
        op.arrived = loop.time()
        self._queued_docs += op.size
        self._queue.put_nowait(op)
        self._arrived.set()
        # a client that goes away does not cancel the commit its write is part of
        return await asyncio.shield(op.future)

    async def stop(self) -> None:
        """Commit what is queued, then let the index's write lock go."""
        self._stopping = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_writer)
        self._thread.shutdown(wait=True)

    # -- the task ----------------------------------------------------------------

    def _take(self) -> WriteOp | None:
        op = self._queue.get_nowait()
        if op is not None:
            self._queued_docs -= op.size
        return op

    async def _gather(self, first: WriteOp) -> tuple[list[WriteOp], WriteOp | None, bool]:
        """``first`` and the requests that may share its commit; also the next request
        (of another kind), and whether the writer was asked to stop."""
        loop = asyncio.get_running_loop()
        end = first.arrived + self.window_s
        while self._queued_docs + first.size < self.max_documents and loop.time() < end:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), end - loop.time())
            except TimeoutError:
                break
        batch, docs = [first], first.size
        while not self._queue.empty() and docs < self.max_documents:
            op = self._take()
            if op is None:
                return batch, None, True
            if op.key != first.key:
                return batch, op, False
            batch.append(op)
            docs += op.size
        return batch, None, False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: WriteOp | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else await self._queue.get()
            if carry is None and first is not None:
                self._queued_docs -= first.size
            carry = None
            if first is None:
                break
            batch = [first]
            self._in_flight = 1
            if first.key is not None:
                batch, carry, stop = await self._gather(first)
            self._in_flight = len(batch)
            t0 = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._thread, self._commit, batch)
            except BaseException as exc:  # the executor itself failed: answer everyone
                outcomes = [exc] * len(batch)
            finally:
                self._in_flight = 0
            if self._on_commit is not None:
                self._on_commit(len(batch), time.perf_counter() - t0)
            for op, outcome in zip(batch, outcomes, strict=True):
                assert op.future is not None
                if op.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    op.future.set_exception(outcome)
                else:
                    op.future.set_result(outcome)
        if carry is not None and carry.future is not None and not carry.future.done():
            carry.future.set_exception(IndexClosed("the server stopped; nothing was written"))

    # -- in the writer's thread ------------------------------------------------------

    def _commit(self, batch: list[WriteOp]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        groups = [batch]
        while groups:
            group = groups.pop(0)
            if not group:
                continue
            try:
                for op, out in zip(group, self._apply(group), strict=True):
                    outcomes[id(op)] = out
            except _REQUEST_ERRORS as exc:  # nothing of the group was committed
                if len(group) == 1:
                    outcomes[id(group[0])] = exc
                else:
                    groups[0:0] = self._split(group, exc, outcomes)
            except Exception as exc:
                self._failed(exc)
                for op in [*group, *(op for g in groups for op in g)]:
                    outcomes[id(op)] = exc
                groups = []
        results = [outcomes[id(op)] for op in batch]
        done = [o for o in results if isinstance(o, ChangeOut)]
        if done:
            try:
                self._index.refresh()
            except Exception as exc:
                self.failure = f"cannot open the committed generation: {exc}"
                gone = SieIndexError(
                    f"the change is committed (generation {done[-1].generation}), but this "
                    f"server could not move to it: {exc}"
                )
                return [gone if isinstance(o, ChangeOut) else o for o in results]
            self.failure = None
        return results

    @staticmethod
    def _split(
        group: list[WriteOp], exc: Exception, outcomes: dict[int, Outcome]
    ) -> list[list[WriteOp]]:
        """What to try after ``group`` failed on one request's input: without the request
        the error names; split before the second request naming a document the error
        names twice (each half may be fine alone); else each request alone."""
        doc_id = getattr(exc, "doc_id", None)
        holders = [i for i, op in enumerate(group) if doc_id in getattr(op, "ids", ())]
        if doc_id is not None and len(holders) == 1:
            culprit = holders[0]
            outcomes[id(group[culprit])] = exc
            return [group[:culprit] + group[culprit + 1 :]]
        if doc_id is not None and len(holders) > 1:
            return [group[: holders[1]], group[holders[1] :]]
        return [[op] for op in group]

    def _failed(self, exc: Exception) -> None:
        """After a failed commit, start again from a fresh writer (it rereads the index)."""
        if isinstance(exc, _DEGRADING):
            self.failure = f"{type(exc).__name__}: {exc}"
        elif not isinstance(exc, SieIndexError):
            log.error("a commit failed", exc_info=exc)
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception:
                log.exception("closing the index writer failed")

    def _apply(self, ops: list[WriteOp]) -> list[ChangeOut]:
        if self._writer is None:
            self._writer = self._index.writer()
        w = self._writer
        first = ops[0]
        if isinstance(first, AddOp):
            return self._add(w, [op for op in ops if isinstance(op, AddOp)])
        if isinstance(first, DeleteOp):
            return self._delete(w, [op for op in ops if isinstance(op, DeleteOp)])
        if isinstance(first, DeleteWhereOp):
            c = w.delete_where(first.filter, ids=first.ids, filter_sql=first.filter_sql)
            return [ChangeOut(generation=c.generation, deleted=c.deleted, documents=c.documents)]
        if isinstance(first, CompactOp):
            t0 = time.perf_counter()
            c = w.compact(retrain=first.retrain)
            seconds = time.perf_counter() - t0
            out = ChangeOut(generation=c.generation, documents=c.documents, store_seconds=seconds)
            return [out]
        raise TypeError(f"not a write: {first!r}")

    @staticmethod
    def _add(w: IndexWriter | ShardedWriter, ops: list[AddOp]) -> list[ChangeOut]:
        ids = [i for op in ops for i in op.ids]
        texts = [t for op in ops for t in op.texts]
        metadata = [m for op in ops for m in op.metadata]
        replace = ops[0].replace
        live_before = {i for i in ids if i in w} if replace else set()
        t0 = time.perf_counter()
        encode_s = 0.0
        if ops[0].vectors is not None:
            vectors = [v for op in ops for v in op.vectors or ()]
            change = w.add_vectors(ids, vectors, texts=texts, metadata=metadata, replace=replace)
            store_s = time.perf_counter() - t0
        else:
            docs = [
                Document(id=i, text=t or "", metadata=dict(m) if m else None)
                for i, t, m in zip(ids, texts, metadata, strict=True)
            ]
            report = w.upsert(docs, progress=False) if replace else w.add(docs, progress=False)
            change, encode_s, store_s = report.change, report.encode_seconds, report.store_seconds
        out = []
        for op in ops:
            replaced = sum(i in live_before for i in op.ids)
            out.append(
                ChangeOut(
                    generation=change.generation,
                    added=len(op.ids) - replaced,
                    replaced=replaced,
                    tokens=change.tokens,
                    documents=change.documents,
                    encode_seconds=encode_s,
                    store_seconds=store_s,
                    outgrown=change.outgrown,
                )
            )
        return out

    @staticmethod
    def _delete(w: IndexWriter | ShardedWriter, ops: list[DeleteOp]) -> list[ChangeOut]:
        if ops[0].must_exist:
            missing = [i for i in ops[0].ids if i not in w]
            if missing:
                raise UnknownDocument(missing)
        seen: set[str] = set()
        counts = []
        for op in ops:
            counts.append(sum(1 for i in dict.fromkeys(op.ids) if i not in seen and i in w))
            seen.update(op.ids)
        change = w.delete(list(dict.fromkeys(i for op in ops for i in op.ids)))
        return [
            ChangeOut(generation=change.generation, deleted=n, documents=change.documents)
            for n in counts
        ]
