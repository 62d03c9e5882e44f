"""``manifest.json``: what one generation of an index holds, and the checksums that prove it.

The manifest is the last file a build writes into a generation folder. It
records the format version, the encoder spec the vectors came from, the
dimension, the token-index kind and parameters, the vector codec, the document
and token counts, the generation, and block checksums of the vector file, the
token map and the FAISS file (the document database checks itself row by row,
see :mod:`storage.docstore`). The manifest's own SHA-256 is in ``CURRENT``
(:mod:`storage.generations`), so it is verified before it is parsed.

Parsing is strict: every field must be present with its JSON type (``1.0`` or
``true`` is not an integer), no unknown field is accepted, and counts and sizes
must agree with each other. Anything else is :class:`CorruptIndex` naming the
field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from storage.errors import CorruptIndex, FormatVersionMismatch
from storage.fsio import block_lengths

__all__ = ["CODEC", "FORMAT_VERSION", "MANIFEST_NAME", "FileRecord", "Manifest"]

FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
CODEC = "f16"
MAX_DIM = 65_536
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_FIELDS = {
    "format_version",
    "generation",
    "encoder",
    "dim",
    "token_index",
    "codec",
    "documents",
    "tokens",
    "files",
    "created_at",
    "sie_index_version",
}


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """Size and block checksums of one data file, as committed."""

    bytes: int
    sha256_blocks: list[str]


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The committed description of one generation of an index."""

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

    def check_size(self, name: str, size: int, where: str) -> None:
        """Raise :class:`CorruptIndex` unless file ``name`` is recorded with ``size`` bytes."""
        if self.files[name].bytes != size:
            raise CorruptIndex(
                f"{where}: files.{name}.bytes is {self.files[name].bytes}, and "
                f"{self.tokens} tokens of dimension {self.dim} take {size}"
            )

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, where: str, *, file_names: Collection[str]) -> Manifest:
        """Parse and check a manifest whose checksum the caller has verified.

        ``file_names`` are the data files it must describe, no more, no fewer.
        Raises :class:`FormatVersionMismatch` or :class:`CorruptIndex` naming ``where``.
        """
        try:
            raw = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptIndex(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CorruptIndex(f"{where} does not hold a JSON object")
        version = raw.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise FormatVersionMismatch(
                f"{where} has index format version {version!r}; this release of sie-index "
                f"reads format version {FORMAT_VERSION}. Rebuild the index."
            )
        unknown, missing = set(raw) - _FIELDS, _FIELDS - set(raw)
        if unknown or missing:
            raise CorruptIndex(
                f"{where}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}"
            )
        check = _Checker(where)
        dim = check.integer(raw, "dim", 1, MAX_DIM)
        tokens = check.integer(raw, "tokens", 0)
        encoder = check.obj(raw, "encoder")
        for key in ("kind", "model"):
            check.string(encoder, key, "encoder.")
        check.obj(encoder, "options", "encoder.")
        if check.integer(encoder, "dim", 1, MAX_DIM, "encoder.") != dim:
            raise CorruptIndex(f"{where}: encoder.dim disagrees with dim {dim}")
        codec = check.string(raw, "codec")
        if codec != CODEC:
            raise CorruptIndex(f"{where}: unknown vector codec {codec!r}")
        files_raw = check.obj(raw, "files")
        if set(files_raw) != set(file_names):
            raise CorruptIndex(
                f"{where}: describes files {sorted(files_raw)}, expected {sorted(file_names)}"
            )
        files = {}
        for name in sorted(file_names):
            rec = check.obj(files_raw, name, "files.")
            if set(rec) != {"bytes", "sha256_blocks"}:
                raise CorruptIndex(f"{where}: files.{name} has fields {sorted(rec)}")
            size = check.integer(rec, "bytes", 0, None, f"files.{name}.")
            blocks = rec["sha256_blocks"]
            if (
                not isinstance(blocks, list)
                or len(blocks) != len(block_lengths(size))
                or not all(isinstance(b, str) and _HEX64.match(b) for b in blocks)
            ):
                raise CorruptIndex(f"{where}: files.{name}.sha256_blocks is malformed")
            files[name] = FileRecord(bytes=size, sha256_blocks=list(blocks))
        return cls(
            format_version=version,
            generation=check.integer(raw, "generation", 1),
            encoder=encoder,
            dim=dim,
            token_index=check.obj(raw, "token_index"),
            codec=codec,
            documents=check.integer(raw, "documents", 0),
            tokens=tokens,
            files=files,
            created_at=check.string(raw, "created_at"),
            sie_index_version=check.string(raw, "sie_index_version"),
        )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Checker:
    """Typed field access that names the file and field in every error."""

    def __init__(self, where: str) -> None:
        self.where = where

    def _get(self, raw: dict[str, Any], key: str, prefix: str) -> Any:
        if key not in raw:
            raise CorruptIndex(f"{self.where}: field {prefix}{key} is missing")
        return raw[key]

    def integer(
        self,
        raw: dict[str, Any],
        key: str,
        low: int,
        high: int | None = None,
        prefix: str = "",
    ) -> int:
        value = self._get(raw, key, prefix)
        if type(value) is not int or value < low or (high is not None and value > high):
            bounds = f"{low}..{high if high is not None else math.inf}"
            raise CorruptIndex(
                f"{self.where}: field {prefix}{key} is {value!r}, not an integer in {bounds}"
            )
        return value

    def string(self, raw: dict[str, Any], key: str, prefix: str = "") -> str:
        value = self._get(raw, key, prefix)
        if not isinstance(value, str):
            raise CorruptIndex(f"{self.where}: field {prefix}{key} is {value!r}, not a string")
        return value

    def obj(self, raw: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = self._get(raw, key, prefix)
        if not isinstance(value, dict):
            raise CorruptIndex(f"{self.where}: field {prefix}{key} is not an object")
        return value
