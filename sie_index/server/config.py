"""What a server is allowed to take and how it batches writes: small frozen values."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from sie_index.errors import InvalidInput
from sie_index.server.auth import ApiKeys
from sie_index.server.errors_http import LimitExceeded

__all__ = ["Limits", "ServerConfig"]


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The most one request may ask for. A body over ``max_body_bytes`` gets 413; every
    other limit 422 naming the limit (``details.limit``) and its value."""

    max_body_bytes: int = 32 * 2**20
    max_k: int = 1000
    max_query_chars: int = 8192
    max_query_tokens: int = 1024
    max_batch: int = 256
    max_documents: int = 4096
    max_filter_bytes: int = 64 * 2**10
    deadline_s: float = 30.0
    """Wall time a request may take in the server (a search, or waiting for a commit)."""

    @classmethod
    def parse(cls, entries: list[str], **fixed: Any) -> Limits:
        """Limits from ``NAME=N`` entries (``k=100``, ``body_bytes=1048576``)."""
        names = [f.name.removeprefix("max_") for f in fields(cls) if f.name.startswith("max_")]
        given: dict[str, Any] = dict(fixed)
        for entry in entries:
            name, _, value = entry.partition("=")
            if name not in names or not value.isdigit() or int(value) < 1:
                raise InvalidInput(
                    f"--limit {entry!r}: expected NAME=N with N >= 1 and NAME one of "
                    + ", ".join(names)
                )
            given[f"max_{name}"] = int(value)
        return cls(**given)

    def check(self, name: str, value: int) -> None:
        """Raise :class:`LimitExceeded` when ``value`` is over the limit ``max_<name>``."""
        limit: int = getattr(self, f"max_{name}")
        if value > limit:
            raise LimitExceeded(name, value, limit)

    def check_filter(self, *parts: Any) -> None:
        """The filter, id list and raw predicate of a request, as JSON, within
        ``max_filter_bytes``."""
        present = [p for p in parts if p is not None]
        if present:
            self.check("filter_bytes", len(json.dumps(present, default=str)))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How a server runs.

    ``search_threads``: searches run at once (default: the cores this process may
    use). Writes go to one writer, which waits up to ``batch_window_s`` after the
    first queued write for more (up to ``batch_documents`` documents) and commits
    them together; at most ``max_queued_writes`` requests wait for it, beyond which a
    write gets 503 with Retry-After. ``allow_filter_sql``: accept raw SQL predicates
    (read-only, time-budgeted) from clients; off by default.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    search_threads: int = field(default_factory=_cores)
    keys: ApiKeys = field(default_factory=ApiKeys)
    limits: Limits = field(default_factory=Limits)
    batch_window_s: float = 0.1
    batch_documents: int = 300
    max_queued_writes: int = 1024
    allow_filter_sql: bool = False
