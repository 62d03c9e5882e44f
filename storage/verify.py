"""Checking a whole index, and sweeping what dead writers left (``sie-index verify``).

:func:`verify_index` opens the committed generation with every check made at
once (every segment's vector file in full, every row's text and metadata, every
live id once, not only what a search would touch) and lists the debris beside it: generation
folders that are not current, segment folders no generation names, a stale
temporary pointer, files of the format-1 layout. It reports, as a warning that
leaves the index ``ok``, an index grown past its quantizer (:mod:`storage.growth`). With
``repair`` it takes the write lock (so never while a writer works) and removes
that debris, leaving any generation a reader still holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import CorruptIndex, StorageError
from storage.generations import CURRENT_NAME, find_debris, remove_debris
from storage.growth import measure_growth
from storage.lock import WriteLock
from storage.snapshot import StoreSnapshot, read_manifest

__all__ = ["VerifyReport", "verify_index"]


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """What :func:`verify_index` found; ``ok`` is False when the index is damaged."""

    path: str
    ok: bool
    generation: int | None = None
    documents: int | None = None
    tokens: int | None = None
    problem: str | None = None
    growth: dict[str, Any] | None = None
    """How far the index has grown since its quantizer was trained (:mod:`storage.growth`)."""
    warnings: list[str] = field(default_factory=list)
    """Findings that do not make the index damaged (``ok`` stays True): an index
    outgrown its quantizer."""
    debris: list[str] = field(default_factory=list)
    """Leftovers still in the folder (after ``repair``: those a reader holds)."""
    removed: list[str] = field(default_factory=list)


def verify_index(path: Path, *, repair: bool = False) -> VerifyReport:
    """Verify every checksum and invariant of the index at ``path``; optionally sweep debris.

    A damaged index gives a report with ``ok`` False and the problem (never an
    exception); a folder that is not an index raises :class:`NotAnIndex`.
    """
    folder = Path(path)
    try:
        with StoreSnapshot.open(folder, verify_vectors=True) as snap:
            snap.docs.verify_content()
            snap.docs.verify_sources()
            snap.docs.verify_lexicon()
            live_ids = [
                ext
                for ext, deleted in zip(snap.docs.external_ids(), snap.spans.deleted, strict=True)
                if not deleted
            ]
            if len(set(live_ids)) != len(live_ids):
                twice = sorted(e for e, n in Counter(live_ids).items() if n > 1)[:3]
                raise CorruptIndex(f"{folder}: documents {twice} are live twice")
            m = snap.manifest
            segments = {seg.name for seg in m.segments}
            growth = measure_growth(snap)
    except StorageError as exc:
        if not folder.is_dir() or not (folder / CURRENT_NAME).exists():
            raise
        return VerifyReport(path=str(folder), ok=False, problem=f"{type(exc).__name__}: {exc}")
    removed: list[str] = []
    if repair:
        with WriteLock(folder):
            # under the lock, what is current now (a writer may have committed since)
            now = read_manifest(folder)
            removed = remove_debris(
                folder,
                now.generation,
                committed=True,
                keep_segments={seg.name for seg in now.segments},
            )
    return VerifyReport(
        path=str(folder),
        ok=True,
        generation=m.generation,
        documents=m.live_documents,
        tokens=m.tokens,
        growth=growth.to_dict(),
        warnings=[growth.verdict] if growth.outgrown else [],
        # what is left (after repair, a generation a reader holds)
        debris=[
            p.name
            for p in find_debris(folder, m.generation, committed=True, keep_segments=segments)
        ],
        removed=removed,
    )
