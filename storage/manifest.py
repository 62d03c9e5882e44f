"""``manifest.json``: what one generation of an index holds, and the checksums that prove it.

The manifest is the last file a writer puts into a generation folder. It
records the format version, the encoder spec the vectors came from, the
dimension, the token-index kind and parameters, the vector codec, the document
and token counts, the generation, the segments the generation is made of (each
with its document and token ranges and block checksums of its vector file,
token map and FAISS data; the document database checks itself row by row, see
:mod:`storage.docstore`), and the checksums of the generation's own file of
deleted documents. The manifest's own SHA-256 is in ``CURRENT``
(:mod:`storage.generations`), so it is verified before it is parsed.

Segments are immutable once committed and shared by later generations: an add
writes one new segment, a delete writes only a new list of deleted documents,
and a compaction writes one segment holding every live document. Segment ``i``
holds the documents ``doc_base .. doc_base + documents - 1`` and the token rows
``token_base .. token_base + tokens - 1``; the segments tile both ranges in
order, without gaps.

A pooled index (each document's token vectors merged into about one in
``pool_factor``) records ``pool_factor``, which every later add must pool by; an
index that is not pooled leaves the field out, so its manifest is what it was
before pooling existed, and a manifest without it reads as factor 1. Likewise
``lexical_fields``, present when every segment holds a lexicon for hybrid search.

The ``token_index`` record holds the plan (:class:`storage.token_index.TokenIndexPlan`)
and, under ``trained``, what the index held when its quantizer was trained
(:class:`storage.growth.TrainingRecord`); both are checked by
:func:`storage.snapshot.check_generation`, on every open and every commit. A
manifest written before that record existed has none, and opens as before.

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

from storage.codec import CODECS
from storage.errors import CorruptIndex, FormatVersionMismatch
from storage.fsio import block_lengths

__all__ = [
    "DELETED_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_POOL_FACTOR",
    "FileRecord",
    "Manifest",
    "SegmentRecord",
    "check_encoder_record",
]

FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
DELETED_NAME = "deleted.i64"
_SEGMENT_NAME = re.compile(r"seg-\d{6,}\Z")
MAX_DIM = 65_536
MAX_ENCODER_BYTES = 1 << 20
MAX_POOL_FACTOR = 64
"""The largest pool factor a manifest may record: past it, a document keeps a vector
or two, and the index is no longer a multi-vector index."""
_OPTIONAL_FIELDS = {"pool_factor", "lexical_fields"}
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_FIELDS = {
    "format_version",
    "generation",
    "encoder",
    "dim",
    "token_index",
    "codec",
    "documents",
    "live_documents",
    "tokens",
    "segments",
    "deleted",
    "created_at",
    "sie_index_version",
}


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """Size and block checksums of one data file, as committed."""

    bytes: int
    sha256_blocks: list[str]


@dataclass(frozen=True, kw_only=True)
class SegmentRecord:
    """One immutable segment: its folder name, ranges, and data files as committed."""

    name: str
    doc_base: int
    documents: int
    token_base: int
    tokens: int
    files: dict[str, FileRecord]


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The committed description of one generation of an index."""

    format_version: int = FORMAT_VERSION
    generation: int
    encoder: dict[str, Any]
    dim: int
    """The stored vectors' dimension: ``encoder["dim"]``, or less with a projection."""
    token_index: dict[str, Any]
    codec: str
    documents: int
    live_documents: int
    tokens: int
    segments: list[SegmentRecord]
    deleted: FileRecord
    """The generation's ``deleted.i64``: sorted internal ids of deleted documents."""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    sie_index_version: str = "0.1.0"
    pool_factor: int = 1
    """Each document's token vectors were merged into about ``1 / pool_factor`` as many
    (1: not pooled); an add pools by the same factor."""
    lexical_fields: tuple[str, ...] | None = None
    """Every segment holds a lexicon (:mod:`storage.lexicon`) of its documents' text
    and of these metadata fields; None: an index made before lexicons, which has none
    (a compaction gives it one)."""

    @property
    def deleted_count(self) -> int:
        return self.documents - self.live_documents

    def to_bytes(self) -> bytes:
        """The manifest's JSON (``ValueError`` for NaN or Inf, which no reader parses;
        ``TypeError`` for a value JSON cannot hold)."""
        raw = asdict(self)
        # not pooled: the manifest as it was before pooling existed
        if type(raw["pool_factor"]) is int and raw["pool_factor"] == 1:
            del raw["pool_factor"]
        if raw["lexical_fields"] is None:
            del raw["lexical_fields"]
        text = json.dumps(raw, indent=2, sort_keys=True, allow_nan=False)
        return (text + "\n").encode("utf-8")

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        where: str,
        *,
        file_names: Collection[str],
        file_names_required: Collection[str] = (),
    ) -> Manifest:
        """Parse and check a manifest whose checksum the caller has verified.

        A segment may describe only ``file_names`` and must describe
        ``file_names_required``; which FAISS files a segment needs is checked
        when they are loaded (:mod:`storage.snapshot`).
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
        unknown, missing = set(raw) - _FIELDS - _OPTIONAL_FIELDS, _FIELDS - set(raw)
        if unknown or missing:
            raise CorruptIndex(
                f"{where}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}"
            )
        check = _Checker(where)
        dim = check.integer(raw, "dim", 1, MAX_DIM)
        tokens = check.integer(raw, "tokens", 0)
        encoder = _encoder_record(check, check.obj(raw, "encoder"))
        # the stored dimension is the encoder's, or below it with a projection
        if encoder["dim"] < dim:
            raise CorruptIndex(f"{where}: encoder.dim is below the stored dim {dim}")
        codec = check.string(raw, "codec")
        if codec not in CODECS:
            raise CorruptIndex(f"{where}: unknown vector codec {codec!r}")
        documents = check.integer(raw, "documents", 0)
        live = check.integer(raw, "live_documents", 0, documents)
        segments_raw = raw["segments"]
        if not isinstance(segments_raw, list) or len(segments_raw) > 1_000_000:
            raise CorruptIndex(f"{where}: field segments is not a list")
        segments = []
        doc_base = token_base = 0
        names: set[str] = set()
        for i, seg in enumerate(segments_raw):
            prefix = f"segments[{i}]."
            if not isinstance(seg, dict) or set(seg) != _SEGMENT_FIELDS:
                raise CorruptIndex(f"{where}: {prefix[:-1]} does not describe a segment")
            name = check.string(seg, "name", prefix)
            if not _SEGMENT_NAME.match(name) or name in names:
                raise CorruptIndex(f"{where}: {prefix}name {name!r} is not a segment folder")
            names.add(name)
            record = SegmentRecord(
                name=name,
                doc_base=check.integer(seg, "doc_base", doc_base, doc_base, prefix),
                documents=check.integer(seg, "documents", 0, None, prefix),
                token_base=check.integer(seg, "token_base", token_base, token_base, prefix),
                tokens=check.integer(seg, "tokens", 0, None, prefix),
                files=_file_records(check, check.obj(seg, "files", prefix), f"{prefix}files."),
            )
            if not set(file_names_required) <= set(record.files) <= set(file_names):
                raise CorruptIndex(
                    f"{where}: {prefix}files names {sorted(record.files)}, which is not "
                    "the set of files of a segment"
                )
            doc_base += record.documents
            token_base += record.tokens
            segments.append(record)
        if doc_base != documents or token_base != tokens:
            raise CorruptIndex(
                f"{where}: the segments hold {doc_base} documents and {token_base} tokens, "
                f"the manifest says {documents} and {tokens}"
            )
        deleted = _file_record(check, check.obj(raw, "deleted"), "deleted.")
        if deleted.bytes != 8 * (documents - live):
            raise CorruptIndex(
                f"{where}: deleted.bytes is {deleted.bytes}, and {documents - live} deleted "
                "documents take 8 bytes each"
            )
        return cls(
            format_version=version,
            generation=check.integer(raw, "generation", 1),
            encoder=encoder,
            dim=dim,
            token_index=check.obj(raw, "token_index"),
            codec=codec,
            documents=documents,
            live_documents=live,
            tokens=tokens,
            segments=segments,
            deleted=deleted,
            created_at=check.string(raw, "created_at"),
            sie_index_version=check.string(raw, "sie_index_version"),
            pool_factor=(
                check.integer(raw, "pool_factor", 1, MAX_POOL_FACTOR) if "pool_factor" in raw else 1
            ),
            lexical_fields=check.names(raw, "lexical_fields") if "lexical_fields" in raw else None,
        )


_SEGMENT_FIELDS = {"name", "doc_base", "documents", "token_base", "tokens", "files"}


def _encoder_record(check: _Checker, encoder: dict[str, Any]) -> dict[str, Any]:
    for key in ("kind", "model"):
        check.string(encoder, key, "encoder.")
    check.obj(encoder, "options", "encoder.")
    check.integer(encoder, "dim", 1, MAX_DIM, "encoder.")
    return encoder


def check_encoder_record(encoder: Any, where: str) -> None:
    """Raise :class:`CorruptIndex` unless ``encoder`` is an encoder spec a manifest
    may record (the check :meth:`Manifest.from_bytes` applies): a writer calls it
    before it spends time encoding, so a spec no reader accepts fails at once."""
    check = _Checker(where)
    _encoder_record(check, check.obj({"encoder": encoder}, "encoder"))
    try:
        size = len(json.dumps(encoder, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CorruptIndex(f"{where}: encoder is not plain JSON: {exc}") from exc
    if size > MAX_ENCODER_BYTES:
        raise CorruptIndex(f"{where}: the encoder spec takes {size} bytes of JSON, over 1 MiB")


def _file_record(check: _Checker, rec: dict[str, Any], prefix: str) -> FileRecord:
    if set(rec) != {"bytes", "sha256_blocks"}:
        raise CorruptIndex(f"{check.where}: {prefix[:-1]} has fields {sorted(rec)}")
    size = check.integer(rec, "bytes", 0, None, prefix)
    blocks = rec["sha256_blocks"]
    if (
        not isinstance(blocks, list)
        or len(blocks) != len(block_lengths(size))
        or not all(isinstance(b, str) and _HEX64.match(b) for b in blocks)
    ):
        raise CorruptIndex(f"{check.where}: {prefix}sha256_blocks is malformed")
    return FileRecord(bytes=size, sha256_blocks=list(blocks))


def _file_records(check: _Checker, raw: dict[str, Any], prefix: str) -> dict[str, FileRecord]:
    return {
        name: _file_record(check, check.obj(raw, name, prefix), f"{prefix}{name}.")
        for name in sorted(raw)
    }


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

    def names(self, raw: dict[str, Any], key: str) -> tuple[str, ...]:
        value = self._get(raw, key, "")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise CorruptIndex(f"{self.where}: field {key} is {value!r}, not a list of names")
        return tuple(value)

    def obj(self, raw: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = self._get(raw, key, prefix)
        if not isinstance(value, dict):
            raise CorruptIndex(f"{self.where}: field {prefix}{key} is not an object")
        return value
