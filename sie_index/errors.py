"""Every error sie-index raises, in one place.

The tree::

    SieIndexError
    ├── EncoderError                 an encoder could not produce valid vectors
    │   ├── EncoderUnavailable       the model or server cannot be reached or loaded
    │   ├── EncoderProtocolError     the encoder answered, but the answer is not valid
    │   └── EncoderMismatch          a query encoder is not the model the index was built with
    ├── StorageError                 the on-disk index cannot be used as asked
    │   ├── NotAnIndex               the folder holds no sie-index index
    │   ├── FormatVersionMismatch    the index was written by another format version
    │   ├── CorruptIndex             a file is damaged or disagrees with the manifest
    │   ├── IndexLocked              another writer holds the index
    │   └── DimensionMismatch        vectors or a query encoder of the wrong dimension
    └── InvalidInput (ValueError)    bad user input: corpus lines, ids, texts, vectors

Lower libraries' errors (FAISS, SQLite, json, torch) are mapped to these at the
boundary where they happen, with ``raise ... from``. This module imports nothing
from the rest of the project, so ``storage`` can use it without pulling in models.
"""

from __future__ import annotations

__all__ = [
    "CorruptIndex",
    "DimensionMismatch",
    "EncoderError",
    "EncoderMismatch",
    "EncoderProtocolError",
    "EncoderUnavailable",
    "FormatVersionMismatch",
    "IndexLocked",
    "InvalidInput",
    "NotAnIndex",
    "SieIndexError",
    "StorageError",
]


class SieIndexError(Exception):
    """Base class of every error raised by sie-index."""


class EncoderError(SieIndexError):
    """An encoder could not turn texts into valid multivectors."""


class EncoderUnavailable(EncoderError):
    """The encoder's model or server cannot be reached or loaded."""


class EncoderProtocolError(EncoderError):
    """The encoder answered, but its answer breaks the contract (count, dims, values)."""


class EncoderMismatch(EncoderError):
    """A query encoder is not the encoder (kind, model, settings) an index was built with.

    A query encoder of the wrong dimension raises :class:`DimensionMismatch` instead.
    """


class StorageError(SieIndexError):
    """The on-disk index cannot be used as asked."""


class NotAnIndex(StorageError):
    """The folder does not hold a sie-index index (no manifest)."""


class FormatVersionMismatch(StorageError):
    """The index was written with a format version this release cannot read."""


class CorruptIndex(StorageError):
    """A data file is damaged, truncated, or disagrees with the manifest."""


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
