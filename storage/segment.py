"""One segment of an index: an immutable folder of documents, their token vectors
and their FAISS data, written once by :class:`SegmentWriter` and shared by every
later generation that still uses it.

A segment folder ``seg-NNNNNN`` (numbered by the generation that wrote it) holds:

- ``docs.sqlite``: its documents (:mod:`storage.docstore`), with global
  internal ids ``doc_base ..`` and global token rows;
- ``tokens.f16`` and ``token_doc.i32``: its token vectors and their document
  ids (:mod:`storage.vectors`);
- the token index's data for its rows. The first segment (written by a build or
  a compaction) holds the whole trained FAISS index over its rows,
  ``tokens.faiss``, and, for the kinds that are trained, ``trained.faiss``: the
  same index emptied (the coarse quantizer and codebooks alone), which later
  adds encode with. A segment written by an add holds ``tokens.codes``: FAISS's
  own standalone codes of its rows (``sa_encode``: the inverted list and the
  code of each token), which a reader appends to the first segment's index
  (``add_sa_codes``) exactly as an add to that index would have stored them;
  so an index that took adds searches like a fresh build with the same trained
  quantizer. An ``hnsw`` index is not trained and cannot take codes: each of its
  segments holds its own graph, ``tokens.faiss``, and a search merges them.

A segment is never written again after its generation commits; deletes are a
list in the generation (:mod:`storage.deletions`), and a compaction writes a new
segment.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storage.build_journal import BatchRecord, rows_digest
from storage.codec import CODEC_INDEX_NAME, CODECS, PROJECTION_NAME, VectorCodec, vector_file
from storage.docstore import DOCS_NAME, SOURCE_DTYPE, DocRow, DocWriter, check_sources
from storage.errors import CorruptIndex, DimensionMismatch, InvalidInput
from storage.fsio import block_checksums, fsync_dir, fsync_file
from storage.manifest import FileRecord, SegmentRecord
from storage.token_index import TOKEN_INDEX_NAME
from storage.values import check_document
from storage.vectors import DOC_DTYPE, TOKEN_DOC_NAME, TOKENS_NAME, VECTOR_DTYPE, TokenWriter

__all__ = [
    "CODES_NAME",
    "REQUIRED_FILES",
    "SCRATCH_NAME",
    "SEGMENT_FILES",
    "TRAINED_NAME",
    "PendingDoc",
    "SegmentWriter",
    "as_array",
    "check_vectors",
    "segment_dirname",
    "segment_numbers",
]

F16_MAX = 65504.0
TRAINED_NAME = "trained.faiss"
CODES_NAME = "tokens.codes"
SCRATCH_NAME = "scratch.f16"
"""A build's float16 vectors of the encoder's dimension, kept until a codec or a
projection trained on them has transcoded them into the segment's vector file."""
REQUIRED_FILES = (TOKEN_DOC_NAME,)
SEGMENT_FILES = (
    *(vector_file(c) for c in CODECS),
    TOKEN_DOC_NAME,
    TOKEN_INDEX_NAME,
    TRAINED_NAME,
    CODES_NAME,
    CODEC_INDEX_NAME,
    PROJECTION_NAME,
)
"""The files of a segment that the manifest checksums block by block (``docs.sqlite``
checks itself row by row)."""
_SEG_DIR = re.compile(r"seg-(\d{6,})\Z")


def segment_dirname(number: int) -> str:
    return f"seg-{number:06d}"


def segment_numbers(folder: Path) -> list[int]:
    """Numbers of the segment folders present in ``folder``, ascending."""
    return sorted(int(m.group(1)) for n in os.listdir(folder) if (m := _SEG_DIR.match(n)))


@dataclass(frozen=True, kw_only=True)
class PendingDoc:
    """A document and its token vectors, on the way into the store: the one door of
    every writer's documents, so its id, text and metadata are checked as it is made
    (:func:`storage.values.check_document`: a NUL, a lone surrogate, a non-string
    text or metadata JSON cannot hold is :class:`InvalidInput` naming the document).
    """

    external_id: str
    text: str | None
    metadata: Any
    vectors: np.ndarray | None
    """None where the stored rows come separately (:meth:`SegmentWriter.add_rows`)."""
    sources: np.ndarray | None = None
    """For a pooled document, the stored row (within the document) each of its
    original tokens was merged into, in token order; None when each stored row is
    one token (see :mod:`storage.docstore`)."""
    metadata_json: str | None = field(init=False, repr=False)
    """The metadata as the document store will hold it."""

    def __post_init__(self) -> None:
        meta = check_document(self.external_id, self.text, self.metadata)
        object.__setattr__(self, "metadata_json", meta)


