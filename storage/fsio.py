"""Durable file operations: atomic replace, directory fsync, block checksums,
and reads relative to a directory descriptor.

A file that replaces another goes through :func:`atomic_replace` (write a
temporary file, fsync it, rename it over the target, fsync the directory), so a
crash leaves either the old or the new file, never a torn one. Checksums are
SHA-256 over fixed-size blocks, so a reader can verify a large file block by
block, the first time it reads each block, and hashing runs the blocks in
parallel threads (hashlib releases the GIL).

Readers open the files of one generation through the generation folder's
descriptor (:func:`open_at`, :func:`read_at`), each file once, so what they read
is what they verified, whatever is renamed on disk afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from storage.errors import CorruptIndex, read_failure

__all__ = [
    "BLOCK_SIZE",
    "VerifiedBlocks",
    "atomic_replace",
    "block_checksums",
    "block_checksums_of",
    "block_lengths",
    "fsync_dir",
    "fsync_file",
    "open_at",
    "read_at",
    "sha256_hex",
    "verify_block",
    "verify_bytes",
]

BLOCK_SIZE = 16 * 1024 * 1024
TMP_SUFFIX = ".tmp"


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sealed_json(body: Mapping[str, Any]) -> bytes:
    """``body`` as one line of canonical JSON carrying a SHA-256 of itself (the shard
    map, a build's journal): damage to any byte fails :func:`unseal_json`'s caller's
    re-encoding check."""
    digest = sha256_hex(json.dumps(body, sort_keys=True).encode())
    return (json.dumps({**body, "sha256": digest}, sort_keys=True) + "\n").encode()


def unseal_json(data: bytes, where: str, keys: set[str], what: str) -> dict[str, Any]:
    """The object :func:`sealed_json` wrote, with exactly ``keys`` (and its checksum),
    or :class:`CorruptIndex` naming ``where``. The caller checks the values, then
    that re-sealing them gives ``data`` back (which checks the checksum too)."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptIndex(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) != keys | {"sha256"}:
        raise CorruptIndex(f"{where} does not hold {what}")
    return raw


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def block_lengths(size: int) -> list[int]:
    """Lengths of the ``BLOCK_SIZE`` blocks of a ``size``-byte file (one empty block if 0)."""
    full, rest = divmod(size, BLOCK_SIZE)
    return [BLOCK_SIZE] * full + ([rest] if rest or size == 0 else [])


def _hash_block(path: Path, index: int, length: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(index * BLOCK_SIZE)
        data = fh.read(length)
    if len(data) != length:
        raise CorruptIndex(f"{path.name} is shorter than the manifest says")
    return sha256_hex(data)


def block_checksums(path: Path, size: int | None = None) -> list[str]:
    """SHA-256 of each ``BLOCK_SIZE`` block of the first ``size`` bytes of ``path``."""
    if size is None:
        size = path.stat().st_size
    lengths = block_lengths(size)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda a: _hash_block(path, *a), enumerate(lengths)))


def block_checksums_of(data: bytes) -> list[str]:
    """SHA-256 of each ``BLOCK_SIZE`` block of ``data`` (what :func:`verify_bytes` checks)."""
    return [
        sha256_hex(data[i * BLOCK_SIZE : i * BLOCK_SIZE + n])
        for i, n in enumerate(block_lengths(len(data)))
    ]


def verify_bytes(data: bytes | memoryview, expected: Sequence[str], name: str) -> None:
    """Raise :class:`CorruptIndex` naming ``name`` unless ``data`` hashes to ``expected``."""
    view = memoryview(data)
    lengths = block_lengths(len(view))
    if len(lengths) != len(expected):
        raise CorruptIndex(f"{name} has {len(view)} bytes, which its checksums do not cover")
    for i, length in enumerate(lengths):
        if sha256_hex(view[i * BLOCK_SIZE : i * BLOCK_SIZE + length]) != expected[i]:
            raise CorruptIndex(f"{name} does not match its checksum (block {i})")


