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
    │   ├── IndexClosed              the index was closed
    │   ├── StorageFull              the disk or quota is full (nothing was committed)
    │   ├── ReadOnlyIndex            the index's folder cannot be written
    │   ├── TooManyOpenFiles         the process has no file descriptor left
    │   ├── DimensionMismatch        vectors or a query encoder of the wrong dimension
    │   └── NoLexicon                hybrid search on an index that keeps no lexicon
    ├── ShardTimeout                 a shard did not answer within a search's deadline
    └── InvalidInput (ValueError)    bad user input: corpus lines, ids, texts, vectors
        └── UnknownFilterField       a filter that matches nothing names a field no document has

Lower libraries' errors (FAISS, SQLite, json, torch) are mapped to these at the
boundary where they happen, with ``raise ... from``. The storage errors, the root
class and ``InvalidInput`` are defined in :mod:`storage.errors` (the lower layer
never imports this one) and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage import (
    CorruptIndex,
    DimensionMismatch,
    FormatVersionMismatch,
    IndexClosed,
    IndexLocked,
    InvalidInput,
    NotAnIndex,
    ReadOnlyIndex,
    SieIndexError,
    StorageError,
    StorageFull,
    TooManyOpenFiles,
)

__all__ = [
    "CorruptIndex",
    "DimensionMismatch",
    "EncoderError",
    "EncoderMismatch",
    "EncoderProtocolError",
    "EncoderUnavailable",
    "FormatVersionMismatch",
    "IndexClosed",
    "IndexLocked",
    "InvalidInput",
    "NoLexicon",
    "NotAnIndex",
    "ReadOnlyIndex",
    "ShardTimeout",
    "SieIndexError",
    "StorageError",
    "StorageFull",
    "TooManyOpenFiles",
    "UnknownFilterField",
]


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


class NoLexicon(StorageError):
    """Hybrid search asked of an index that keeps no lexicon: one built before
    lexicons existed, or with ``store_text=False`` (no text to index)."""

    @classmethod
    def of(cls, where: str) -> NoLexicon:
        """The error for the index at ``where``, saying how to give it a lexicon."""
        return cls(
            f"{where} keeps no lexicon for hybrid search (built before lexicons, or without "
            "its text); compact it with lexical_fields=[] (CLI: compact --lexicon) to add one, "
            "or search without hybrid"
        )


class ShardTimeout(SieIndexError):
    """A shard of a sharded index did not answer within the request's deadline."""


class UnknownFilterField(InvalidInput):
    """A filter matches no document and names a metadata field that no document has:
    most likely a misspelt field, so it is an error rather than an empty result.

    ``fields`` are those fields. A field that only some documents have is no error,
    nor is a filter that matches documents (``$ne`` and ``$exists: false`` match the
    documents without the field).
    """

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        names = ", ".join(repr(f) for f in self.fields)
        plural = "s" if len(self.fields) > 1 else ""
        super().__init__(
            f"no document has the metadata field{plural} {names} that the filter names, "
            "so it matches nothing (a misspelt field?)"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # crosses to and from Ray shard actors
        return (type(self), (self.fields,))
