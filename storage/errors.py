"""The errors of the on-disk layer, and the root of every sie-index error.

They live here, at the lowest layer, so ``storage`` imports nothing from
``sie_index``; :mod:`sie_index.errors` re-exports them next to the encoder
errors and draws the whole tree. Lower libraries' errors (SQLite, FAISS, OS
reads of index files) are mapped to these where ``storage`` calls them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

__all__ = [
    "CorruptIndex",
    "DimensionMismatch",
    "FormatVersionMismatch",
    "IndexClosed",
    "IndexLocked",
    "InvalidInput",
    "NotAnIndex",
    "ReadOnlyIndex",
    "SieIndexError",
    "StorageError",
    "StorageFull",
    "TooManyOpenFiles",
    "mapped_os_errors",
    "read_failure",
    "typed_os_errors",
]


class SieIndexError(Exception):
    """Base class of every error raised by sie-index."""


class StorageError(SieIndexError):
    """The on-disk index cannot be used as asked."""


class NotAnIndex(StorageError):
    """The folder does not hold a committed sie-index index."""


class FormatVersionMismatch(StorageError):
    """The index was written with a format version this release cannot read."""


class CorruptIndex(StorageError):
    """A file of the index is damaged, truncated, or disagrees with the manifest."""


class IndexLocked(StorageError):
    """Another writer already holds the index's write lock."""


class DimensionMismatch(StorageError):
    """Vectors, or a query encoder, do not have the index's dimension."""


class StorageFull(StorageError):
    """The disk or quota is full; the change was not committed and the index is as it was."""


class ReadOnlyIndex(StorageError):
    """The index's folder cannot be written (a read-only filesystem, or no permission)."""


class TooManyOpenFiles(StorageError):
    """The process has no file descriptor left (EMFILE / ENFILE); the index is not damaged."""


class IndexClosed(StorageError):
    """The index was closed; open it again to use it."""


_BY_ERRNO: dict[int, type[StorageError]] = {
    errno.ENOSPC: StorageFull,
    errno.EDQUOT: StorageFull,
    errno.EROFS: ReadOnlyIndex,
    errno.EACCES: ReadOnlyIndex,
    errno.EPERM: ReadOnlyIndex,
    errno.EMFILE: TooManyOpenFiles,
    errno.ENFILE: TooManyOpenFiles,
}
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_CANTOPEN = 13, 8, 14
_FAISS_MESSAGES = {  # FAISS reports a failed write as a RuntimeError with the OS's text
    os.strerror(errno.ENOSPC): StorageFull,
    os.strerror(errno.EROFS): ReadOnlyIndex,
    os.strerror(errno.EACCES): ReadOnlyIndex,
    os.strerror(errno.EMFILE): TooManyOpenFiles,
}


def _out_of_descriptors() -> bool:
    """Whether this process can open no more files (SQLite says only "unable to open")."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return False


def _resource_error(exc: BaseException) -> type[StorageError] | None:
    """The typed error for an OS, SQLite or FAISS failure caused by the machine's
    resources (space, permissions, descriptors), or None for anything else."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return _BY_ERRNO.get(exc.errno)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            return StorageFull
        if code == _SQLITE_READONLY:
            return ReadOnlyIndex
        if code == _SQLITE_CANTOPEN and _out_of_descriptors():
            return TooManyOpenFiles
        return None
    if isinstance(exc, RuntimeError):
        text = str(exc)
        for message, kind in _FAISS_MESSAGES.items():
            if message in text:
                return kind
    return None


def read_failure(exc: BaseException, message: str) -> StorageError:
    """The error for a failed read of an index file: a resource the process lacks
    (descriptors, say) is that typed error, since the file is fine; anything else
    means the file is damaged (:class:`CorruptIndex`)."""
    kind = _resource_error(exc) or CorruptIndex
    return kind(message)


@contextlib.contextmanager
def mapped_os_errors(where: str) -> Iterator[None]:
    """Turn a full disk, a read-only folder or exhausted descriptors, as the OS, SQLite
    or FAISS report them, into :class:`StorageFull`, :class:`ReadOnlyIndex` or
    :class:`TooManyOpenFiles` naming ``where``. Writers run every change inside it;
    their own rollback has run by the time the error leaves."""
    try:
        yield
    except SieIndexError:
        raise
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        kind = _resource_error(exc)
        if kind is None:
            raise
        raise kind(f"{where}: {exc}") from exc


class InvalidInput(SieIndexError, ValueError):
    """Bad input from the user, with where it was found.

    ``source`` is the file (or another name for where the input came from),
    ``line`` the 1-based line number and ``doc_id`` the document's external id,
    each when known. The message names all that are known.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        doc_id: str | None = None,
    ) -> None:
        self.reason = message
        self.source = source
        self.line = line
        self.doc_id = doc_id
        where = []
        if source is not None:
            where.append(f"{source}" + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if doc_id is not None:
            where.append(f"document {doc_id!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class _HasTarget(Protocol):
    target: Path


_W = TypeVar("_W", bound=_HasTarget)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def typed_os_errors(
    method: Callable[Concatenate[_W, _P], _R],
) -> Callable[Concatenate[_W, _P], _R]:
    """A writer method run inside :func:`mapped_os_errors`, naming the writer's folder."""

    @functools.wraps(method)
    def wrapper(self: _W, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with mapped_os_errors(str(self.target)):
            return method(self, *args, **kwargs)

    return wrapper
