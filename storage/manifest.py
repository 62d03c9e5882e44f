"""``manifest.json``: what an index folder holds, and the checksums that prove it.

The manifest is the last file a build writes: a folder without one is not an
index. It records the format version, the encoder spec the vectors came from,
the dimension, the token-index kind and parameters, the vector codec, the
document and token counts of the committed state, the generation, and a
block checksum of every data file except the SQLite database (SQLite guards
its own pages and is the source of truth for documents).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sie_index.errors import CorruptIndex, FormatVersionMismatch, NotAnIndex
from storage.fsio import atomic_write_bytes

__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "FileRecord", "Manifest"]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """Size and block checksums of one data file, as committed."""

    bytes: int
    sha256_blocks: list[str]


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The committed description of an index folder."""

    format_version: int = FORMAT_VERSION
    generation: int
    encoder: dict[str, Any]
    dim: int
    token_index: dict[str, Any]
    codec: str
    documents: int
    tokens: int
    files: dict[str, FileRecord]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    sie_index_version: str = "0.1.0"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, folder: Path) -> None:
        """Atomically write this manifest into ``folder`` (the commit point)."""
        atomic_write_bytes(folder / MANIFEST_NAME, self.to_json().encode("utf-8"))

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Read and check the manifest of ``folder``.

        Raises :class:`NotAnIndex` when there is none, :class:`FormatVersionMismatch`
        for another format version, :class:`CorruptIndex` when it cannot be parsed.
        """
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise NotAnIndex(f"{folder} is not a folder, so it is not a sie-index index")
        if not path.is_file():
            raise NotAnIndex(f"{folder} is not a sie-index index: it has no {MANIFEST_NAME}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptIndex(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CorruptIndex(f"{path} does not hold a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise FormatVersionMismatch(
                f"{folder} was written with index format version {version!r}; this release of "
                f"sie-index reads format version {FORMAT_VERSION}. Rebuild the index."
            )
        try:
            files = {
                name: FileRecord(bytes=int(rec["bytes"]), sha256_blocks=list(rec["sha256_blocks"]))
                for name, rec in raw["files"].items()
            }
            manifest = cls(
                format_version=int(raw["format_version"]),
                generation=int(raw["generation"]),
                encoder=dict(raw["encoder"]),
                dim=int(raw["dim"]),
                token_index=dict(raw["token_index"]),
                codec=str(raw["codec"]),
                documents=int(raw["documents"]),
                tokens=int(raw["tokens"]),
                files=files,
                created_at=str(raw["created_at"]),
                sie_index_version=str(raw.get("sie_index_version", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptIndex(f"{path} is missing or has a malformed field: {exc!r}") from exc
        if manifest.dim <= 0 or manifest.documents < 0 or manifest.tokens < 0:
            raise CorruptIndex(f"{path} holds impossible counts or dimension")
        return manifest
