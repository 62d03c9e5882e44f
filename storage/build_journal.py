"""``BUILDING``: the journal of a build in progress, so that a build that failed or
was killed can be resumed instead of encoded again.

A build writes its one segment folder batch by batch (:mod:`storage.builder`):
each batch's vectors are appended and fsynced, then its document rows commit in
one SQLite transaction together with a *batch record* (:data:`BATCHES_TABLE`):
where the batch's rows lie, a SHA-256 of its stored vector and document-id
bytes, and a digest of its input documents that the caller computes. The
journal, written atomically before the first batch and checksummed like the
shard map, names that segment, its generation number and the build's request
(encoder, index and codec settings, batch size: plain JSON).

A resume (``resume=True``, CLI ``--resume``) with the same request keeps every
batch whose bytes still match their record, cuts what a killed batch appended
past the last committed one, and hands the kept batches' input digests back to
the caller, which checks them against the corpus and encodes only the rest.
The journal goes once the build's generation commits. Only the segment the
journal names is ever removed on its account: the index recorded it as its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import CorruptIndex
from storage.fsio import atomic_replace, fsync_dir, sealed_json, unseal_json

__all__ = [
    "BATCHES_TABLE",
    "JOURNAL_NAME",
    "BatchRecord",
    "BuildJournal",
    "read_journal",
    "remove_journal",
    "rows_digest",
    "write_journal",
]

JOURNAL_NAME = "BUILDING"
JOURNAL_FORMAT = 1
BATCHES_TABLE = "build_batches"
MAX_JOURNAL_BYTES = 2 << 20
"""The request holds an encoder spec (at most 1 MiB, :mod:`storage.manifest`) and settings."""
_KEYS = {"format_version", "generation", "segment", "request"}
_SEG = re.compile(r"seg-(\d{6,})\Z")


@dataclass(frozen=True, kw_only=True)
class BatchRecord:
    """One committed batch of a journaled build: its documents ``first_doc ..``, its
    token rows ``token_start ..`` and the digests that let a resume trust them."""

    first_doc: int
    docs: int
    token_start: int
    tokens: int
    input_digest: str
    rows_sha256: str


def rows_digest(vector_bytes: bytes | memoryview, doc_id_bytes: bytes | memoryview) -> str:
    """The SHA-256 a batch record keeps of a batch's stored rows and their document ids."""
    h = hashlib.sha256()
    h.update(vector_bytes)
    h.update(doc_id_bytes)
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True)
class BuildJournal:
    """A build in progress: the segment it writes and what it was asked to build."""

    generation: int
    segment: str
    request: dict[str, Any]
    format_version: int = field(default=JOURNAL_FORMAT)

    def _body(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "generation": self.generation,
            "segment": self.segment,
            "request": self.request,
        }

    def to_bytes(self) -> bytes:
        return sealed_json(self._body())

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> BuildJournal:
        raw = unseal_json(data, where, _KEYS, "a build journal")
        gen, seg = raw["generation"], raw["segment"]
        if (
            raw["format_version"] != JOURNAL_FORMAT
            or type(gen) is not int
            or gen < 1
            or not isinstance(seg, str)
            or not _SEG.match(seg)
            or not isinstance(raw["request"], dict)
        ):
            raise CorruptIndex(f"{where} holds a malformed build journal")
        journal = cls(generation=gen, segment=seg, request=raw["request"])
        if journal.to_bytes() != data:
            raise CorruptIndex(f"{where} does not match its own checksum")
        return journal


def read_journal(folder: Path) -> BuildJournal | None:
    """The journal of ``folder``'s interrupted build; None when it has none."""
    path = Path(folder) / JOURNAL_NAME
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JOURNAL_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptIndex(f"{path} cannot be read: {exc}") from exc
    if len(data) > MAX_JOURNAL_BYTES:
        raise CorruptIndex(f"{path} is larger than a build journal can be")
    return BuildJournal.from_bytes(data, str(path))


def write_journal(folder: Path, journal: BuildJournal) -> None:
    """Record ``journal`` atomically (a reader sees the old one or this one)."""
    data = journal.to_bytes()
    BuildJournal.from_bytes(data, "the build journal to write")  # never write what a resume refuses
    atomic_replace(Path(folder) / JOURNAL_NAME, lambda tmp: _write(tmp, data))


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def remove_journal(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(folder) / JOURNAL_NAME).unlink()
        fsync_dir(Path(folder))
