"""One view over the segments of a generation: token rows and documents as if in
one file each.

Segments tile the internal ids and token rows in order (:mod:`storage.manifest`),
so a global token row or document id belongs to the segment whose range holds
it. :class:`SegmentedTokens` reads vectors by global row, :class:`SegmentedDocs`
reads documents by global id and runs a filter on every segment's database.
With one segment (a fresh build or a compaction) both are thin wrappers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np

from storage.codec import VectorCodec
from storage.docstore import DocReader, StoredDoc
from storage.errors import CorruptIndex
from storage.lexicon import Postings
from storage.predicate import FILTER_BUDGET_S, Predicate
from storage.vectors import VECTOR_DTYPE, TokenReader, check_spans

__all__ = ["SegmentedDocs", "SegmentedTokens"]


class SegmentedTokens:
    """The token rows of every segment, by global row number."""

    def __init__(self, readers: Sequence[TokenReader], bases: Sequence[int], dim: int) -> None:
        self.readers = list(readers)
        self.bases = np.asarray(bases, dtype=np.int64)
        self.dim = dim
        self.codec = readers[0].codec if readers else VectorCodec("f16", dim, dim)
        self.n_tokens = int(sum(r.n_tokens for r in readers))
        maps = [r.token_doc for r in readers]
        # one segment: the mapped file itself; more: one int32 copy (4 bytes a token)
        self.token_doc: np.ndarray = (
            maps[0] if len(maps) == 1 else np.concatenate(maps) if maps else np.zeros(0, np.int32)
        )

    def _segment_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bases, rows, side="right") - 1

    def verify_all(self) -> None:
        for reader in self.readers:
            reader.verify_all()

    @property
    def vectors(self) -> np.ndarray:
        """All vectors as one read-only array (float16: the file's map with one
        segment, a copy in memory with several; another codec: decoded), verified."""
        if len(self.readers) == 1:
            return self.readers[0].vectors
        if not self.readers:
            return np.zeros((0, self.dim), VECTOR_DTYPE)
        out = np.concatenate([r.vectors for r in self.readers])
        out.flags.writeable = False
        return out

    def _gather(self, read: str, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """What each segment's reader ``read`` (a method name) gives for the spans, in
        span order; a span lies in one segment (a document's tokens are never split)."""
        if len(self.readers) == 1:  # the reader checks the spans itself
            out_one: np.ndarray = getattr(self.readers[0], read)(starts, counts)
            return out_one
        starts, counts = check_spans(starts, counts, self.n_tokens)
        seg = self._segment_of(starts)
        out: np.ndarray | None = None
        offsets = np.cumsum(counts) - counts
        for s in np.unique(seg).tolist():
            pick = np.flatnonzero(seg == s)
            base = int(self.bases[s])
            reader = self.readers[s]
            if (starts[pick] + counts[pick] > base + reader.n_tokens).any():
                raise CorruptIndex("a token span crosses the end of its segment")
            part = getattr(reader, read)(starts[pick] - base, counts[pick])
            if out is None:
                out = np.empty((int(counts.sum()), part.shape[1]), part.dtype)
            # where each picked span's rows go in ``out``
            lengths = counts[pick]
            dest = np.repeat(offsets[pick] - (np.cumsum(lengths) - lengths), lengths)
            out[dest + np.arange(len(part))] = part
        if out is None:  # no spans: the first reader's empty answer has the right shape
            empty: np.ndarray = getattr(self.readers[0], read)(starts, counts)
            return empty
        return out

    def read_raw(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Stored rows (see :meth:`TokenReader.read_raw`) of the concatenated spans."""
        return self._gather("read_raw", starts, counts)

    def read_spans(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Vectors (float16 as stored, or decoded float32) of the concatenated spans."""
        return self._gather("read_spans", starts, counts)

    def spans(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Vectors of the concatenated spans as float32 (decoded by the codec)."""
        return self._gather("spans", starts, counts)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Float16 rows ``start .. stop-1`` (read, not mapped), across segments."""
        parts = []
        for reader, base in zip(self.readers, self.bases.tolist(), strict=True):
            lo, hi = max(start, base), min(stop, base + reader.n_tokens)
            if hi > lo:
                parts.append(reader.read_rows(lo - base, hi - base))
        if not parts:
            return np.zeros((0, self.dim), VECTOR_DTYPE)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def sample_rows(self, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
        """Float32 vectors of the sorted ``rows``, read chunk by chunk."""
        out = np.empty((len(rows), self.dim), np.float32)
        for start, stop in self.chunks(chunk_rows):
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                out[lo:hi] = self.read_rows(start, stop)[rows[lo:hi] - start]
        return out

    def chunks(self, chunk_rows: int) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges covering every row in pieces of ``chunk_rows``."""
        return [
            (s, min(s + chunk_rows, self.n_tokens)) for s in range(0, self.n_tokens, chunk_rows)
        ]

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


class SegmentedDocs:
    """The document maps of every segment, by global internal id."""

    def __init__(self, readers: Sequence[DocReader], ranges: Sequence[range]) -> None:
        """``readers`` of the segments in order, and the internal ids each holds."""
        self.readers = list(readers)
        self.ranges = list(ranges)
        self.bases = np.asarray([r.start for r in self.ranges], dtype=np.int64)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.readers)

    def fetch(
        self, doc_ids: Iterable[int], *, text: bool = False, metadata: bool = False
    ) -> dict[int, StoredDoc]:
        """Read documents by internal id, checksums verified; absent ids are left out."""
        ids = np.asarray(list(doc_ids), dtype=np.int64)
        if len(self.readers) == 1:
            return self.readers[0].fetch(ids.tolist(), text=text, metadata=metadata)
        seg = np.searchsorted(self.bases, ids, side="right") - 1
        out: dict[int, StoredDoc] = {}
        for s in np.unique(seg[seg >= 0]).tolist():
            out.update(self.readers[s].fetch(ids[seg == s].tolist(), text=text, metadata=metadata))
        return out

    def sources(self, doc_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Token sources of the pooled documents among ``doc_ids`` (see
        :meth:`DocReader.sources`); a document not pooled is left out."""
        ids = np.asarray(list(doc_ids), dtype=np.int64)
        seg = np.searchsorted(self.bases, ids, side="right") - 1
        out: dict[int, np.ndarray] = {}
        for s in np.unique(seg[seg >= 0]).tolist():
            out.update(self.readers[s].sources(ids[seg == s].tolist()))
        return out

    @property
    def lexical(self) -> bool:
        """Whether every segment holds a lexicon (an index built before lexicons, or
        one whose segments a compaction has not yet rewritten, has none)."""
        return bool(self.readers) and all(r.lexical for r in self.readers)

    def lexicon_lengths(self) -> np.ndarray:
        """Every document's length in lexical terms, by global internal id."""
        parts = [
            r.lexicon_lengths(len(ids)) for r, ids in zip(self.readers, self.ranges, strict=True)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def postings(self, terms: Sequence[str]) -> dict[str, Postings]:
        """Each of ``terms`` any segment holds: the global internal ids of the
        documents holding it (ascending, deleted ones too) and how often each does."""
        found: dict[str, list[Postings]] = {}
        for reader, ids in zip(self.readers, self.ranges, strict=True):
            for term, (docs, tfs) in reader.postings(terms, len(ids)).items():
                found.setdefault(term, []).append((docs + ids.start, tfs))
        return {
            term: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            for term, parts in found.items()
        }

    def verify_lexicon(self) -> None:
        for reader, ids in zip(self.readers, self.ranges, strict=True):
            reader.verify_lexicon(len(ids))

    def lookup_all(self, external_ids: Sequence[str]) -> dict[str, list[int]]:
        """Every internal id (deleted or not) each of ``external_ids`` has had."""
        out: dict[str, list[int]] = {}
        for reader in self.readers:
            for ext, doc_id in reader.lookup(external_ids).items():
                out.setdefault(ext, []).append(doc_id)
        return out

    def external_ids(self) -> list[str]:
        """Every document's external id, in internal-id order, checksums verified."""
        return [ext for reader in self.readers for ext in reader.external_ids()]

    def verify_content(self) -> None:
        for reader in self.readers:
            reader.verify_content()

    def verify_sources(self) -> None:
        for reader in self.readers:
            reader.verify_sources()

    def doc_ids_where(
        self, predicate: Predicate, *, budget_s: float = FILTER_BUDGET_S
    ) -> np.ndarray:
        """Internal ids of the documents for which ``predicate`` holds, from every
        segment, within one time budget for them all (each segment gets what the
        ones before it left); see :meth:`DocReader.doc_ids_where`."""
        self.verify_content()  # the index's own check, once: not the filter's time
        deadline = time.monotonic() + budget_s
        found = [
            reader.doc_ids_where(predicate, ids=ids, deadline=deadline)
            for reader, ids in zip(self.readers, self.ranges, strict=True)
        ]
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
