"""Building a new index in a folder: the build's commit protocol.

A build takes the folder's write lock (a second writer gets
:class:`IndexLocked` at once), sweeps what dead writers left behind, and writes
one new segment folder (:mod:`storage.segment`) beside what is there: each
batch appends its token vectors and document ids and fsyncs them, then commits
its document rows in one SQLite transaction. :meth:`StoreBuilder.finish` trains
and fills the FAISS token index from the stored vectors, checksums every data
file, and commits a generation naming only the new segment
(:mod:`storage.commit`). A build that fails or is killed at any instant
leaves the folder holding the index it held before (or none, for a first
build); the next writer removes its remains.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import faiss
import numpy as np

from storage.commit import commit_generation, next_number
from storage.errors import InvalidInput, StorageError
from storage.generations import CURRENT_NAME, read_pointer, remove_debris
from storage.lock import LOCK_NAME, WriteLock
from storage.manifest import CODEC, MANIFEST_NAME, FileRecord, Manifest
from storage.segment import TRAINED_NAME, PendingDoc, SegmentWriter, check_vectors
from storage.token_index import (
    TOKEN_INDEX_NAME,
    TokenIndex,
    TokenIndexPlan,
    plan_token_index,
    takes_codes,
)
from storage.vectors import TokenReader

__all__ = ["PendingDoc", "StoreBuilder", "check_vectors", "write_first_segment_index"]


def write_first_segment_index(
    segment: SegmentWriter,
    plan: TokenIndexPlan,
    progress: Callable[[int], None] | None = None,
    *,
    trained: faiss.Index | None = None,
) -> None:
    """Build the FAISS files of a build's or a compaction's segment from its stored
    vectors: the index over its rows, and for a trained kind the emptied copy
    later adds encode with (``trained``: reuse that trained index, no training)."""
    segment.close_data()
    reader = TokenReader(segment.folder, segment.dim, segment.n_tokens)
    try:
        token_index = TokenIndex.build(plan, reader, progress, trained=trained)
    finally:
        reader.close()
    token_index.save(segment.folder / TOKEN_INDEX_NAME)
    if takes_codes(plan):
        TokenIndex.save_index(token_index.trained_copy(), segment.folder / TRAINED_NAME)


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
    """Writes a new index at ``target`` (a first build, or a rebuild with ``overwrite``);
    use as a context manager, so that a failure throws the unfinished work away and
    frees the lock."""

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
        self.segment: SegmentWriter | None = None
        try:
            current, committed = self._current_generation()
            if current is not None and not overwrite:
                raise StorageError(
                    f"{self.target} already holds an index; pass overwrite to rebuild it"
                )
            # a rebuild keeps the old index whole until its commit: sweep only debris
            remove_debris(self.target, current, committed=committed)
            self.generation = next_number(self.target, current)
            self.segment = SegmentWriter(
                self.target,
                self.generation,
                dim,
                doc_base=0,
                token_base=0,
                generation=self.generation,
            )
        except BaseException:
            self._release()
            raise
        self.dim = dim

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
        """Store one batch: all of it, or (on any error) none of it."""
        assert self.segment is not None
        checked = [check_vectors(d.vectors, self.dim, doc_id=d.external_id) for d in batch]
        existing = self.segment.docs.first_existing([d.external_id for d in batch])
        if existing is not None:
            raise InvalidInput("duplicate document id", doc_id=existing)
        self.segment.add(batch, checked)

    @property
    def n_docs(self) -> int:
        return self.segment.n_docs if self.segment is not None else 0

    @property
    def n_tokens(self) -> int:
        return self.segment.n_tokens if self.segment is not None else 0

    def finish(
        self,
        *,
        encoder_spec: Mapping[str, Any],
        index_kind: str = "auto",
        index_options: Mapping[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
        plan: TokenIndexPlan | None = None,
        trained: faiss.Index | None = None,
    ) -> Manifest:
        """Build the token index, write the manifest and commit the generation.

        ``plan`` and ``trained`` (another index's plan and its empty trained FAISS
        index) replace ``index_kind`` and training: a fresh build with the quantizer
        of another index.
        """
        assert self.segment is not None
        if plan is None:
            plan = plan_token_index(
                index_kind, self.n_tokens, self.dim, **dict(index_options or {})
            )
        write_first_segment_index(self.segment, plan, progress, trained=trained)
        record = self.segment.finish()
        manifest = Manifest(
            generation=self.generation,
            encoder=dict(encoder_spec),
            dim=self.dim,
            token_index=plan.to_dict(),
            codec=CODEC,
            documents=record.documents,
            live_documents=record.documents,
            tokens=record.tokens,
            segments=[record],
            deleted=FileRecord(bytes=0, sha256_blocks=[]),
        )
        manifest = commit_generation(self.target, manifest, np.zeros(0, np.int64))
        self.segment = None
        self.lock.release()
        return manifest

    def abort(self) -> None:
        """Throw the unfinished segment away and free the lock."""
        if self.segment is not None:
            self.segment.abort()
            self.segment = None
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
