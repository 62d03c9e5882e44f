"""Opening an index: one committed generation, verified, held for the reader's whole life.

:meth:`StoreSnapshot.open` reads ``CURRENT``, takes a lease on the generation it
names (so no writer removes it, or a segment it names, while it is in use), and
opens each file once:

1. the manifest, checked against the SHA-256 in ``CURRENT``, then parsed strictly;
   the generation's list of deleted documents, checked against its checksum;
2. for each segment (:mod:`storage.segment`), in order: its FAISS data (the
   first segment's index file, or a later one's codes or own graph), read once
   into memory and checked block by block before FAISS parses a byte, then
   checked against the manifest's kind and counts; its token map, checked at
   once; its vector file, at once with ``verify_vectors``, else block by block
   on first read (never skipped); its document database, every row's span
   checksum verified, the spans checked against the token map.

Nothing a writer does afterwards (a commit, a compaction, a rebuild of the same
path, removing the folder) changes what the snapshot reads. Every damaged or
missing file is :class:`CorruptIndex` naming it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.build_journal import JOURNAL_NAME
from storage.codec import (
    CODEC_INDEX_NAME,
    PROJECTION_NAME,
    VectorCodec,
    load_sq8,
    projection_from_bytes,
    vector_file,
)
from storage.deletions import decode_deleted
from storage.docstore import DOCS_NAME, DocReader, DocSpans
from storage.errors import CorruptIndex, FormatVersionMismatch, NotAnIndex, read_failure
from storage.external_ids import ExternalIds, SegmentedExternalIds
from storage.fsio import VerifiedBlocks, read_at, sha256_hex, verify_bytes
from storage.generations import Lease, Pointer, read_pointer
from storage.growth import training_of
from storage.manifest import DELETED_NAME, MANIFEST_NAME, FileRecord, Manifest, SegmentRecord
from storage.segment import CODES_NAME, REQUIRED_FILES, SEGMENT_FILES, TRAINED_NAME, PendingDoc
from storage.segmented import SegmentedDocs, SegmentedTokens
from storage.token_index import TOKEN_INDEX_NAME, TokenIndex, TokenIndexPlan, takes_codes
from storage.vectors import TOKEN_DOC_NAME, TokenReader

__all__ = [
    "StoreSnapshot",
    "check_generation",
    "hold_current",
    "load_codec",
    "manifest_segment_files",
    "parse_manifest",
    "read_manifest",
    "read_manifest_of",
    "segment_files",
]

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_OPEN_ATTEMPTS = 100


def hold_current(folder: Path) -> tuple[Pointer, Lease]:
    """Read ``CURRENT`` and lease the generation it names, following concurrent commits."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotAnIndex(f"{folder} is not a folder, so it is not a sie-index index") from exc
    try:
        return _lease_current(folder, folder_fd)
    finally:
        os.close(folder_fd)


def _lease_current(folder: Path, folder_fd: int) -> tuple[Pointer, Lease]:
    where = str(folder)
    previous: Pointer | None = None
    for attempt in range(_OPEN_ATTEMPTS):
        pointer = read_pointer(folder_fd, where)
        if pointer is None:
            if os.path.exists(folder / MANIFEST_NAME):
                raise FormatVersionMismatch(
                    f"{folder} holds an index of format version 1; this release of sie-index "
                    "reads format version 2. Rebuild the index (overwrite)."
                )
            if os.path.exists(folder / JOURNAL_NAME):
                raise NotAnIndex(
                    f"{folder} holds an interrupted build, not an index yet: resume it "
                    "(resume=True), or rebuild it (overwrite=True)"
                )
            raise NotAnIndex(
                f"{folder} is not a sie-index index: it has no committed generation (CURRENT)"
            )
        lease = Lease.acquire(folder_fd, pointer.generation)
        if lease is not None:
            return pointer, lease
        if pointer == previous:
            # The same pointer twice and its folder still not there: no commit raced
            # us (a commit replaces CURRENT before it removes anything).
            raise CorruptIndex(f"{where}/CURRENT names {pointer.dirname}, which is missing")
        previous = pointer
        time.sleep(min(0.001 * attempt, 0.05))
    raise CorruptIndex(f"{where}: CURRENT kept changing while the index was being opened")


