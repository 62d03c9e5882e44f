""":class:`ShardedWriter`: the :class:`~sie_index.updates.IndexWriter` of a sharded index.

It holds the sharded folder's write lock for its life (so no rebuild replaces
the shards under it, and one writer at a time), opens each shard's own writer
when a change first reaches that shard, and sends every document to the shard
its id routes to. A change that spans shards is one commit a shard; an error
names the shard, and the shards before it have committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sie_index.corpus import Document
from sie_index.corpus_items import Corpus
from sie_index.encoders.base import Encoder
from sie_index.errors import InvalidInput, SieIndexError
from sie_index.shard_merge import combine_changes, combine_updates
from sie_index.updates import ChangeReport, IndexWriter, UpdateReport
from sie_index.writer import open_corpus
from storage import ShardMap, WriteLock, mapped_os_errors, shard_of

__all__ = ["ShardedWriter"]

_T = TypeVar("_T")


class ShardedWriter:
    """The one writer of a sharded index folder; use as a context manager."""

    def __init__(self, path: Path, shard_map: ShardMap, encoder: Encoder | None = None) -> None:
        self.path = Path(path)
        self.shard_map = shard_map
        self._encoder = encoder
        self._lock = WriteLock(self.path)
        with mapped_os_errors(str(self.path)):
            self._lock.acquire()
        self._writers: dict[int, IndexWriter] = {}

    def _route(self, external_id: Any) -> int:
        if not isinstance(external_id, str):
            raise InvalidInput("document id must be a string", doc_id=repr(external_id))
        return shard_of(external_id, len(self.shard_map.shards))

    def _writer(self, position: int) -> IndexWriter:
        if position not in self._writers:
            name = self.shard_map.shards[position]
            try:
                self._writers[position] = IndexWriter(self.path / name, encoder=self._encoder)
            except SieIndexError as exc:
                raise _naming_shard(exc, position, name) from exc
        return self._writers[position]

    def _on(self, positions: Iterable[int], fn: Callable[[IndexWriter], _T]) -> list[_T]:
        out = []
        for position in sorted(set(positions)):
            writer = self._writer(position)
            try:
                out.append(fn(writer))
            except SieIndexError as exc:
                raise _naming_shard(exc, position, self.shard_map.shards[position]) from exc
        return out

    def _every(self) -> range:
        return range(len(self.shard_map.shards))

    def __len__(self) -> int:
        return sum(len(self._writer(p)) for p in self._every())

    def __contains__(self, external_id: object) -> bool:
        return isinstance(external_id, str) and external_id in self._writer(
            self._route(external_id)
        )

    # -- changes -----------------------------------------------------------------

    def add(self, corpus: Corpus, **options: Any) -> UpdateReport:
        """Add documents, each to its shard (options as :meth:`IndexWriter.add`)."""
        return self._documents(corpus, replace=False, **options)

    def upsert(self, corpus: Corpus, **options: Any) -> UpdateReport:
        """Add documents, replacing those whose ids are in the index (in their shard)."""
        return self._documents(corpus, replace=True, **options)

    def _documents(self, corpus: Corpus, *, replace: bool, **options: Any) -> UpdateReport:
        feed = open_corpus(
            corpus, on_error=options.pop("on_error", "raise"), limit=options.pop("limit", None)
        )
        groups: dict[int, list[Document]] = {}
        for doc in feed.documents:
            if not isinstance(doc, Document):
                raise InvalidInput(f"a corpus item is a {type(doc).__name__}, not a Document")
            groups.setdefault(self._route(doc.id), []).append(doc)
        reports = []
        for position, docs in sorted(groups.items()):

            def change(w: IndexWriter, docs: list[Document] = docs) -> UpdateReport:
                # the shards share one quantizer: no shard retrains its own
                each = {**options, "retrain": "never"}
                return w.upsert(docs, **each) if replace else w.add(docs, **each)

            reports += self._on([position], change)
        combined = combine_updates(reports, len(self))
        combined.bad_lines[:0] = feed.bad_lines
        return combined

    def add_vectors(
        self,
        ids: Sequence[str],
        vectors: Sequence[Any],
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        replace: bool = False,
    ) -> ChangeReport:
        """Add (``replace``: upsert) documents from multivectors, each in its shard."""
        if isinstance(ids, str):
            raise InvalidInput("add_vectors takes a sequence of ids, not one string")
        ids, vectors = list(ids), list(vectors)
        if len(ids) != len(vectors):
            raise InvalidInput(f"{len(ids)} ids but {len(vectors)} vector arrays")
        texts = list(texts) if texts is not None else None
        metadata = list(metadata) if metadata is not None else None
        groups: dict[int, list[int]] = {}
        for i, ext in enumerate(ids):
            groups.setdefault(self._route(ext), []).append(i)
        reports: list[ChangeReport] = []
        for position, rows in sorted(groups.items()):

            def change(w: IndexWriter, rows: list[int] = rows) -> ChangeReport:
                return w.add_vectors(
                    [ids[i] for i in rows],
                    [vectors[i] for i in rows],
                    texts=[texts[i] for i in rows] if texts is not None else None,
                    metadata=[metadata[i] for i in rows] if metadata is not None else None,
                    replace=replace,
                    retrain="never",  # the shards share one quantizer
                )

            reports += self._on([position], change)
        return combine_changes(reports, len(self))

    def delete(self, ids: Iterable[str]) -> ChangeReport:
        """Delete documents by id, each in the shard its id routes to (unknown ids are
        ignored)."""
        if isinstance(ids, str):
            raise InvalidInput("delete takes a collection of ids, not one string")
        groups: dict[int, list[str]] = {}
        for ext in ids:
            groups.setdefault(self._route(ext), []).append(ext)
        reports: list[ChangeReport] = []
        for position, doomed in sorted(groups.items()):

            def remove(w: IndexWriter, doomed: list[str] = doomed) -> ChangeReport:
                return w.delete(doomed)

            reports += self._on([position], remove)
        return combine_changes(reports, len(self))

    def delete_where(
        self,
        flt: Mapping[str, Any] | None = None,
        *,
        ids: Sequence[str] | None = None,
        filter_sql: str | None = None,
    ) -> ChangeReport:
        """Delete the documents matching a filter, in every shard."""
        reports = self._on(
            self._every(), lambda w: w.delete_where(flt, ids=ids, filter_sql=filter_sql)
        )
        return combine_changes(reports, len(self))

    def compact(
        self, *, retrain: bool = False, lexical_fields: Sequence[str] | None = None
    ) -> ChangeReport:
        """Compact every shard with the shared quantizer (``retrain`` would give each
        shard a quantizer of its own: rebuild the sharded index instead);
        ``lexical_fields`` as :meth:`IndexWriter.compact`."""
        if retrain:
            raise InvalidInput(
                "a sharded index shares one quantizer; compact(retrain=True) would make each "
                "shard's its own: rebuild the sharded index (ShardedIndex.build, overwrite)"
            )
        return combine_changes(
            self._on(self._every(), lambda w: w.compact(lexical_fields=lexical_fields)), len(self)
        )

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        self._lock.release()

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _naming_shard(error: BaseException, position: int, name: str) -> BaseException:
    """``error`` of the same type with the shard named in its message (the error
    itself where its type takes no plain message)."""
    try:
        return type(error)(f"shard {position} ({name}): {error}")
    except TypeError:
        return error
