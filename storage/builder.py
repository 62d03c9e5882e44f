"""Building a new generation of an index folder: the build's commit protocol.

A build takes the folder's write lock (a second writer gets
:class:`IndexLocked` at once), sweeps what dead writers left behind, and writes
a new generation folder ``gen-N`` beside the current one: each batch appends
its token vectors and document ids and fsyncs them, then commits its document
rows in one SQLite transaction. :meth:`StoreBuilder.finish` trains and fills
the FAISS token index from the stored vectors, checksums every data file,
writes the manifest, and commits by replacing ``CURRENT`` atomically
(:mod:`storage.generations`). A build that fails or is killed at any instant
leaves the folder holding the index it held before (or none, for a first
build); the next writer removes its remains.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from storage.docstore import DOCS_NAME, DocRow, DocWriter
from storage.errors import DimensionMismatch, InvalidInput, StorageError
from storage.failpoints import failpoint
from storage.fsio import block_checksums, fsync_dir, fsync_file, sha256_hex
from storage.generations import (
    CURRENT_NAME,
    Pointer,
    create_lease_file,
    gen_dirname,
    generation_numbers,
    read_pointer,
    remove_debris,
    write_pointer,
)
from storage.lock import LOCK_NAME, WriteLock
from storage.manifest import CODEC, MANIFEST_NAME, FileRecord, Manifest
from storage.token_index import TOKEN_INDEX_NAME, TokenIndex, plan_token_index
from storage.vectors import TOKEN_DOC_NAME, TOKENS_NAME, TokenReader, TokenWriter

__all__ = ["DATA_FILES", "PendingDoc", "StoreBuilder", "check_vectors"]

F16_MAX = 65504.0
DATA_FILES = (TOKENS_NAME, TOKEN_DOC_NAME, TOKEN_INDEX_NAME)
"""The files of a generation that the manifest checksums block by block."""


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


def _claim_folder(target: Path) -> bool:
    """Make sure ``target`` is a folder sie-index may write; True when this call made it."""
    if target.exists() and not target.is_dir():
        raise StorageError(f"{target} exists and is not a folder; refusing to replace it")
    try:
        target.mkdir(parents=True)
        return True
    except FileExistsError:
        pass
    names = set(os.listdir(target))
    ours = {CURRENT_NAME, LOCK_NAME, MANIFEST_NAME} & names
    if names and not ours:
        raise StorageError(
            f"{target} exists and is not a sie-index index; refusing to write into it"
        )
    return False


class StoreBuilder:
    """Writes a new generation of the index at ``target``; use as a context manager,
    so that a failure throws the unfinished generation away and frees the lock."""

    def __init__(self, target: Path, dim: int, *, overwrite: bool = False) -> None:
        self.target = Path(target)
        if dim <= 0:
            raise InvalidInput(f"dimension must be positive, got {dim}")
        self._made_folder = _claim_folder(self.target)
        self.lock = WriteLock(self.target)
        try:
            self.lock.acquire()
        except BaseException:
            self._drop_made_folder()
            raise
        try:
            current, committed = self._current_generation()
            if current is not None and not overwrite:
                raise StorageError(
                    f"{self.target} already holds an index; pass overwrite to rebuild it"
                )
            remove_debris(self.target, current, committed=committed)
            self.generation = max([current or 0, *generation_numbers(self.target)]) + 1
            self.work = self.target / gen_dirname(self.generation)
            self.work.mkdir()
            create_lease_file(self.work)
            self.docs = DocWriter.create(self.work / DOCS_NAME)
            self.tokens = TokenWriter(self.work, dim)
        except BaseException:
            self._release()
            raise
        self.dim = dim
        self.n_docs = 0

    def _current_generation(self) -> tuple[int | None, bool]:
        """The committed generation, or None for no index; and whether ``CURRENT`` is sound.

        A format-1 index, or one whose pointer is damaged, counts as generation 0:
        it is an index (rebuilding it needs ``overwrite``), and it is replaced whole.
        """
        fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            pointer = read_pointer(fd, str(self.target))
        except StorageError:
            return 0, False
        finally:
            os.close(fd)
        if pointer is not None:
            return pointer.generation, True
        return (0 if (self.target / MANIFEST_NAME).exists() else None), False

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
        """Build the token index, write the manifest and commit the generation."""
        self.tokens.close()
        reader = TokenReader(self.work, self.dim, self.n_tokens)
        plan = plan_token_index(index_kind, self.n_tokens, self.dim, **dict(index_options or {}))
        token_index = TokenIndex.build(plan, reader, progress)
        token_index.save(self.work / TOKEN_INDEX_NAME)
        reader.close()
        del token_index, reader
        files = {name: _file_record(self.work / name) for name in DATA_FILES}
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
        self.docs.finish({"generation": str(self.generation)})
        fsync_file(self.work / DOCS_NAME)
        data = manifest.to_bytes()
        (self.work / MANIFEST_NAME).write_bytes(data)
        fsync_file(self.work / MANIFEST_NAME)
        fsync_dir(self.work)
        failpoint("commit:before-pointer")
        pointer = Pointer(generation=self.generation, manifest_sha256=sha256_hex(data))
        write_pointer(self.target, pointer)
        failpoint("commit:before-sweep")
        remove_debris(self.target, self.generation, committed=True)
        self.lock.release()
        return manifest

    def abort(self) -> None:
        """Throw the unfinished generation away and free the lock."""
        with contextlib.suppress(Exception):
            self.docs.close()
        with contextlib.suppress(OSError, ValueError):
            self.tokens.close()
        shutil.rmtree(self.work, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self.lock.held:
            self._drop_made_folder()
            self.lock.release()

    def _drop_made_folder(self) -> None:
        """A first build that failed leaves no folder behind (only its lock file was in it)."""
        if not self._made_folder:
            return
        names = set(os.listdir(self.target))
        if names <= {LOCK_NAME}:
            with contextlib.suppress(OSError):
                (self.target / LOCK_NAME).unlink()
                self.target.rmdir()

    def __enter__(self) -> StoreBuilder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self.lock.held:
            self.abort()