def read_manifest_of(folder: Path, pointer: Pointer, lease: Lease) -> tuple[Manifest, int]:
    """The verified manifest of the leased generation, and its size in bytes."""
    where = str(folder / pointer.dirname)
    data = read_at(lease.fd, MANIFEST_NAME, where, max_bytes=MAX_MANIFEST_BYTES)
    if sha256_hex(data) != pointer.manifest_sha256:
        raise CorruptIndex(f"{where}/{MANIFEST_NAME} does not match its checksum in CURRENT")
    manifest = parse_manifest(data, where)
    if manifest.generation != pointer.generation:
        raise CorruptIndex(f"{where}/{MANIFEST_NAME} belongs to another generation")
    return manifest, len(data)


def parse_manifest(data: bytes, where: str) -> Manifest:
    """A manifest's bytes (verified by the caller) parsed strictly, as every reader does."""
    return Manifest.from_bytes(
        data,
        f"{where}/{MANIFEST_NAME}",
        file_names=SEGMENT_FILES,
        file_names_required=REQUIRED_FILES,
    )


def check_generation(
    manifest: Manifest, deleted_bytes: bytes, where: str
) -> tuple[TokenIndexPlan, np.ndarray]:
    """A parsed generation's token-index plan and deleted ids, checked as a reader
    checks them: with :func:`parse_manifest`, the one validator behind every open
    (:class:`CorruptIndex` naming the file) and every commit (:mod:`storage.commit`
    runs both before ``CURRENT`` moves, so a writer never commits what its reader
    refuses). ``deleted_bytes`` are verified by the caller."""
    name = f"{where}/{MANIFEST_NAME}"
    plan = TokenIndexPlan.from_dict(manifest.token_index, name)
    training_of(manifest.token_index, plan, name)  # what it held at training, if recorded
    if not manifest.segments:
        raise CorruptIndex(f"{name} names no segment")
    for position, seg in enumerate(manifest.segments):
        want = manifest_segment_files(manifest, plan, position)
        if set(seg.files) != want:
            raise CorruptIndex(
                f"{name}: segment {seg.name} names files {sorted(seg.files)}; a segment at "
                f"position {position} of a {plan.kind} index with codec {manifest.codec} "
                f"holds {sorted(want)}"
            )
    deleted = decode_deleted(deleted_bytes, manifest.documents, f"{where}/{DELETED_NAME}")
    return plan, deleted


def read_manifest(folder: Path) -> Manifest:
    """The verified manifest of the committed generation of ``folder``, without opening
    its data files (to learn, say, which encoder to make before opening the index)."""
    folder = Path(folder)
    pointer, lease = hold_current(folder)
    try:
        return read_manifest_of(folder, pointer, lease)[0]
    finally:
        lease.release()


def segment_files(
    plan: TokenIndexPlan, position: int, *, codec: str = "f16", projected: bool = False
) -> set[str]:
    """The data files segment ``position`` of an index with ``plan`` must hold.

    Every segment holds its vectors (the codec's file) and its token map. The
    first holds the FAISS index (for the ``pq`` codec only its trained copy: the
    vector file holds the index's codes) and what the codec was trained on; a
    later one holds its ANN codes or its own graph, unless its vector file already
    is its ANN codes (``pq``).
    """
    files = {vector_file(codec), TOKEN_DOC_NAME}
    if position == 0:
        if codec == "pq":
            files.add(TRAINED_NAME)
        else:
            files |= {TOKEN_INDEX_NAME} | ({TRAINED_NAME} if takes_codes(plan) else set())
        if codec == "sq8":
            files.add(CODEC_INDEX_NAME)
        if projected:
            files.add(PROJECTION_NAME)
    elif codec != "pq":
        files.add(CODES_NAME if takes_codes(plan) else TOKEN_INDEX_NAME)
    return files


