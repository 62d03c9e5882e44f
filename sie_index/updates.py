"""Changing an index in place: :class:`IndexWriter` (add, upsert, delete, compact).

The library side of :class:`storage.store_writer.StoreWriter`: it encodes
documents with the index's own encoder (or one that matches it), accepts
vectors the user already has, and compiles filters for ``delete_where``. Each
call is one commit, all or nothing; the writer holds the index's write lock
until :meth:`IndexWriter.close`, so a second writer gets :class:`IndexLocked`
and readers are never blocked. An :class:`~sie_index.Index` opened before a
change keeps its snapshot until ``refresh()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from sie_index.corpus import BadLine, Document, batched
from sie_index.corpus_items import Corpus
from sie_index.encoders.base import Encoder, EncoderSpec, l2_normalize
from sie_index.errors import InvalidInput
from sie_index.filters import compile_filter
from sie_index.pooling import Pooled, pool_encoded
from sie_index.writer import EncodeAhead, Timing, encoder_for, open_corpus, pending_batches
from storage import ChangeReport, PendingDoc, StoreWriter, as_array, check_document

log = logging.getLogger(__name__)

__all__ = ["ChangeReport", "IndexWriter", "UpdateReport", "VectorDocs", "vector_docs"]


@dataclass(frozen=True, kw_only=True)
class UpdateReport:
    """What an add or upsert of a corpus committed, and the corpus lines it skipped."""

    change: ChangeReport
    """What the change committed (summed over its commits; the last one's generation)."""
    encode_seconds: float
    store_seconds: float
    bad_lines: list[BadLine] = field(default_factory=list)
    skipped: int = 0
    """Documents left out because their ids were live already (``skip_existing``)."""
    commits: int = 1


@dataclass(frozen=True)
class VectorDocs:
    """Documents given as multivectors, one item of each list per document, checked."""

    ids: list[str]
    vectors: list[np.ndarray]
    texts: list[str | None] | None
    metadata: list[Mapping[str, Any] | None] | None


def _listed(items: Any, name: str) -> list[Any]:
    """``items`` (any iterable, read once) as a list; one string or mapping is refused,
    as it would silently be read as its characters or keys."""
    if isinstance(items, str | bytes | Mapping):
        raise InvalidInput(f"{name} takes one item per document, not one {type(items).__name__}")
    try:
        return list(items)
    except TypeError:
        raise InvalidInput(
            f"{name} takes one item per document (a list or any iterable), "
            f"not a {type(items).__name__}"
        ) from None


def vector_docs(
    ids: Iterable[str],
    vectors: Iterable[Any],
    texts: Iterable[str | None] | None = None,
    metadata: Iterable[Mapping[str, Any] | None] | None = None,
) -> VectorDocs:
    """Check the arguments of :meth:`IndexWriter.add_vectors` and
    :meth:`Index.from_vectors`: one id, array, text and metadata per document,
    each id once, each value one the store accepts; :class:`InvalidInput` names
    the first document (or list) that is wrong."""
    id_list = _listed(ids, "ids")
    columns = {"vectors": _listed(vectors, "vectors")}
    for name, given in (("texts", texts), ("metadata", metadata)):
        if given is not None:
            columns[name] = _listed(given, name)
    for name, column in columns.items():
        if len(column) != len(id_list):
            raise InvalidInput(f"{len(id_list)} ids but {len(column)} {name}")
    seen: set[str] = set()
    arrays = []
    for i, ext in enumerate(id_list):
        check_document(
            ext,
            columns["texts"][i] if "texts" in columns else None,
            columns["metadata"][i] if "metadata" in columns else None,
        )
        if ext in seen:
            raise InvalidInput("duplicate document id", doc_id=ext)
        seen.add(ext)
        arrays.append(as_array(columns["vectors"][i], ext))
    return VectorDocs(
        ids=id_list, vectors=arrays, texts=columns.get("texts"), metadata=columns.get("metadata")
    )


class IndexWriter:
    """The one writer of an index folder; use as a context manager.

    ``encoder`` encodes added documents; by default the index's own encoder,
    made from its manifest on first use. It must be the encoder the index was
    built with (kind, model, options, dimension). Added documents, text or
    vectors, are pooled by the factor the index records (:mod:`sie_index.pooling`),
    as its build pooled them.
    """

    def __init__(self, path: str | Path, *, encoder: Encoder | None = None) -> None:
        self._store = StoreWriter(Path(path))
        self.spec = EncoderSpec.from_dict(self._store.manifest.encoder)
        self.pool_factor = self._store.manifest.pool_factor
        if encoder is not None:
            self.spec.check_query_encoder(encoder.spec)
        self._encoder = encoder

    @property
    def path(self) -> Path:
        return self._store.target

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from sie_index.encoders.registry import encoder_from_spec

            self._encoder = encoder_from_spec(self.spec)
        return self._encoder

    def __len__(self) -> int:
        """Live documents."""
        return len(self._store.live)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._store.live

    # -- adding ----------------------------------------------------------------

    def add(
        self,
        corpus: Corpus,
        *,
        on_error: Literal["raise", "skip"] = "raise",
        limit: int | None = None,
        batch_size: int = 256,
        store_text: bool = True,
        progress: bool | None = None,
        commit_every: int | None = None,
        skip_existing: bool = False,
        retrain: str = "auto",
    ) -> UpdateReport:
        """Encode and add new documents (a JSONL file, a BEIR folder, or Documents)
        in one commit. An id already in the index is an error naming it.

        ``retrain``: the growth policy. ``"auto"``: the add that takes the index past
        :data:`~storage.growth.GROWTH_WARN_FACTOR` times the tokens its quantizer was
        trained on ends by retraining it (:meth:`compact` with ``retrain=True``: one
        more commit; readers keep searching the generation they hold meanwhile);
        ``"never"``: it only warns (``report.change.outgrown``).

        A large add can be made resumable: ``commit_every=N`` commits each N
        documents (each commit all or nothing), so a failure or a kill loses at most
        the encoding of the last N; run it again with ``skip_existing=True`` (CLI
        ``add --resume``) to leave out the documents whose ids are live already.
        """
        return self._add_corpus(
            corpus,
            False,
            on_error,
            limit,
            batch_size,
            store_text,
            progress,
            commit_every=commit_every,
            skip_existing=skip_existing,
            retrain=retrain,
        )

    def upsert(
        self,
        corpus: Corpus,
        *,
        on_error: Literal["raise", "skip"] = "raise",
        limit: int | None = None,
        batch_size: int = 256,
        store_text: bool = True,
        progress: bool | None = None,
        commit_every: int | None = None,
        retrain: str = "auto",
    ) -> UpdateReport:
        """Like :meth:`add`, but a document whose id is in the index replaces it (text,
        metadata and vectors), in the same commit (with ``commit_every``: each N
        documents a commit, as for :meth:`add`; ``retrain`` as for :meth:`add`)."""
        return self._add_corpus(
            corpus,
            True,
            on_error,
            limit,
            batch_size,
            store_text,
            progress,
            commit_every=commit_every,
            retrain=retrain,
        )

    def _add_corpus(
        self,
        corpus: Corpus,
        replace: bool,
        on_error: Literal["raise", "skip"],
        limit: int | None,
        batch_size: int,
        store_text: bool,
        progress: bool | None,
        *,
        commit_every: int | None = None,
        skip_existing: bool = False,
        retrain: str = "auto",
    ) -> UpdateReport:
        _check_policy(retrain)
        if commit_every is not None and (type(commit_every) is not int or commit_every < 1):
            raise InvalidInput(f"commit_every must be a positive integer, got {commit_every!r}")
        feed = open_corpus(corpus, on_error=on_error, limit=limit)
        timing = Timing()
        disable = None if progress is None else not progress
        skipped = 0
        live = self._store.live

        def fresh(docs: Iterable[Document]) -> Iterator[Document]:
            nonlocal skipped
            for d in docs:
                if d.id in live:
                    skipped += 1
                    continue
                yield d

        documents = fresh(feed.documents) if skip_existing else feed.documents
        changes: list[ChangeReport] = []
        encode = encoder_for(self.encoder, self.pool_factor)
        with EncodeAhead(batched(documents, batch_size), encode) as enc:
            bar = tqdm(total=feed.total, desc="adding", unit="doc", disable=disable)
            stream = pending_batches(
                feed, self.encoder, enc, store_text=store_text, timing=timing, bar=bar
            )
            for chunk in _commit_chunks(stream, commit_every):
                changes.append(self._store.add(chunk, replace=replace))
            bar.close()
        return UpdateReport(
            change=self._after_growth(_summed(changes), retrain),
            encode_seconds=timing.encode_seconds,
            store_seconds=timing.store_seconds,
            bad_lines=feed.bad_lines,
            skipped=skipped,
            commits=len(changes),
        )

    def add_vectors(
        self,
        ids: Iterable[str],
        vectors: Iterable[Any],
        *,
        texts: Iterable[str | None] | None = None,
        metadata: Iterable[Mapping[str, Any] | None] | None = None,
        replace: bool = False,
        batch_size: int = 1024,
        retrain: str = "auto",
    ) -> ChangeReport:
        """Add documents from multivectors the user already has, in one commit; with
        ``replace``, a document whose id is in the index replaces it (upsert);
        ``retrain``: the growth policy, as for :meth:`add`.

        Each argument is one item per document, in any iterable (read once).
        Vectors are L2-normalized when the index's encoder normalizes (an index
        built with :meth:`Index.from_vectors`, ``normalize=True``), and pooled as
        the index records."""
        _check_policy(retrain)
        docs = vector_docs(ids, vectors, texts, metadata)
        normalize = bool(self.spec.options.get("normalize", False))

        def batches() -> Iterator[list[PendingDoc]]:
            for lo in range(0, len(docs.ids), batch_size):
                out = []
                for i in range(lo, min(lo + batch_size, len(docs.ids))):
                    arr = docs.vectors[i]
                    if normalize and arr.ndim == 2 and arr.dtype.kind in "fiu":
                        arr = l2_normalize(arr.astype(np.float32))
                    (item,) = pool_encoded([arr], self.pool_factor)
                    out.append(
                        PendingDoc(
                            external_id=docs.ids[i],
                            text=docs.texts[i] if docs.texts is not None else None,
                            metadata=docs.metadata[i] if docs.metadata is not None else None,
                            vectors=item.vectors if isinstance(item, Pooled) else item,
                            sources=item.sources if isinstance(item, Pooled) else None,
                        )
                    )
                yield out

        return self._after_growth(self._store.add(batches(), replace=replace), retrain)

    def _after_growth(self, change: ChangeReport, retrain: str) -> ChangeReport:
        """The growth policy after a change: retrain the quantizer when the change
        took the index past the growth threshold and the policy is ``"auto"``."""
        kind = str(self._store.manifest.token_index.get("kind", ""))
        if retrain != "auto" or change.outgrown is None or not kind.startswith("ivf"):
            return change  # (flat and hnsw have no quantizer to retrain)
        log.info(
            "the index holds %.2fx the tokens its quantizer was trained on: retraining it",
            change.outgrown,
        )
        compacted = self._store.compact(retrain=True)
        return replace(
            change,
            generation=compacted.generation,
            documents=compacted.documents,
            retrained=True,
        )

    def upsert_vectors(
        self,
        ids: Iterable[str],
        vectors: Iterable[Any],
        *,
        texts: Iterable[str | None] | None = None,
        metadata: Iterable[Mapping[str, Any] | None] | None = None,
        retrain: str = "auto",
    ) -> ChangeReport:
        """:meth:`add_vectors` with ``replace=True``."""
        return self.add_vectors(
            ids, vectors, texts=texts, metadata=metadata, replace=True, retrain=retrain
        )

    # -- deleting and compacting -------------------------------------------------

    def delete(self, ids: Iterable[str]) -> ChangeReport:
        """Delete documents by id, in one commit; ids not in the index are ignored
        (``report.deleted`` counts what was deleted)."""
        if isinstance(ids, str):
            raise InvalidInput("delete takes a list of ids, not one string")
        return self._store.delete(list(ids))

    def delete_where(
        self,
        flt: Mapping[str, Any] | None = None,
        *,
        ids: Sequence[str] | None = None,
        filter_sql: str | None = None,
    ) -> ChangeReport:
        """Delete every document matching a filter (as search takes it: ``filter``,
        ``ids``, ``filter_sql``; all given must hold), in one commit."""
        compiled = compile_filter(flt, ids=ids, filter_sql=filter_sql)
        if compiled is None:
            raise InvalidInput("delete_where needs a filter (to delete everything, rebuild)")
        return self._store.delete_where(compiled.predicate)

    def compact(
        self,
        *,
        retrain: bool = False,
        progress: Callable[[int], None] | None = None,
        lexical_fields: Sequence[str] | None = None,
    ) -> ChangeReport:
        """Rewrite the index without its deleted documents (one segment); ``retrain``
        trains a new quantizer on the live tokens; ``lexical_fields`` (None: keep
        the index's) gives it a lexicon of its text and those metadata fields."""
        return self._store.compact(
            retrain=retrain, progress=progress, lexical_fields=lexical_fields
        )

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _commit_chunks(
    batches: Iterator[list[PendingDoc]], every: int | None
) -> Iterator[Iterator[list[PendingDoc]]]:
    """``batches`` cut into the runs that commit together: runs of at least ``every``
    documents (whole batches), or one run; always at least one (an empty add commits)."""
    first: list[PendingDoc] | None = next(batches, None)
    yield_empty = first is None
    if yield_empty:
        yield iter(())
        return
    while first is not None:
        head = first

        def run(head: list[PendingDoc] = head) -> Iterator[list[PendingDoc]]:
            n = len(head)
            yield head
            while every is None or n < every:
                batch = next(batches, None)
                if batch is None:
                    return
                n += len(batch)
                yield batch

        yield run()
        first = next(batches, None)


RETRAIN_POLICIES = ("auto", "never")


def _check_policy(retrain: str) -> None:
    if retrain not in RETRAIN_POLICIES:
        raise InvalidInput(f"retrain must be one of {', '.join(RETRAIN_POLICIES)}, got {retrain!r}")


def _summed(changes: Sequence[ChangeReport]) -> ChangeReport:
    """One report for an add's commits: counts summed, the last commit's state."""
    last = changes[-1]
    return ChangeReport(
        generation=last.generation,
        added=sum(c.added for c in changes),
        deleted=sum(c.deleted for c in changes),
        replaced=sum(c.replaced for c in changes),
        tokens=sum(c.tokens for c in changes),
        documents=last.documents,
        # the commit that crossed the growth threshold, if one did (at most one does)
        outgrown=max((c.outgrown for c in changes if c.outgrown is not None), default=None),
    )
