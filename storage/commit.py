"""Committing a generation: the one step that makes a writer's work the index.

Every writer (a build, an add, a delete, a compaction) ends here, holding the
write lock, with any new segment folder already complete and fsynced:

1. a new generation folder ``gen-N`` gets its ``lease`` file, its
   ``deleted.i64`` and its ``manifest.json`` (each fsynced, then the folder);
2. the index folder is fsynced, so the new folders' names are durable;
3. ``CURRENT`` is replaced atomically to name ``gen-N`` (the commit point);
4. the sweep removes what no one needs any more: old generations no reader
   holds, and segments no remaining generation names.

A writer killed before step 3 leaves the old index, and folders the next writer
sweeps; killed after it, the new index. Failpoints (:mod:`storage.failpoints`)
stop the process at each step for the crash tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from storage.deletions import encode_deleted
from storage.errors import InvalidInput, StorageError
from storage.failpoints import failpoint
from storage.fsio import block_checksums_of, fsync_dir, sha256_hex
from storage.generations import (
    Pointer,
    create_lease_file,
    gen_dirname,
    generation_numbers,
    remove_debris,
    write_pointer,
)
from storage.manifest import DELETED_NAME, MANIFEST_NAME, FileRecord, Manifest
from storage.segment import segment_numbers
from storage.snapshot import (
    MAX_MANIFEST_BYTES,
    StoreSnapshot,
    check_generation,
    parse_manifest,
)

__all__ = ["commit_generation", "next_number"]


def next_number(target: Path, current: int | None) -> int:
    """A generation (and segment) number no folder in ``target`` uses yet."""
    return max([current or 0, *generation_numbers(target), *segment_numbers(target)]) + 1


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _checked_bytes(manifest: Manifest, deleted: bytes, where: str) -> bytes:
    """The manifest's bytes, once the reader's own checks pass on them (else
    :class:`InvalidInput`: a value the caller gave is one no reader would accept)."""
    try:
        raw = manifest.to_bytes()
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"refusing to commit {where}: a recorded value is not JSON: {exc}"
        ) from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidInput(
            f"refusing to commit {where}: its manifest would take {len(raw)} bytes, more than "
            f"a reader reads ({MAX_MANIFEST_BYTES}); a recorded value is far too large"
        )
    try:
        check_generation(parse_manifest(raw, where), deleted, where)
    except StorageError as exc:
        raise InvalidInput(f"refusing to commit what no reader would open: {exc}") from exc
    return raw


def commit_generation(
    target: Path, manifest: Manifest, deleted: np.ndarray, *, open_first: bool = False
) -> Manifest:
    """Write generation ``manifest.generation`` with the deleted ids ``deleted`` and
    commit it; returns the manifest as committed (with its ``deleted`` record).

    Nothing is written unless the reader's checks (:func:`storage.snapshot.check_generation`)
    pass on what would be committed. With ``open_first`` (a build or a compaction,
    whose new segment replaces every old one) the new generation is opened as a
    reader opens it before ``CURRENT`` names it, so the index it replaces is swept
    only once its successor has opened.
    """
    work = target / gen_dirname(manifest.generation)
    data = encode_deleted(deleted)
    manifest = dataclasses.replace(
        manifest,
        deleted=FileRecord(bytes=len(data), sha256_blocks=block_checksums_of(data)),
        live_documents=manifest.documents - len(data) // 8,
    )
    raw = _checked_bytes(manifest, data, str(work))
    work.mkdir()
    create_lease_file(work)
    _write_synced(work / DELETED_NAME, data)
    _write_synced(work / MANIFEST_NAME, raw)
    fsync_dir(work)
    fsync_dir(target)
    pointer = Pointer(generation=manifest.generation, manifest_sha256=sha256_hex(raw))
    if open_first:
        try:
            StoreSnapshot.open_pointer(target, pointer).close()
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    failpoint("commit:before-pointer")
    write_pointer(target, pointer)
    failpoint("commit:before-sweep")
    # committed: a sweep that fails (a folder it may not read) leaves debris for the
    # next writer, never an error for a change that has happened
    with contextlib.suppress(OSError):
        remove_debris(
            target,
            manifest.generation,
            committed=True,
            keep_segments={seg.name for seg in manifest.segments},
        )
    return manifest
