"""Search parameters and search hits: small frozen value objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sie_index.errors import InvalidInput

__all__ = ["Hit", "MatchedToken", "SearchParams"]


@dataclass(frozen=True, kw_only=True)
class SearchParams:
    """How a search runs.

    - ``k``: hits returned per query.
    - ``k_token``: document tokens fetched from the token index per query token.
    - ``n_rerank``: candidates, best by approximate score, rescored by exact MaxSim.
    - ``nprobe``: inverted lists visited per query token (IVF kinds).
    - ``ef_search``: HNSW search breadth (HNSW kind).
    - ``filter``: keep only documents matching it: an SQL predicate over the
      ``documents`` table (``"json_extract(metadata, '$.section') = 'libs'"``),
      or a mapping of metadata key to required value (``{"section": "libs"}``).
    """

    k: int = 10
    k_token: int = 64
    n_rerank: int = 64
    nprobe: int = 16
    ef_search: int = 64
    filter: str | Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        for name in ("k", "k_token", "n_rerank", "nprobe", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"SearchParams.{name} must be a positive integer, got {value!r}")

    def with_(self, **changes: Any) -> SearchParams:
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True, kw_only=True)
class MatchedToken:
    """For one query token: the document token that matched it best, and how well."""

    query_token: int
    doc_token: int
    similarity: float


@dataclass(frozen=True, kw_only=True)
class Hit:
    """One search result. ``doc_id`` is the internal id, ``external_id`` the corpus id."""

    doc_id: int
    external_id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    explain: tuple[MatchedToken, ...] | None = None