def as_array(vectors: Any, doc_id: str | None = None) -> np.ndarray:
    """``vectors`` as a NumPy array (itself when it is one); what NumPy cannot make an
    array of, such as rows of different lengths, is :class:`InvalidInput` naming the
    document."""
    try:
        return np.asarray(vectors)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"vectors are not an array: {exc}", doc_id=doc_id) from exc


def check_vectors(vectors: Any, dim: int, *, doc_id: str | None = None) -> np.ndarray:
    """Return ``vectors`` as float32 ``[n, dim]`` or raise a typed error naming the document.

    Rejected: not a 2-D numeric array, zero rows, another dimension, NaN or Inf,
    an all-zero row, and values float16 cannot hold.
    """
    arr = as_array(vectors, doc_id)
    if arr.dtype.kind not in "fiu":
        raise InvalidInput(f"vectors have dtype {arr.dtype}, not a number type", doc_id=doc_id)
    if arr.ndim != 2:
        raise InvalidInput(f"vectors have shape {arr.shape}, not [n_tokens, dim]", doc_id=doc_id)
    if arr.shape[0] == 0:
        raise InvalidInput("vectors have zero rows (no tokens)", doc_id=doc_id)
    if arr.shape[1] != dim:
        where = f" of document {doc_id!r}" if doc_id is not None else ""
        raise DimensionMismatch(
            f"vectors{where} have dimension {arr.shape[1]}, the index has {dim}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InvalidInput("vectors hold NaN or Inf values", doc_id=doc_id)
    if np.abs(arr).max() > F16_MAX:
        raise InvalidInput("vectors hold values too large for float16 storage", doc_id=doc_id)
    if not np.abs(arr).max(axis=1).all():
        raise InvalidInput("vectors hold an all-zero row", doc_id=doc_id)
    return arr


def file_record(path: Path) -> FileRecord:
    size = path.stat().st_size
    return FileRecord(bytes=size, sha256_blocks=block_checksums(path, size))


class SegmentWriter:
    """Writes one new segment folder; nothing in it counts until a generation commits it.

    With a ``codec`` (an add, a compaction), vectors are stored encoded by it in its
    vector file. Without one (a build), they are stored as float16 in
    ``file_name``: ``tokens.f16`` when that is what the index keeps, else
    :data:`SCRATCH_NAME`, which the build transcodes once its codec is trained.
    ``encode_codes`` (the trained index's ``sa_encode``) makes the ``tokens.codes``
    of an added segment from the stored (decoded) vectors; a build or compaction
    writes the FAISS files itself.
    """

    codec: VectorCodec | None
    _encode_codes: Callable[[np.ndarray], np.ndarray] | None
    _codes: Any

    def __init__(
        self,
        target: Path,
        number: int,
        dim: int,
        *,
        doc_base: int,
        token_base: int,
        generation: int,
        codec: VectorCodec | None = None,
        file_name: str = TOKENS_NAME,
        encode_codes: Callable[[np.ndarray], np.ndarray] | None = None,
        copy_codes: bool = False,
        journaled: bool = False,
        lexical_fields: Sequence[str] | None = None,
    ) -> None:
        """``journaled``: a build that records each batch for a resume
        (:mod:`storage.build_journal`); its batches come with an input digest.
        ``lexical_fields``: unless None, :meth:`finish` writes the lexicon of the
        stored text and these metadata fields (:mod:`storage.lexicon`)."""
        folder = Path(target) / segment_dirname(number)
        folder.mkdir()
        docs = DocWriter.create(folder / DOCS_NAME, journaled=journaled)
        if codec is None:
            tokens = TokenWriter(folder, dim, file_name=file_name)
        else:
            tokens = TokenWriter(
                folder, codec.row_width, file_name=codec.file_name, dtype=codec.row_dtype
            )
        self._attach(folder, dim, generation, docs, tokens, lexical_fields, n_docs=0)
        self.doc_base = doc_base
        self.token_base = token_base
        self._encode_codes = encode_codes
        self.codec = codec
        if encode_codes is not None or copy_codes:
            self._codes = open(self.folder / CODES_NAME, "ab")  # noqa: SIM115

    def _attach(
        self,
        folder: Path,
        dim: int,
        generation: int,
        docs: DocWriter,
        tokens: TokenWriter,
        lexical_fields: Sequence[str] | None,
        *,
        n_docs: int,
    ) -> None:
        """The writer's state over a segment folder and its open files (a new
        segment's, or a resumed build's), with no codec and no codes file: what a
        new segment adds to it, :meth:`__init__` sets after."""
        self.name = folder.name
        self.folder = folder
        self.dim = dim
        self.doc_base = 0
        self.token_base = 0
        self.generation = generation
        self.n_docs = n_docs
        self.lexical_fields = None if lexical_fields is None else tuple(lexical_fields)
        self._encode_codes = None
        self._codes = None
        self.codec = None
        self.docs = docs
        self.tokens = tokens

    @property
    def n_tokens(self) -> int:
        return self.tokens.rows

    @classmethod
    def reopen(
        cls,
        target: Path,
        number: int,
        dim: int,
        *,
        generation: int,
        file_name: str,
        lexical_fields: Sequence[str] | None = None,
    ) -> tuple[SegmentWriter, list[BatchRecord]]:
        """A journaled build's float16 segment, reopened to take more batches.

        What its finishing step had begun is undone (the FAISS and codec files
        removed, a scratch file renamed to ``tokens.f16`` named back). Then every
        batch record is checked in order against the stored bytes; the first that
        does not match, and everything after it, is cut, as is what a killed batch
        appended past its last committed one. Returns the writer and the batches
        kept. A store without batch records (a build finished an instant before a
        kill) is :class:`CorruptIndex`: nothing in it can be trusted for a resume.
        """
        folder = Path(target) / segment_dirname(number)
        _undo_finish(folder, file_name)
        docs = DocWriter(folder / DOCS_NAME)
        try:
            records = docs.batch_records()
            if records is None:
                raise CorruptIndex(f"{folder / DOCS_NAME} holds no batch records to resume from")
            kept = _sound_prefix(folder, file_name, dim, records)
            n_docs = kept[-1].first_doc + kept[-1].docs if kept else 0
            n_tokens = kept[-1].token_start + kept[-1].tokens if kept else 0
            docs.cut_from(n_docs)
            for name, width in ((file_name, dim * VECTOR_DTYPE.itemsize), (TOKEN_DOC_NAME, 4)):
                path = folder / name
                if not path.exists():
                    path.touch()
                os.truncate(path, n_tokens * width)
                fsync_file(path)
        except BaseException:
            docs.close()
            raise
        self = cls.__new__(cls)
        tokens = TokenWriter(folder, dim, file_name=file_name)
        self._attach(folder, dim, generation, docs, tokens, lexical_fields, n_docs=n_docs)
        return self, kept

    def add(
        self,
        batch: Sequence[PendingDoc],
        checked: Sequence[np.ndarray],
        *,
        input_digest: str | None = None,
    ) -> None:
        """Store one batch whose vectors ``check_vectors`` passed: vectors, codes, rows.

        The batch is durable on return; its rows commit in one SQLite transaction,
        with a journaled build's batch record (``input_digest``: the caller's
        digest of the batch's documents).
        """
        if not batch:
            return
        vectors = np.concatenate(checked)
        rows = vectors.astype(VECTOR_DTYPE) if self.codec is None else self.codec.encode(vectors)
        self.add_rows(batch, rows, [len(v) for v in checked], input_digest=input_digest)

    def add_rows(
        self,
        batch: Sequence[PendingDoc],
        rows: np.ndarray,
        counts: Sequence[int],
        *,
        codes: np.ndarray | None = None,
        deleted: Sequence[bool] | None = None,
        input_digest: str | None = None,
    ) -> None:
        """Store one batch whose tokens are already stored rows (``counts`` a document):
        what :meth:`add` stores after encoding, or what a compaction or a merge copies
        unchanged. A merge also copies the rows' ANN ``codes`` and marks the documents
        the generation lists as ``deleted``."""
        if not batch:
            return
        first_doc = self.doc_base + self.n_docs
        start = self.token_base + self.tokens.rows
        doc_rows: list[DocRow] = []
        for offset, (doc, count) in enumerate(zip(batch, counts, strict=True)):
            sources = None
            if doc.sources is not None:
                src = as_array(doc.sources, doc.external_id)
                if src.dtype.kind not in "iu" or not check_sources(src, int(count)):
                    raise InvalidInput(
                        f"token sources do not describe the document's {count} vectors",
                        doc_id=doc.external_id,
                    )
                sources = np.ascontiguousarray(src, dtype=SOURCE_DTYPE).tobytes()
            doc_rows.append(
                DocRow(
                    doc_id=first_doc + offset,
                    external_id=doc.external_id,
                    text=doc.text,
                    metadata_json=doc.metadata_json,
                    token_start=start,
                    token_count=count,
                    deleted=bool(deleted[offset]) if deleted is not None else False,
                    sources=sources,
                )
            )
            start += count
        doc_ids = np.repeat(np.arange(first_doc, first_doc + len(batch)), counts)
        first = self.tokens.append(rows, doc_ids)
        if self._codes is not None:
            if codes is None:
                assert self._encode_codes is not None
                # the codes of what is stored (decoded), as a build adds what it reads back
                stored = rows.astype(np.float32) if self.codec is None else self.codec.decode(rows)
                codes = self._encode_codes(stored)
            self._codes.write(np.ascontiguousarray(codes, dtype=np.uint8).tobytes())
            self._codes.flush()
            os.fsync(self._codes.fileno())
        self.tokens.sync()
        record = None
        if input_digest is not None:
            record = BatchRecord(
                first_doc=first_doc,
                docs=len(batch),
                token_start=self.token_base + first,
                tokens=len(rows),
                input_digest=input_digest,
                rows_sha256=rows_digest(
                    np.ascontiguousarray(rows, dtype=self.tokens.dtype).tobytes(),
                    np.ascontiguousarray(doc_ids, dtype=DOC_DTYPE).tobytes(),
                ),
            )
        self.docs.insert_batch(doc_rows, self.generation, batch=record)
        self.n_docs += len(batch)

    def close_data(self) -> None:
        """Close and fsync the vector files (before a build reads them back)."""
        self.tokens.close()
        if self._codes is not None:
            self._codes.close()

    def finish(self) -> SegmentRecord:
        """Close every file, make the folder durable, and describe it for the manifest."""
        self.close_data()
        self.docs.finish(
            {"generation": str(self.generation), "segment": self.name},
            lexical_fields=self.lexical_fields,
            doc_base=self.doc_base,
        )
        fsync_file(self.folder / DOCS_NAME)
        files = {
            name: file_record(self.folder / name)
            for name in SEGMENT_FILES
            if (self.folder / name).exists()
        }
        fsync_dir(self.folder)
        return SegmentRecord(
            name=self.name,
            doc_base=self.doc_base,
            documents=self.n_docs,
            token_base=self.token_base,
            tokens=self.n_tokens,
            files=files,
        )

    def abort(self) -> None:
        """Throw the unfinished segment away."""
        with contextlib.suppress(Exception):
            self.docs.close()
        with contextlib.suppress(OSError, ValueError):
            self.close_data()
        shutil.rmtree(self.folder, ignore_errors=True)


_FINISH_FILES = (TOKEN_INDEX_NAME, TRAINED_NAME, CODES_NAME, CODEC_INDEX_NAME, PROJECTION_NAME)


def _undo_finish(folder: Path, file_name: str) -> None:
    """Put a journaled build's segment back as its batches left it, before finishing."""
    renamed = file_name == SCRATCH_NAME and not (folder / SCRATCH_NAME).exists()
    if renamed and (folder / TOKENS_NAME).exists():  # ``auto`` kept float16: renamed the scratch
        os.replace(folder / TOKENS_NAME, folder / SCRATCH_NAME)
    for name in (*_FINISH_FILES, *(vector_file(c) for c in CODECS)):
        if name != file_name and (folder / name).exists():
            (folder / name).unlink()
    fsync_dir(folder)


def _sound_prefix(
    folder: Path, file_name: str, dim: int, records: Sequence[BatchRecord]
) -> list[BatchRecord]:
    """The batch records, in order, up to the first whose stored bytes do not match."""
    width = dim * VECTOR_DTYPE.itemsize
    kept: list[BatchRecord] = []
    docs = tokens = 0
    with open(folder / file_name, "rb") as vec, open(folder / TOKEN_DOC_NAME, "rb") as ids:
        for r in records:
            if r.first_doc != docs or r.token_start != tokens:
                break
            vec.seek(r.token_start * width)
            ids.seek(r.token_start * DOC_DTYPE.itemsize)
            vector_bytes = vec.read(r.tokens * width)
            id_bytes = ids.read(r.tokens * DOC_DTYPE.itemsize)
            if rows_digest(vector_bytes, id_bytes) != r.rows_sha256:
                break
            kept.append(r)
            docs += r.docs
            tokens += r.tokens
    return kept
