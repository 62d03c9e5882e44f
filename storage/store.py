"""Building an index folder and opening it again: the commit protocol.

A build writes into a hidden work folder beside the target
(``.NAME.build-PID-XXXX``): each batch appends its token vectors and document
ids and fsyncs them, then commits its document rows in one SQLite transaction.
:meth:`StoreBuilder.finish` trains and fills the FAISS token index from the
stored vectors, checksums every data file, writes ``manifest.json`` last, and
renames the work folder into place. So a build that fails or is killed leaves
the target as it was (absent, or the previous index), never half an index.

:meth:`StoreSnapshot.open` reads the manifest, verifies the checksums before
any file reaches FAISS, checks the document spans against the counts, and maps
the committed prefix of the vector files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from sie_index.errors import CorruptIndex, DimensionMismatch, InvalidInput, StorageError
from storage.docstore import DOCS_NAME, DocRow, DocSpans, DocStore
from storage.fsio import block_checksums, fsync_dir, verify_checksums
from storage.manifest import MANIFEST_NAME, FileRecord, Manifest
from storage.token_index import TOKEN_INDEX_NAME, TokenIndex, TokenIndexPlan, plan_token_index
from storage.vectors import TOKEN_DOC_NAME, TOKENS_NAME, TokenReader, TokenWriter

__all__ = ["CODEC", "PendingDoc", "StoreBuilder", "StoreSnapshot", "check_vectors"]

CODEC = "f16"
F16_MAX = 65504.0


@dataclass(frozen=True, kw_only=True)
class PendingDoc:
    """A document and its token vectors, on the way into the store."""

    external_id: str
    text: str | None
    metadata: Mapping[str, Any] | None
    vectors: np.ndarray


def check_vectors(vectors: Any, dim: int, *, doc_id: str | None = None) -> np.ndarray:
    """Return ``vectors`` as float32 ``[n, dim]`` or raise a typed error naming the document.

    Rejected: not a 2-D numeric array, zero rows, another dimension, NaN or Inf,
    an all-zero row, and values float16 cannot hold.
    """
    try:
        arr = np.asarray(vectors)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"vectors are not an array: {exc}", doc_id=doc_id) from exc
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


def _file_record(path: Path) -> FileRecord:
    size = path.stat().st_size
    return FileRecord(bytes=size, sha256_blocks=block_checksums(path, size))


class StoreBuilder:
    """Writes a new index folder; use as a context manager so a failure cleans up."""

    def __init__(self, target: Path, dim: int, *, overwrite: bool = False) -> None:
        self.target = Path(target)
        if dim <= 0:
            raise InvalidInput(f"dimension must be positive, got {dim}")
        if self.target.exists():
            is_index = (self.target / MANIFEST_NAME).is_file()
            if not self.target.is_dir() or (any(self.target.iterdir()) and not is_index):
                raise StorageError(
                    f"{self.target} exists and is not a sie-index index; refusing to replace it"
                )
            if is_index and not overwrite:
                raise StorageError(
                    f"{self.target} already holds an index; pass overwrite to rebuild"
                )
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.work = self.target.parent / (
            f".{self.target.name}.build-{os.getpid()}-{secrets.token_hex(4)}"
        )
        self.work.mkdir()
        self.docs = DocStore.create(self.work / DOCS_NAME)
        self.tokens = TokenWriter(self.work, dim)
        self.n_docs = 0
        self.generation = 1

    def add(self, batch: Sequence[PendingDoc]) -> None:
        """Commit one batch: all of it, or (on any error) none of it."""
        checked = [check_vectors(d.vectors, self.dim, doc_id=d.external_id) for d in batch]
        existing = self.docs.first_existing([d.external_id for d in batch])
        if existing is not None:
            raise InvalidInput("duplicate document id", doc_id=existing)
        rows: list[DocRow] = []
        start = self.tokens.rows
        for offset, (doc, vecs) in enumerate(zip(batch, checked, strict=True)):
            rows.append(
                DocRow(
                    doc_id=self.n_docs + offset,
                    external_id=doc.external_id,
                    text=doc.text,
                    metadata=doc.metadata,
                    token_start=start,
                    token_count=len(vecs),
                )
            )
            start += len(vecs)
        if checked:
            doc_ids = np.repeat(
                np.arange(self.n_docs, self.n_docs + len(batch)), [len(v) for v in checked]
            )
            self.tokens.append(np.concatenate(checked), doc_ids)
            self.tokens.sync()
        self.docs.insert_batch(rows, self.generation)
        self.n_docs += len(batch)

    @property
    def n_tokens(self) -> int:
        return self.tokens.rows

    def finish(
        self,
        *,
        encoder_spec: Mapping[str, Any],
        index_kind: str = "auto",
        index_options: Mapping[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Manifest:
        """Build the token index, write the manifest and move the folder into place."""
        self.tokens.close()
        reader = TokenReader(self.work, self.dim, self.n_tokens)
        plan = plan_token_index(index_kind, self.n_tokens, self.dim, **dict(index_options or {}))
        token_index = TokenIndex.build(plan, reader, progress)
        token_index.save(self.work / TOKEN_INDEX_NAME)
        del token_index, reader
        files = {
            name: _file_record(self.work / name)
            for name in (TOKENS_NAME, TOKEN_DOC_NAME, TOKEN_INDEX_NAME)
        }
        manifest = Manifest(
            generation=self.generation,
            encoder=dict(encoder_spec),
            dim=self.dim,
            token_index=plan.to_dict(),
            codec=CODEC,
            documents=self.n_docs,
            tokens=self.n_tokens,
            files=files,
        )
        self.docs.set_meta({"generation": str(self.generation)})
        self.docs.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.docs.close()
        manifest.write(self.work)
        self._move_into_place()
        return manifest

    def _move_into_place(self) -> None:
        trash: Path | None = None
        if self.target.exists():
            trash = self.target.parent / f".{self.target.name}.old-{secrets.token_hex(4)}"
            os.replace(self.target, trash)
        os.replace(self.work, self.target)
        fsync_dir(self.target.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def abort(self) -> None:
        """Throw the work folder away."""
        self.docs.close()
        with contextlib.suppress(OSError, ValueError):
            self.tokens.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> StoreBuilder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


class StoreSnapshot:
    """A committed index folder, opened read-only and verified."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        docs: DocStore,
        tokens: TokenReader,
        token_index: TokenIndex,
        spans: DocSpans,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.docs = docs
        self.tokens = tokens
        self.token_index = token_index
        self.spans = spans

    @classmethod
    def open(cls, folder: Path, *, verify_vectors: bool = True) -> StoreSnapshot:
        """Open ``folder``; checksums of the FAISS file and the token map are always verified,
        those of the (large) vector file unless ``verify_vectors`` is False."""
        folder = Path(folder)
        manifest = Manifest.read(folder)
        if manifest.codec != CODEC:
            raise CorruptIndex(f"{folder}: unknown vector codec {manifest.codec!r}")
        for name in (TOKEN_INDEX_NAME, TOKEN_DOC_NAME, TOKENS_NAME):
            record = manifest.files.get(name)
            if record is None:
                raise CorruptIndex(f"{folder}: the manifest has no checksum for {name}")
            if name == TOKENS_NAME and not verify_vectors:
                continue
            verify_checksums(folder / name, record.bytes, record.sha256_blocks)
        docs = DocStore.open(folder / DOCS_NAME)
        spans = docs.spans(limit_doc_id=manifest.documents)
        cls._check_spans(folder, manifest, spans)
        tokens = TokenReader(folder, manifest.dim, manifest.tokens)
        plan = TokenIndexPlan.from_dict(manifest.token_index)
        token_index = TokenIndex.load(folder / TOKEN_INDEX_NAME, plan, manifest.tokens)
        if token_index.index.d != manifest.dim:
            raise CorruptIndex(f"{folder}: {TOKEN_INDEX_NAME} has dimension {token_index.index.d}")
        return cls(folder, manifest, docs, tokens, token_index, spans)

    @staticmethod
    def _check_spans(folder: Path, manifest: Manifest, spans: DocSpans) -> None:
        n = len(spans.token_start)
        if n != manifest.documents:
            raise CorruptIndex(
                f"{folder}: {DOCS_NAME} holds {n} committed documents, the manifest says "
                f"{manifest.documents}"
            )
        ends = spans.token_start + spans.token_count
        contiguous = n == 0 or (
            spans.token_start[0] == 0 and np.array_equal(spans.token_start[1:], ends[:-1])
        )
        total = int(ends[-1]) if n else 0
        if not contiguous or total != manifest.tokens or (spans.token_count <= 0).any():
            raise CorruptIndex(f"{folder}: document token spans disagree with the token count")

    def close(self) -> None:
        self.docs.close()
        self.tokens.close()