def manifest_segment_files(manifest: Manifest, plan: TokenIndexPlan, position: int) -> set[str]:
    """:func:`segment_files` for a segment of ``manifest``."""
    return segment_files(
        plan,
        position,
        codec=manifest.codec,
        projected=manifest.dim != manifest.encoder["dim"],
    )


def load_codec(
    fd: int,
    manifest: Manifest,
    plan: TokenIndexPlan,
    seg: SegmentRecord,
    where: str,
    *,
    load_trained: bool = False,
) -> tuple[VectorCodec, Any]:
    """The index's codec, from its first segment's files (verified before FAISS or
    NumPy reads a byte), and the trained FAISS index when that is the codec's or
    ``load_trained`` asks for it (a writer, which adds and compacts with it)."""
    input_dim = manifest.encoder["dim"]
    projection = None
    if PROJECTION_NAME in seg.files:
        raw = _read_verified(fd, PROJECTION_NAME, seg.files[PROJECTION_NAME], where)
        projection = projection_from_bytes(
            raw, manifest.dim, input_dim, f"{where}/{PROJECTION_NAME}"
        )
    quantizer: Any = None
    trained: Any = None
    if manifest.codec == "sq8":
        raw = _read_verified(fd, CODEC_INDEX_NAME, seg.files[CODEC_INDEX_NAME], where)
        quantizer = load_sq8(raw, manifest.dim, f"{where}/{CODEC_INDEX_NAME}")
    elif manifest.codec == "pq":
        raw = _read_verified(fd, TRAINED_NAME, seg.files[TRAINED_NAME], where)
        trained = TokenIndex.load_faiss(
            raw, plan, dim=manifest.dim, ntotal=0, where=f"{where}/{TRAINED_NAME}"
        )
        quantizer = trained
    if trained is None and TRAINED_NAME in seg.files:
        # every codec's trained index is verified on open (an sq8 index's was not
        # until a writer read it), and loaded for a writer
        raw = _read_verified(fd, TRAINED_NAME, seg.files[TRAINED_NAME], where)
        if load_trained:
            trained = TokenIndex.load_faiss(
                raw, plan, dim=manifest.dim, ntotal=0, where=f"{where}/{TRAINED_NAME}"
            )
    try:
        codec = VectorCodec(
            manifest.codec, manifest.dim, input_dim, projection=projection, quantizer=quantizer
        )
    except CorruptIndex as exc:
        raise CorruptIndex(f"{where}: {exc}") from exc
    return codec, trained


def _read_verified(dir_fd: int, name: str, record: FileRecord, where: str) -> bytes:
    raw = read_at(dir_fd, name, where, max_bytes=record.bytes)
    if len(raw) != record.bytes:
        raise CorruptIndex(f"{name} in {where} was truncated")
    verify_bytes(raw, record.sha256_blocks, f"{where}/{name}")
    return raw


@contextlib.contextmanager
def _streamed(dir_fd: int, name: str, record: FileRecord, where: str) -> Iterator[VerifiedBlocks]:
    """``name`` as a :class:`VerifiedBlocks` stream, closed after the block."""
    stream = VerifiedBlocks(dir_fd, name, record.bytes, record.sha256_blocks, where)
    try:
        yield stream
    finally:
        stream.close()


