"""Changing an index in place: add, delete, upsert and compact, one commit each.

A :class:`StoreWriter` holds the folder's write lock for its life (a second
writer, thread or process, gets :class:`IndexLocked` at once; readers are never
blocked). Each change is one generation (:mod:`storage.commit`), all or nothing:

- **add** writes one new segment with the documents, their vectors and their
  FAISS codes (encoded with the first segment's trained quantizer: no
  retraining, no rebuild), and commits a generation naming every segment so far;
- **delete** commits a generation whose list of deleted documents has grown;
  nothing else is written;
- **upsert** is an add that, in the same commit, deletes the documents the new
  ones replace (a replaced document gets a new internal id: stored rows never
  change);
- **compact** writes one segment holding every live document (renumbered
  densely), with the same trained quantizer or, with ``retrain``, a new one,
  and commits a generation naming only it; the old segments go when no reader
  holds a generation naming them.

Killed at any instant, the folder holds the index before the change or after
it; what the killed writer left is swept by the next one. External ids are the
user's strings and stay the same through every change; internal ids are
positions in one generation and change with compaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import faiss
import numpy as np

from storage.builder import CodecChoice, write_first_segment_index
from storage.codec import VectorCodec
from storage.commit import commit_generation, next_number
from storage.docstore import DOCS_NAME, DocReader
from storage.errors import (
    CorruptIndex,
    InvalidInput,
    NotAnIndex,
    StorageError,
    mapped_os_errors,
    typed_os_errors,
)
from storage.fsio import read_at, verify_bytes
from storage.generations import remove_debris
from storage.growth import GROWTH_WARN_FACTOR, TRAINED_KEY, growth_factor, training_of, warning_line
from storage.lexicon import check_lexical_fields
from storage.lock import WriteLock
from storage.manifest import DELETED_NAME, Manifest
from storage.merging import DEFAULT_MERGE_POLICY, MergePolicy, copy_segment
from storage.predicate import FILTER_BUDGET_S, Predicate
from storage.segment import SCRATCH_NAME, TRAINED_NAME, PendingDoc, SegmentWriter, check_vectors
from storage.segmented import SegmentedDocs
from storage.snapshot import (
    StoreSnapshot,
    check_generation,
    hold_current,
    load_codec,
    read_manifest_of,
)
from storage.token_index import (
    TOKEN_INDEX_NAME,
    TokenIndex,
    TokenIndexPlan,
    plan_token_index,
    takes_codes,
)
from storage.vectors import VECTOR_DTYPE, TokenReader

__all__ = ["ChangeReport", "StoreWriter"]

log = logging.getLogger(__name__)

COMPACT_CHUNK_DOCS = 1024


@dataclass(frozen=True, kw_only=True)
class ChangeReport:
    """What one change committed."""

    generation: int
    """The generation the change left committed (after the merges an add ran)."""
    added: int = 0
    deleted: int = 0
    replaced: int = 0
    tokens: int = 0
    documents: int = 0
    """Live documents after the change."""
    outgrown: float | None = None
    """The growth factor (:mod:`storage.growth`), when this change took the index past
    :data:`~storage.growth.GROWTH_WARN_FACTOR` times the tokens its quantizer was
    trained on (an add crossing it; the adds after it leave this None)."""
    retrained: bool = False
    """Whether the change ended by retraining the quantizer (the writer's growth
    policy, after ``outgrown``)."""


class StoreWriter:
    """The one writer of an existing index folder; use as a context manager."""

    def __init__(
        self, target: Path, *, merge_policy: MergePolicy | None = DEFAULT_MERGE_POLICY
    ) -> None:
        """``merge_policy``: which small segments an add merges afterwards (None: never)."""
        self.target = Path(target)
        self.merge_policy = merge_policy
        if not self.target.is_dir():
            raise NotAnIndex(f"{self.target} is not a folder, so it is not a sie-index index")
        self.lock = WriteLock(self.target)
        with mapped_os_errors(str(self.target)):
            self.lock.acquire()
        self._docs: dict[str, DocReader] = {}
        self._trained: faiss.Index | None = None
        self._codec: VectorCodec | None = None
        self._broken = False
        try:
            with mapped_os_errors(str(self.target)):
                self._load()
        except BaseException:
            self.close()
            raise

    # -- state -------------------------------------------------------------------

    def _load(self) -> None:
        pointer, lease = hold_current(self.target)
        try:
            manifest, _ = read_manifest_of(self.target, pointer, lease)
            where = f"{self.target}/{pointer.dirname}"
            raw = read_at(lease.fd, DELETED_NAME, where, max_bytes=manifest.deleted.bytes)
            verify_bytes(raw, manifest.deleted.sha256_blocks, f"{where}/{DELETED_NAME}")
            self.plan, deleted = check_generation(manifest, raw, where)
        finally:
            lease.release()
        self.manifest = manifest
        remove_debris(
            self.target,
            manifest.generation,
            committed=True,
            keep_segments={s.name for s in manifest.segments},
        )
        self.deleted: set[int] = set(deleted.tolist())
        self.live: dict[str, int] = {}
        """External id -> internal id of every live document."""
        self._ext_of: dict[int, str] = {}  # the reverse, so a delete costs what it deletes
        for reader in self._docs.values():
            with contextlib.suppress(Exception):
                reader.close()
        self._docs = {}
        self._trained = None
        self._codec = None
        for seg in manifest.segments:
            reader = self._reader(seg.name)
            _, ids = reader.spans_and_ids(seg.documents, seg.doc_base)  # rows checked
            for offset, ext in enumerate(ids):
                doc_id = seg.doc_base + offset
                if doc_id in self.deleted:
                    continue
                if ext in self.live:
                    raise CorruptIndex(f"{self.target}: document {ext!r} is live twice")
                self.live[ext] = doc_id
                self._ext_of[doc_id] = ext

    def _reader(self, name: str) -> DocReader:
        if name not in self._docs:
            self._docs[name] = DocReader(self.target / name / DOCS_NAME)
        return self._docs[name]

    def trained_index(self) -> faiss.Index:
        """The first segment's trained, empty FAISS index (verified), which adds
        encode with and a compaction without ``retrain`` fills again (for a ``pq``
        codec, its quantizer): read with the codec, once."""
        self.codec()
        if self._trained is None:
            raise CorruptIndex(f"{self.target}: a {self.plan.kind} index has no {TRAINED_NAME}")
        return self._trained

    def codec(self) -> VectorCodec:
        """How the index stores vectors (from its first segment's files, verified)."""
        if self._codec is None:
            seg = self.manifest.segments[0]
            fd = os.open(self.target / seg.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._codec, self._trained = load_codec(
                    fd,
                    self.manifest,
                    self.plan,
                    seg,
                    f"{self.target}/{seg.name}",
                    load_trained=True,
                )
            finally:
                os.close(fd)
        return self._codec

    @property
    def dim(self) -> int:
        """The stored vectors' dimension."""
        return self.manifest.dim

    @property
    def input_dim(self) -> int:
        """The dimension of the vectors the index takes (its encoder's)."""
        dim: int = self.manifest.encoder["dim"]
        return dim

    # -- changes -----------------------------------------------------------------

    @typed_os_errors
    def add(
        self,
        batches: Iterable[Sequence[PendingDoc]],
        *,
        replace: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> ChangeReport:
        """Add every document of ``batches`` in one commit (all of them, or on any
        error none). An id that is live already is an error naming it, unless
        ``replace`` (upsert): then the old document is deleted in the same commit."""
        self._check_usable()
        m = self.manifest
        number = next_number(self.target, m.generation)
        codec = self.codec()
        # the pq codec's stored codes are the ANN codes: nothing more to encode
        ann_codes = takes_codes(self.plan) and codec.name != "pq"
        segment = SegmentWriter(
            self.target,
            number,
            m.dim,
            doc_base=m.documents,
            token_base=m.tokens,
            generation=number,
            codec=codec,
            encode_codes=self.trained_index().sa_encode if ann_codes else None,
            lexical_fields=m.lexical_fields,
        )
        added: list[str] = []
        seen: set[str] = set()
        replaced: list[int] = []
        try:
            for batch in batches:
                checked = [
                    check_vectors(d.vectors, self.input_dim, doc_id=d.external_id) for d in batch
                ]
                for doc in batch:
                    ext = doc.external_id
                    if ext in seen:
                        raise InvalidInput(
                            "the document id appears twice in one change", doc_id=ext
                        )
                    seen.add(ext)
                    if ext in self.live:
                        if not replace:
                            raise InvalidInput(
                                "the document id is already in the index (upsert replaces it)",
                                doc_id=ext,
                            )
                        replaced.append(self.live[ext])
                segment.add(batch, checked)
                added += [d.external_id for d in batch]
                if progress is not None:
                    progress(len(batch))
            if not added:
                segment.abort()
                return self._report(m.generation)
            if not takes_codes(self.plan):
                self._write_own_graph(segment)
            record = segment.finish()
        except BaseException:
            segment.abort()
            raise
        manifest = dataclasses.replace(
            m,
            generation=number,
            documents=m.documents + record.documents,
            tokens=m.tokens + record.tokens,
            segments=[*m.segments, record],
            created_at=datetime.now(UTC).isoformat(),
        )
        deleted = self.deleted | set(replaced)
        self._commit(manifest, deleted)
        outgrown = self._crossed(m.tokens, manifest.tokens)
        for offset, ext in enumerate(added):
            self.live[ext] = record.doc_base + offset
            self._ext_of[record.doc_base + offset] = ext
        # the add is committed: a merge that fails (a full disk, say) or is killed leaves
        # it as it is, and must not report the committed add as failed
        try:
            self.merge_as_needed()
        except Exception as exc:
            log.warning("%s: merging small segments failed, left for later: %s", self.target, exc)
        return self._report(
            self.manifest.generation,
            added=len(added) - len(replaced),
            replaced=len(replaced),
            tokens=record.tokens,
            outgrown=outgrown,
        )

    def _crossed(self, before: int, after: int) -> float | None:
        """The growth factor after an add of ``before`` -> ``after`` tokens, when it
        crossed the threshold (then logged, once: later adds stay quiet, and ``info``
        and ``verify`` keep saying it); else None."""
        record = training_of(self.manifest.token_index, self.plan, str(self.target))
        then, now = growth_factor(before, record), growth_factor(after, record)
        if then is None or now is None or not then <= GROWTH_WARN_FACTOR < now:
            return None
        log.warning("%s: %s", self.target, warning_line(now))
        return now

    @typed_os_errors
    def merge(self, lo: int, hi: int) -> ChangeReport:
        """Merge the adjacent tail segments at positions ``lo .. hi - 1`` into one, in
        one commit (see :mod:`storage.merging`): rows are copied as stored, so ids,
        token rows and (but for ``hnsw``, whose merged segment gets one new graph)
        search results stay the same."""
        self._check_usable()
        m = self.manifest
        if not 1 <= lo < hi <= len(m.segments):
            raise InvalidInput(f"segments {lo}..{hi - 1} are not tail segments of this index")
        number = next_number(self.target, m.generation)
        codec = self.codec()
        segment = SegmentWriter(
            self.target,
            number,
            m.dim,
            doc_base=m.segments[lo].doc_base,
            token_base=m.segments[lo].token_base,
            generation=number,
            codec=codec,
            copy_codes=takes_codes(self.plan) and codec.name != "pq",
            lexical_fields=m.lexical_fields,
        )
        try:
            for seg in m.segments[lo:hi]:
                copy_segment(self.target, seg, self._reader(seg.name), codec, self.deleted, segment)
            if not takes_codes(self.plan):
                self._write_own_graph(segment)
            record = segment.finish()
        except BaseException:
            segment.abort()
            raise
        manifest = dataclasses.replace(
            m,
            generation=number,
            segments=[*m.segments[:lo], record, *m.segments[hi:]],
            created_at=datetime.now(UTC).isoformat(),
        )
        self._commit(manifest, set(self.deleted))
        return self._report(number)

    def merge_as_needed(self) -> int:
        """Run the merges :attr:`merge_policy` asks for, one commit each; how many ran."""
        merges = 0
        while self.merge_policy is not None:
            run = self.merge_policy.next_merge(self.manifest.segments)
            if run is None:
                break
            self.merge(*run)
            merges += 1
        return merges

    def _write_own_graph(self, segment: SegmentWriter) -> None:
        """An ``hnsw`` segment's own graph over its rows."""
        segment.close_data()
        reader = TokenReader(segment.folder, segment.dim, segment.n_tokens, codec=segment.codec)
        try:
            index = TokenIndex.build(self.plan, reader)
        finally:
            reader.close()
        index.save(segment.folder / TOKEN_INDEX_NAME)

    @typed_os_errors
    def delete(self, external_ids: Iterable[str]) -> ChangeReport:
        """Delete the live documents among ``external_ids`` in one commit; ids not
        in the index are ignored (the report counts what was deleted)."""
        doomed = {self.live[ext] for ext in external_ids if ext in self.live}
        return self._delete_ids(doomed)

    @typed_os_errors
    def delete_where(
        self, predicate: Predicate, *, budget_s: float = FILTER_BUDGET_S
    ) -> ChangeReport:
        """Delete the live documents for which ``predicate`` holds, in one commit; it
        runs on every segment within one time budget, and every id it gives is
        checked to be one of its segment's documents before anything is written (see
        :meth:`storage.segmented.SegmentedDocs.doc_ids_where`)."""
        segments = self.manifest.segments
        docs = SegmentedDocs(
            [self._reader(seg.name) for seg in segments],
            [range(seg.doc_base, seg.doc_base + seg.documents) for seg in segments],
        )
        ids = docs.doc_ids_where(predicate, budget_s=budget_s)
        return self._delete_ids({i for i in ids.tolist() if i not in self.deleted})

    def _delete_ids(self, doomed: set[int]) -> ChangeReport:
        self._check_usable()
        if not doomed:
            return self._report(self.manifest.generation)
        number = next_number(self.target, self.manifest.generation)
        manifest = dataclasses.replace(
            self.manifest, generation=number, created_at=datetime.now(UTC).isoformat()
        )
        self._commit(manifest, self.deleted | doomed)
        return self._report(number, deleted=len(doomed))

    @typed_os_errors
    def compact(
        self,
        *,
        retrain: bool = False,
        progress: Callable[[int], None] | None = None,
        lexical_fields: Sequence[str] | None = None,
    ) -> ChangeReport:
        """Rewrite the index as one segment of its live documents, purging deleted
        tokens; keep the trained quantizer, or with ``retrain`` train a new one on
        the live tokens (after the corpus has drifted a lot). ``lexical_fields``
        (None: keep the index's) gives the index a lexicon of its stored text and
        those metadata fields (:mod:`storage.lexicon`), as a build would have."""
        self._check_usable()
        fields = check_lexical_fields(lexical_fields)
        if fields is None:
            fields = self.manifest.lexical_fields
        number = next_number(self.target, self.manifest.generation)
        plan = self.plan
        codec = self.codec()
        trained = self.trained_index() if takes_codes(plan) and not retrain else None
        # stored rows are copied as they are, unless the pq codec is retrained: its
        # codes are the old quantizer's, so they are decoded and coded again
        recode = retrain and codec.name == "pq"
        segment = SegmentWriter(
            self.target,
            number,
            self.dim,
            doc_base=0,
            token_base=0,
            generation=number,
            codec=None if recode else codec,
            file_name=SCRATCH_NAME,
            lexical_fields=fields,
        )
        try:
            with StoreSnapshot.open(self.target, verify_vectors=True) as snap:
                live = np.flatnonzero(~snap.spans.deleted)
                for lo in range(0, len(live), COMPACT_CHUNK_DOCS):
                    chunk = live[lo : lo + COMPACT_CHUNK_DOCS]
                    stored = snap.docs.fetch(chunk.tolist(), text=True, metadata=True)
                    sources = snap.docs.sources(chunk.tolist())
                    counts = snap.spans.token_count[chunk]
                    starts = snap.spans.token_start[chunk]
                    batch = [
                        PendingDoc(
                            external_id=stored[d].external_id,
                            text=stored[d].text,
                            metadata=stored[d].metadata,
                            vectors=None,
                            sources=sources.get(d),
                        )
                        for d in chunk.tolist()
                    ]
                    rows = snap.tokens.read_raw(starts, counts)
                    if recode:
                        rows = codec.decode(rows).astype(VECTOR_DTYPE)
                    segment.add_rows(batch, rows, counts.tolist())
            # let the source's token index (56 bytes a token at IVF-PQ) go before the
            # new one is trained and filled, not when this method returns
            del snap
            if retrain:
                plan = plan_token_index(
                    plan.kind,
                    segment.n_tokens,
                    self.dim,
                    pq_m=plan.pq_m or None,
                    hnsw_m=plan.hnsw_m or 32,
                    seed=plan.seed,
                    codec=codec.name,
                )
            _, training = write_first_segment_index(
                segment,
                plan,
                progress,
                trained=trained,
                choice=CodecChoice(codec.name, codec.dim),
                input_dim=codec.input_dim,
                projection=codec.projection,
            )
            record = segment.finish()
        except BaseException:
            segment.abort()
            raise
        # a new quantizer is measured on what it was trained on; the old one keeps its
        # record (or its lack of one: growth since an unrecorded training is unknown)
        token_index = {**plan.to_dict(), TRAINED_KEY: training.to_dict()}
        if not retrain:
            token_index = dict(self.manifest.token_index)
        manifest = dataclasses.replace(
            self.manifest,
            generation=number,
            token_index=token_index,
            documents=record.documents,
            tokens=record.tokens,
            segments=[record],
            created_at=datetime.now(UTC).isoformat(),
            lexical_fields=fields,
        )
        self._commit(manifest, set(), open_first=True)
        self._load()
        return self._report(number, tokens=record.tokens)

    # -- plumbing ----------------------------------------------------------------

    def _commit(self, manifest: Manifest, deleted: set[int], *, open_first: bool = False) -> None:
        ids = np.array(sorted(deleted), dtype=np.int64)
        try:
            self.manifest = commit_generation(self.target, manifest, ids, open_first=open_first)
        except BaseException:
            # committed or not, learn from the folder which; if even that fails,
            # this writer must not go on from a state it cannot know
            try:
                self._load()
            except BaseException:
                self._broken = True
                raise
            raise
        self.plan = TokenIndexPlan.from_dict(self.manifest.token_index, str(self.target))
        for doc_id in deleted - self.deleted:
            ext = self._ext_of.pop(doc_id, None)
            if ext is not None and self.live.get(ext) == doc_id:
                del self.live[ext]
        self.deleted = deleted
        names = {s.name for s in self.manifest.segments}
        for name in [n for n in self._docs if n not in names]:
            with contextlib.suppress(Exception):
                self._docs.pop(name).close()

    def _check_usable(self) -> None:
        if self._broken:
            raise StorageError(
                f"{self.target}: a commit failed and the index could not be read back; "
                "open a new writer"
            )

    def _report(self, generation: int, **counts: Any) -> ChangeReport:
        return ChangeReport(generation=generation, documents=len(self.live), **counts)

    def close(self) -> None:
        for reader in self._docs.values():
            with contextlib.suppress(Exception):
                reader.close()
        self._docs = {}
        self.lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