def verify_block(fd: int, index: int, length: int, expected: str, name: str) -> bytes:
    """Read block ``index`` of the open file ``fd``, check it against ``expected`` and
    return it."""
    data = os.pread(fd, length, index * BLOCK_SIZE)
    if len(data) != length:
        raise CorruptIndex(f"{name} ends inside block {index}: it was truncated")
    if sha256_hex(data) != expected:
        raise CorruptIndex(f"{name} does not match its checksum (block {index})")
    return data


class VerifiedBlocks:
    """A file read front to back in ``BLOCK_SIZE`` blocks, each checked against its
    recorded SHA-256 before any of its bytes is handed on (:meth:`read`), so a parser
    (FAISS's reader) never sees a byte that was not verified, and the file is never
    whole in memory: reading it whole, then FAISS copying it into its own reader,
    then building the index held three times its size at once (2.5 GB for the
    730k-document index's token index). The file's size is checked against the
    record at the start; :meth:`finish` verifies the blocks the parser left unread
    (bytes after what FAISS parses are accepted when their checksums hold, as a
    whole-file read accepted them)."""

    def __init__(
        self, dir_fd: int, name: str, record_bytes: int, blocks: Sequence[str], where: str
    ):
        self.name = f"{where}/{name}"
        self._expected = list(blocks)
        self._lengths = block_lengths(record_bytes)
        if len(self._lengths) != len(self._expected):
            raise CorruptIndex(f"{self.name}: its checksums do not cover {record_bytes} bytes")
        self._fd = open_at(dir_fd, name, where)
        self._block = 0  # the next block to load
        self._buffer = memoryview(b"")
        self._at = 0  # position in the buffer
        self.error: Exception | None = None
        """What stopped a read, kept for the caller: the parser sees only an empty read."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            self.close()
            raise read_failure(exc, f"{self.name} cannot be read: {exc}") from exc
        if size != record_bytes:
            self.close()
            cut = "was truncated: it " if size < record_bytes else ""
            raise CorruptIndex(
                f"{self.name} {cut}holds {size} bytes, the manifest says {record_bytes}"
            )

    def _load(self) -> bool:
        if self._block >= len(self._lengths):
            return False
        i = self._block
        try:
            data = verify_block(self._fd, i, self._lengths[i], self._expected[i], self.name)
        except OSError as exc:
            raise read_failure(exc, f"{self.name} cannot be read: {exc}") from exc
        self._buffer, self._at, self._block = memoryview(data), 0, i + 1
        return True

    def read(self, n: int) -> bytes:
        """Up to ``n`` verified bytes (none at the end, or after an error: see
        :attr:`error`)."""
        if self.error is not None:
            return b""
        try:
            while self._at >= len(self._buffer):
                if not self._load():
                    return b""
        except Exception as exc:  # handed to the caller through ``error``
            self.error = exc
            return b""
        out = bytes(self._buffer[self._at : self._at + n])
        self._at += len(out)
        return out

    def finish(self) -> None:
        """Verify the blocks the parser did not read (it must have stopped at the end)."""
        if self.error is not None:
            raise self.error
        while self._load():
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_at(dir_fd: int, name: str, where: str) -> int:
    """Open ``name`` read-only in the folder ``dir_fd``; a missing file is :class:`CorruptIndex`."""
    try:
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise CorruptIndex(f"{name} is missing from the index folder {where}") from exc
    except OSError as exc:
        raise read_failure(exc, f"{name} in {where} cannot be opened: {exc}") from exc


def read_at(dir_fd: int, name: str, where: str, *, max_bytes: int | None = None) -> bytes:
    """The whole of ``name`` in the folder ``dir_fd``, read once."""
    fd = open_at(dir_fd, name, where)
    try:
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise CorruptIndex(f"{name} in {where} holds {size} bytes, more than it can")
        chunks = []
        while True:
            chunk = os.read(fd, max(size, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise read_failure(exc, f"{name} in {where} cannot be read: {exc}") from exc
    finally:
        os.close(fd)