class _Opened:
    """What has been opened so far, closed together if opening fails."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.tokens: list[TokenReader] = []
        self.docs: list[DocReader] = []

    def close(self) -> None:
        for reader in self.tokens:
            reader.close()
        for docs in self.docs:
            with contextlib.suppress(Exception):
                docs.close()
        self.close_fds()

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class StoreSnapshot:
    """One committed generation of an index folder, opened read-only and verified."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        docs: SegmentedDocs,
        tokens: SegmentedTokens,
        token_index: TokenIndex,
        spans: DocSpans,
        lease: Lease,
        file_sizes: dict[str, int],
    ) -> None:
        self.folder = folder
        self.file_sizes = file_sizes
        """Bytes of each file of the generation, as opened (``seg-N/name`` for segments)."""
        self.manifest = manifest
        self.docs = docs
        self.tokens = tokens
        self.token_index = token_index
        self.spans = spans
        """Spans of every document; ``spans.deleted`` marks the deleted ones."""
        self._lease = lease
        self.verified_spans: dict[str, tuple[SegmentRecord, DocSpans, ExternalIds]] = {}
        """Each segment's spans and external ids as read and checked at open (a refresh
        reuses those of segments it keeps: a segment never changes, and they are
        already in memory)."""
        self.external_ids = SegmentedExternalIds([], [])
        """Every document's external id, from the checked pass of the open."""

    @property
    def plan(self) -> TokenIndexPlan:
        return self.token_index.plan

    @property
    def codec(self) -> VectorCodec:
        """How the vectors are stored, and the projection queries go through."""
        return self.tokens.codec

    @classmethod
    def open(
        cls,
        folder: Path,
        *,
        verify_vectors: bool = True,
        previous: StoreSnapshot | None = None,
    ) -> StoreSnapshot:
        """Open the committed generation of ``folder``.

        Every file but the vector files is verified now; the vector files now when
        ``verify_vectors``, else each block the first time a read needs it. With
        ``previous`` (an open snapshot of the same folder), the document spans of
        segments both name, already checked row by row, are taken from it.
        """
        folder = Path(folder)
        pointer, lease = hold_current(folder)
        try:
            return cls._open_generation(folder, pointer, lease, verify_vectors, previous)
        except BaseException:
            lease.release()
            raise

    @classmethod
    def open_pointer(cls, folder: Path, pointer: Pointer) -> StoreSnapshot:
        """Open the generation ``pointer`` names, whether or not ``CURRENT`` names it
        yet (a writer opening what it is about to commit)."""
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            lease = Lease.acquire(folder_fd, pointer.generation)
        finally:
            os.close(folder_fd)
        if lease is None:
            raise CorruptIndex(f"{folder}/{pointer.dirname} is missing")
        try:
            return cls._open_generation(folder, pointer, lease, verify_vectors=False)
        except BaseException:
            lease.release()
            raise

    @classmethod
    def _open_generation(
        cls,
        folder: Path,
        pointer: Pointer,
        lease: Lease,
        verify_vectors: bool,
        previous: StoreSnapshot | None = None,
    ) -> StoreSnapshot:
        where = str(folder / pointer.dirname)
        manifest, manifest_bytes = read_manifest_of(folder, pointer, lease)
        plan, deleted = check_generation(
            manifest, _read_verified(lease.fd, DELETED_NAME, manifest.deleted, where), where
        )
        sizes = {MANIFEST_NAME: manifest_bytes, DELETED_NAME: manifest.deleted.bytes}
        opened = _Opened()
        try:
            token_index: TokenIndex | None = None
            codec: VectorCodec | None = None
            spans = []
            id_tables = []
            for position, seg in enumerate(manifest.segments):
                token_index, codec = cls._open_segment(
                    folder,
                    manifest,
                    plan,
                    seg,
                    position,
                    token_index,
                    codec,
                    opened,
                    verify_vectors,
                )
                known = previous.verified_spans.get(seg.name) if previous else None
                if known is not None and known[0] == seg:
                    spans.append(known[1])
                    id_tables.append(known[2])
                else:
                    seg_spans, seg_ids = opened.docs[-1].spans_and_ids(seg.documents, seg.doc_base)
                    spans.append(seg_spans)
                    id_tables.append(ExternalIds(seg_ids))
                cls._check_spans(f"{folder}/{seg.name}", seg, spans[-1], opened.tokens[-1])
                for name, record in seg.files.items():
                    sizes[f"{seg.name}/{name}"] = record.bytes
                sizes[f"{seg.name}/{DOCS_NAME}"] = opened.docs[-1].size
            if token_index is None:
                raise CorruptIndex(f"{where}/{MANIFEST_NAME} names no segment")
        except BaseException:
            opened.close()
            raise
        opened.close_fds()
        tokens = SegmentedTokens(
            opened.tokens, [s.token_base for s in manifest.segments], manifest.dim
        )
        docs = SegmentedDocs(
            opened.docs, [range(s.doc_base, s.doc_base + s.documents) for s in manifest.segments]
        )
        is_deleted = np.zeros(manifest.documents, dtype=bool)
        is_deleted[deleted] = True
        # a row is marked deleted only by a merge copying a document the list holds
        if any(
            (s.deleted & ~is_deleted[seg.doc_base : seg.doc_base + seg.documents]).any()
            for s, seg in zip(spans, manifest.segments, strict=True)
        ):
            raise CorruptIndex(
                f"{where}: a document row is marked deleted, and the list of "
                "deleted documents does not hold it"
            )
        doc_spans = DocSpans(
            token_start=np.concatenate([s.token_start for s in spans]),
            token_count=np.concatenate([s.token_count for s in spans]),
            deleted=is_deleted,
        )
        if len(deleted):
            token_index.mask_rows(np.repeat(~is_deleted, doc_spans.token_count))
        snapshot = cls(
            folder,
            manifest,
            docs,
            tokens,
            token_index,
            doc_spans,
            lease,
            dict(sorted(sizes.items())),
        )
        snapshot.verified_spans = {
            seg.name: (seg, seg_spans, seg_ids)
            for seg, seg_spans, seg_ids in zip(manifest.segments, spans, id_tables, strict=True)
        }
        snapshot.external_ids = SegmentedExternalIds(
            id_tables, [seg.doc_base for seg in manifest.segments]
        )
        return snapshot

    @staticmethod
    def _open_segment(
        folder: Path,
        manifest: Manifest,
        plan: TokenIndexPlan,
        seg: SegmentRecord,
        position: int,
        token_index: TokenIndex | None,
        codec: VectorCodec | None,
        opened: _Opened,
        verify_vectors: bool,
    ) -> tuple[TokenIndex, VectorCodec]:
        where = f"{folder}/{seg.name}"
        try:
            fd = os.open(folder / seg.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise read_failure(
                exc, f"{where}, a segment of the index, cannot be opened: {exc}"
            ) from exc
        opened.fds.append(fd)
        if position == 0:
            codec, trained = load_codec(fd, manifest, plan, seg, where)
        assert codec is not None
        for name, size in (
            (codec.file_name, seg.tokens * codec.row_bytes),
            (TOKEN_DOC_NAME, seg.tokens * 4),
        ):
            if seg.files[name].bytes != size:
                raise CorruptIndex(
                    f"{where}: the manifest records {seg.files[name].bytes} bytes for {name}, "
                    f"and {seg.tokens} tokens of {codec.row_bytes} bytes take {size}"
                )
        if codec.name == "pq":
            # the stored codes are the IVF-PQ index's own: fill the trained copy
            if position == 0:
                token_index = TokenIndex(trained, plan)
            assert token_index is not None
            raw = _read_verified(fd, codec.file_name, seg.files[codec.file_name], where)
            token_index.add_codes(raw, seg.token_base, seg.tokens, f"{where}/{codec.file_name}")
            del raw
        elif position == 0 or not takes_codes(plan):
            # the first segment's token index is the snapshot's; a later segment's of
            # a kind that keeps no codes is added as a part of its own
            with _streamed(fd, TOKEN_INDEX_NAME, seg.files[TOKEN_INDEX_NAME], where) as stream:
                part = TokenIndex.load_faiss(
                    stream,
                    plan,
                    dim=manifest.dim,
                    ntotal=seg.tokens,
                    where=f"{where}/{TOKEN_INDEX_NAME}",
                )
            if position == 0:
                token_index = TokenIndex(part, plan)
            else:
                assert token_index is not None
                token_index.add_part(part, seg.token_base)
        else:
            assert token_index is not None
            raw = _read_verified(fd, CODES_NAME, seg.files[CODES_NAME], where)
            token_index.add_codes(raw, seg.token_base, seg.tokens, f"{where}/{CODES_NAME}")
            del raw
        assert token_index is not None
        opened.tokens.append(
            TokenReader(
                Path(where),
                manifest.dim,
                seg.tokens,
                codec=codec,
                dir_fd=fd,
                vector_blocks=seg.files[codec.file_name].sha256_blocks,
                doc_blocks=seg.files[TOKEN_DOC_NAME].sha256_blocks,
                verify=verify_vectors and codec.name != "pq",  # pq codes: verified above
            )
        )
        docs = DocReader(Path(where) / DOCS_NAME)
        opened.docs.append(docs)
        if docs.lexical != (manifest.lexical_fields is not None):
            has = "holds a lexicon" if docs.lexical else "holds no lexicon"
            raise CorruptIndex(
                f"{where}/{DOCS_NAME} {has}, and the manifest says "
                f"{'it has' if manifest.lexical_fields is not None else 'the index has none'}"
            )
        return token_index, codec

    @staticmethod
    def _check_spans(where: str, seg: SegmentRecord, spans: DocSpans, tokens: TokenReader) -> None:
        n = len(spans.token_start)
        ends = spans.token_start + spans.token_count
        contiguous = n == 0 or (
            spans.token_start[0] == seg.token_base
            and np.array_equal(spans.token_start[1:], ends[:-1])
        )
        total = int(ends[-1]) - seg.token_base if n else 0
        if not contiguous or total != seg.tokens or (spans.token_count <= 0).any():
            raise CorruptIndex(f"{where}: document token spans disagree with the token count")
        # the token map (verified) must say the same as the spans (verified)
        expected = np.repeat(
            np.arange(seg.doc_base, seg.doc_base + n, dtype=np.int32), spans.token_count
        )
        if not np.array_equal(tokens.token_doc, expected):
            raise CorruptIndex(f"{where}: {TOKEN_DOC_NAME} disagrees with the document spans")

    def lookup(self, external_ids: Sequence[str]) -> dict[str, int]:
        """Internal ids of the live documents among ``external_ids``."""
        out = {}
        for ext, ids in self.docs.lookup_all(list(external_ids)).items():
            live = [i for i in ids if not self.spans.deleted[i]]
            if len(live) > 1:
                raise CorruptIndex(f"{self.folder}: document {ext!r} is live twice")
            if live:
                out[ext] = live[0]
        return out

    def live_documents(
        self, limit: int | None = None, chunk_docs: int = 1024
    ) -> Iterator[list[PendingDoc]]:
        """The live documents (the first ``limit`` of them) with their stored vectors,
        ``chunk_docs`` at a time, as a writer takes them: id, text, metadata and
        vectors decoded by the index's codec (a reshard, or a benchmark's variants,
        built without encoding again)."""
        live = np.flatnonzero(~self.spans.deleted)[:limit]
        for lo in range(0, len(live), chunk_docs):
            chunk = live[lo : lo + chunk_docs]
            stored = self.docs.fetch(chunk.tolist(), text=True, metadata=True)
            counts = self.spans.token_count[chunk]
            vectors = self.tokens.spans(self.spans.token_start[chunk], counts)
            parts = np.split(vectors, np.cumsum(counts)[:-1])
            yield [
                PendingDoc(
                    external_id=stored[d].external_id,
                    text=stored[d].text,
                    metadata=stored[d].metadata,
                    vectors=v,
                )
                for d, v in zip(chunk.tolist(), parts, strict=True)
            ]

    def __enter__(self) -> StoreSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.docs.close()
        self.tokens.close()
        self._lease.release()
