"""When small segments are merged: a tiered policy over the tail of an index.

Every add writes one segment, and an open index holds two descriptors a segment
(its vector file and its document database), so an index that took thousands
of small adds would run out of descriptors and slow every search. After each
add, the writer asks :meth:`MergePolicy.next_merge` for a run of adjacent
segments to merge into one (:meth:`storage.store_writer.StoreWriter.merge`),
and asks again until there is none, as Lucene's log merge policy does:

- segments are sorted into tiers by size: tier ``t`` holds segments of about
  ``min_tokens * factor ** t`` tokens;
- ``factor`` adjacent segments of one tier are merged into one of the next tier,
  so an index of ``N`` tokens keeps about ``(factor - 1) * log(N)`` segments and
  a token is copied about ``log(N)`` times over the life of the index;
- whatever the tiers, a tail longer than ``max_segments`` has its cheapest run
  of ``factor`` adjacent segments merged, a hard bound on descriptors.

The first segment (a build's or a compaction's, holding the trained FAISS index)
is never merged: only segments written by adds are. A merge copies rows as they
are stored, so internal ids and token rows stay the same, and so does every
search result of the kinds whose segments hold codes (``flat``, ``ivf-*``); an
``hnsw`` merge builds one graph over the merged rows, whose answers equal the
separate graphs' at an exhaustive ``ef_search`` and may differ below it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.codec import VectorCodec
from storage.docstore import DOCS_NAME, DocReader
from storage.errors import CorruptIndex, InvalidInput
from storage.fsio import read_at, verify_bytes
from storage.manifest import SegmentRecord
from storage.segment import CODES_NAME, PendingDoc, SegmentWriter
from storage.vectors import TOKEN_DOC_NAME, TokenReader

__all__ = ["DEFAULT_MERGE_POLICY", "MergePolicy", "copy_segment"]

COPY_CHUNK_DOCS = 1024


@dataclass(frozen=True, kw_only=True)
class MergePolicy:
    """Which tail segments to merge; ``factor`` segments of a tier make one of the next."""

    factor: int = 10
    min_tokens: int = 4096
    """Segments up to this many tokens are all tier 0."""
    max_segments: int = 48
    """The most segments a tail may keep, whatever their sizes."""

    def __post_init__(self) -> None:
        if type(self.factor) is not int or self.factor < 2:
            raise InvalidInput(
                f"merge factor must be an integer of at least 2, not {self.factor!r}"
            )
        if type(self.min_tokens) is not int or self.min_tokens < 1:
            raise InvalidInput(f"min_tokens must be a positive integer, not {self.min_tokens!r}")
        if type(self.max_segments) is not int or self.max_segments < self.factor:
            raise InvalidInput(
                f"max_segments must be an integer of at least factor ({self.factor}), "
                f"not {self.max_segments!r}"
            )

    def tier(self, tokens: int) -> int:
        if tokens <= self.min_tokens:
            return 0
        return int(math.log(tokens / self.min_tokens, self.factor)) + 1

    def next_merge(self, segments: Sequence[SegmentRecord]) -> tuple[int, int] | None:
        """Positions ``lo, hi`` of the segments ``lo .. hi - 1`` to merge next, or None.

        The oldest run of ``factor`` adjacent tail segments of one tier, else (past
        ``max_segments``) the run of ``factor`` adjacent tail segments with the
        fewest tokens.
        """
        tail = range(1, len(segments))
        run_start = 1
        for pos in tail:
            if self.tier(segments[pos].tokens) != self.tier(segments[run_start].tokens):
                run_start = pos
            if pos - run_start + 1 == self.factor:
                return run_start, pos + 1
        if len(tail) <= self.max_segments:
            return None
        sizes = [seg.tokens for seg in segments]
        starts = range(1, len(segments) - self.factor + 1)
        lo = min(starts, key=lambda s: sum(sizes[s : s + self.factor]))
        return lo, lo + self.factor


DEFAULT_MERGE_POLICY = MergePolicy()


def copy_segment(
    folder: Path,
    seg: SegmentRecord,
    docs: DocReader,
    codec: VectorCodec,
    deleted: set[int],
    out: SegmentWriter,
) -> None:
    """Append segment ``seg`` of the index in ``folder`` to ``out`` as it is stored:
    document rows (``deleted`` ones marked so), vector rows and, where ``out`` takes
    them, the ANN codes; every byte verified against the manifest's checksums
    before it is copied."""
    where = folder / seg.name
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tokens = TokenReader(
            where,
            codec.dim,
            seg.tokens,
            codec=codec,
            dir_fd=fd,
            vector_blocks=seg.files[codec.file_name].sha256_blocks,
            doc_blocks=seg.files[TOKEN_DOC_NAME].sha256_blocks,
        )
        codes: np.ndarray | None = None
        if CODES_NAME in seg.files:
            raw = read_at(fd, CODES_NAME, str(where), max_bytes=seg.files[CODES_NAME].bytes)
            verify_bytes(raw, seg.files[CODES_NAME].sha256_blocks, f"{where}/{CODES_NAME}")
            if len(raw) % max(seg.tokens, 1):
                raise CorruptIndex(f"{where}/{CODES_NAME} does not hold whole codes")
            codes = np.frombuffer(raw, np.uint8).reshape(seg.tokens, -1)
    finally:
        os.close(fd)
    try:
        spans = docs.spans(seg.documents, seg.doc_base)
        for lo in range(0, seg.documents, COPY_CHUNK_DOCS):
            ids = list(
                range(seg.doc_base + lo, seg.doc_base + min(lo + COPY_CHUNK_DOCS, seg.documents))
            )
            stored = docs.fetch(ids, text=True, metadata=True)
            if len(stored) != len(ids):
                raise CorruptIndex(f"{where}/{DOCS_NAME} lacks documents the manifest counts")
            sources = docs.sources(ids)
            local = np.asarray(ids) - seg.doc_base
            starts = spans.token_start[local] - seg.token_base
            counts = spans.token_count[local]
            batch = [
                PendingDoc(
                    external_id=stored[i].external_id,
                    text=stored[i].text,
                    metadata=stored[i].metadata,
                    vectors=None,
                    sources=sources.get(i),
                )
                for i in ids
            ]
            first, last = int(starts[0]), int(starts[-1] + counts[-1])
            out.add_rows(
                batch,
                tokens.read_raw(starts, counts),
                counts.tolist(),
                codes=codes[first:last] if codes is not None else None,
                deleted=[i in deleted for i in ids],
            )
    finally:
        tokens.close()
