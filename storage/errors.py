"""The errors of the on-disk layer, and the root of every sie-index error.

They live here, at the lowest layer, so ``storage`` imports nothing from
``sie_index``; :mod:`sie_index.errors` re-exports them next to the encoder
errors and draws the whole tree. Lower libraries' errors (SQLite, FAISS, OS
reads of index files) are mapped to these where ``storage`` calls them.
"""

from __future__ import annotations

__all__ = [
    "CorruptIndex",
    "DimensionMismatch",
    "FormatVersionMismatch",
    "IndexLocked",
    "InvalidInput",
    "NotAnIndex",
    "SieIndexError",
    "StorageError",
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
