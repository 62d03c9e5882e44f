"""Every document's external id, held packed in memory for the hits of a search.

A search that returns ids only (no text, no metadata) named its hits by a SQLite
read per search: about 0.5 ms at k=10 and 1.3 ms at k=100 on the full debian-pkgs
index, a fifth of the whole query. Opening a segment already reads and checks
every document row, external id included (:meth:`DocReader.spans_and_ids`), so the
ids are kept from that pass: UTF-8 bytes end to end and where each begins, about
the ids' own bytes plus 8 a document (17 MB at 730k documents, against the 50 MB
of a Python list of strings). A segment's table is built once and shared by every
snapshot that keeps the segment; nothing is read again after the open, so a byte
of the file damaged later cannot reach a hit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from storage.errors import InvalidInput

__all__ = ["ExternalIds", "SegmentedExternalIds"]

_ENCODING = "utf-8"
_ERRORS = "surrogatepass"  # as the document maps store and checksum them


class ExternalIds:
    """The external ids of one segment's documents, by position in the segment."""

    def __init__(self, ids: Sequence[str]) -> None:
        encoded = [ext.encode(_ENCODING, _ERRORS) for ext in ids]
        self._offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._blob = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, position: int) -> str:
        start, stop = self._offsets[position], self._offsets[position + 1]
        return self._blob[start:stop].decode(_ENCODING, _ERRORS)


class SegmentedExternalIds:
    """The external ids of every segment of a snapshot, by global internal id."""

    def __init__(self, tables: Sequence[ExternalIds], doc_bases: Sequence[int]) -> None:
        self._tables = list(tables)
        self._bases = np.asarray(doc_bases, dtype=np.int64)

    def of(self, doc_ids: Sequence[int]) -> list[str]:
        """The external id of each of ``doc_ids`` (internal ids of this snapshot)."""
        if not len(doc_ids):
            return []
        ids = np.asarray(doc_ids, dtype=np.int64)
        total = int(self._bases[-1]) + len(self._tables[-1]) if self._tables else 0
        if (ids < 0).any() or (ids >= total).any():
            raise InvalidInput(f"internal document ids must lie in 0..{total - 1}")
        segments = np.searchsorted(self._bases, ids, side="right") - 1
        local = ids - self._bases[segments]
        return [self._tables[s][p] for s, p in zip(segments.tolist(), local.tolist(), strict=True)]
