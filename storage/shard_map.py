"""``SHARDS``: the commit point of a sharded index, and the rule that routes an id.

A sharded index is a folder of ordinary index folders (each with its own
segments, generations, lock and checksums) plus one file, ``SHARDS``, that
names them::

    SHARDS                  the shard map: which shard folders are the index
    BUILDING                a build in progress (its shard folders), for resume
    write.lock              the sharded index's own write lock (builds)
    shards-000002-000/      shard 0 of the build that made generation 2
    shards-000002-001/      shard 1 ...

The map is replaced atomically (write a temporary file, fsync, rename, fsync
the folder), like ``CURRENT``, and carries a checksum of itself, so it is the
old map or the new one, never a mix, and damage is :class:`CorruptIndex`. It
records the routing rule and the shared token-index plan: every shard's
quantizer (IVF centroids, PQ codebooks) is the same trained index, so shard
codes are comparable and one shard can be rebuilt without the others.

Routing: an external id lives in shard ``blake2b-64(id) mod n``, always, so an
add, upsert or delete of an id reaches the one shard that holds it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import CorruptIndex
from storage.fsio import atomic_replace, sealed_json, unseal_json

__all__ = [
    "BUILDING_NAME",
    "SHARD_MAP_NAME",
    "ShardMap",
    "read_shard_map",
    "shard_dirname",
    "shard_of",
    "write_shard_map",
]

SHARD_MAP_NAME = "SHARDS"
BUILDING_NAME = "BUILDING"
SHARD_MAP_FORMAT = 1
ROUTING = "blake2b-64-mod"
MAX_SHARDS = 4096
_SHARD_DIR = re.compile(r"shards-(\d{6})-(\d{3,})\Z")
_KEYS = {"format_version", "generation", "shards", "routing", "token_index"}


def shard_dirname(generation: int, position: int) -> str:
    return f"shards-{generation:06d}-{position:03d}"


def shard_of(external_id: str, n_shards: int) -> int:
    """The shard that holds ``external_id`` among ``n_shards`` (stable across
    processes and releases: not Python's salted ``hash``)."""
    digest = hashlib.blake2b(external_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little") % n_shards


@dataclass(frozen=True, kw_only=True)
class ShardMap:
    """The committed description of a sharded index: its shard folders in order."""

    generation: int
    shards: list[str]
    token_index: dict[str, Any] | None = None
    """The shared token-index plan (as a manifest records it), or None before any."""
    routing: str = ROUTING
    format_version: int = field(default=SHARD_MAP_FORMAT)

    def _body(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "generation": self.generation,
            "shards": list(self.shards),
            "routing": self.routing,
            "token_index": self.token_index,
        }

    def to_bytes(self) -> bytes:
        return sealed_json(self._body())

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ShardMap:
        raw = unseal_json(data, where, _KEYS, "a shard map")
        gen, shards = raw["generation"], raw["shards"]
        if (
            raw["format_version"] != SHARD_MAP_FORMAT
            or type(gen) is not int
            or gen < 1
            or raw["routing"] != ROUTING
            or not isinstance(shards, list)
            or not 1 <= len(shards) <= MAX_SHARDS
            or not all(isinstance(s, str) and _SHARD_DIR.match(s) for s in shards)
            or len(set(shards)) != len(shards)
            or not (raw["token_index"] is None or isinstance(raw["token_index"], dict))
        ):
            raise CorruptIndex(f"{where} holds a malformed shard map")
        shard_map = cls(generation=gen, shards=shards, token_index=raw["token_index"])
        if shard_map.to_bytes() != data:
            raise CorruptIndex(f"{where} does not match its own checksum")
        return shard_map


def read_shard_map(folder: Path) -> ShardMap | None:
    """The committed shard map of ``folder``; None when it has none."""
    path = Path(folder) / SHARD_MAP_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptIndex(f"{path} cannot be read: {exc}") from exc
    return ShardMap.from_bytes(data, str(path))


def write_shard_map(folder: Path, shard_map: ShardMap) -> None:
    """Commit ``shard_map``: the one atomic step that makes a set of shards the index."""
    data = shard_map.to_bytes()
    ShardMap.from_bytes(data, "the shard map to commit")  # never commit what no reader opens
    atomic_replace(Path(folder) / SHARD_MAP_NAME, lambda tmp: _write(tmp, data))


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def is_shard_dirname(name: str) -> bool:
    return _SHARD_DIR.match(name) is not None
