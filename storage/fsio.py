"""Durable file operations: atomic replace, directory fsync, block checksums.

Every file the index replaces goes through :func:`atomic_write_bytes` or
:func:`atomic_replace` (write a temporary file, fsync it, rename it over the
target, fsync the directory), so a crash leaves either the old or the new file,
never a torn one. Checksums are SHA-256 over fixed-size blocks, so an
append-only file only re-hashes its last block when it grows, and verification
runs the blocks in parallel threads (hashlib releases the GIL).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sie_index.errors import CorruptIndex

__all__ = [
    "BLOCK_SIZE",
    "atomic_replace",
    "atomic_write_bytes",
    "block_checksums",
    "fsync_dir",
    "fsync_file",
    "verify_checksums",
]

BLOCK_SIZE = 64 * 1024 * 1024
TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def atomic_replace(target: Path, write: Callable[[Path], None]) -> None:
    """Write ``target`` through ``write(tmp_path)``, then fsync and rename it into place."""
    tmp = target.with_name(target.name + TMP_SUFFIX)
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Atomically replace ``target`` with ``data``."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_replace(target, write)


def _hash_block(path: Path, index: int, length: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(index * BLOCK_SIZE)
        data = fh.read(length)
    if len(data) != length:
        raise CorruptIndex(f"{path.name} is shorter than the manifest says")
    return hashlib.sha256(data).hexdigest()


def _block_lengths(size: int) -> list[int]:
    full, rest = divmod(size, BLOCK_SIZE)
    return [BLOCK_SIZE] * full + ([rest] if rest or size == 0 else [])


def block_checksums(path: Path, size: int | None = None) -> list[str]:
    """SHA-256 of each ``BLOCK_SIZE`` block of the first ``size`` bytes of ``path``."""
    if size is None:
        size = path.stat().st_size
    lengths = _block_lengths(size)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda a: _hash_block(path, *a), enumerate(lengths)))


def verify_checksums(path: Path, size: int, expected: list[str]) -> None:
    """Raise :class:`CorruptIndex` unless ``path`` holds ``size`` bytes hashing to ``expected``."""
    if not path.exists():
        raise CorruptIndex(f"{path.name} is missing from the index folder {path.parent}")
    actual_size = path.stat().st_size
    if actual_size < size:
        raise CorruptIndex(
            f"{path.name} holds {actual_size} bytes, the manifest says {size}: it was truncated"
        )
    if block_checksums(path, size) != expected:
        raise CorruptIndex(f"{path.name} does not match its checksum in the manifest")
