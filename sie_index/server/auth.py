"""API keys: read-only and read-write, from a file or an environment variable.

A key file holds one entry a line (blank lines and ``#`` comments are skipped);
the variable ``SIE_INDEX_API_KEYS`` holds entries separated by commas or
whitespace. An entry is ``read:KEY`` (search, info, metrics) or ``write:KEY``
(everything); a bare ``KEY`` is a write key. Keys never come from the command
line, where other users of the machine could read them. Clients send a key as
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; every known key is compared
in constant time. With no keys configured, the server asks for none (keep it on
loopback then).
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sie_index.errors import InvalidInput

__all__ = ["ENV_VAR", "ApiKeys", "Role"]

ENV_VAR = "SIE_INDEX_API_KEYS"
Role = Literal["read", "write"]
_MIN_KEY_CHARS = 16


@dataclass(frozen=True)
class ApiKeys:
    """The keys a server accepts, each with its role."""

    read: tuple[bytes, ...] = ()
    write: tuple[bytes, ...] = ()

    def __repr__(self) -> str:  # never the keys themselves
        return f"ApiKeys(read={len(self.read)} keys, write={len(self.write)} keys)"

    @property
    def enabled(self) -> bool:
        return bool(self.read or self.write)

    @classmethod
    def parse(cls, entries: list[str], where: str) -> ApiKeys:
        """Keys from entries ``read:KEY``, ``write:KEY`` or ``KEY`` (write)."""
        read: list[bytes] = []
        write: list[bytes] = []
        for entry in entries:
            role, sep, key = entry.partition(":")
            if not sep or role not in ("read", "write"):
                role, key = "write", entry
            if len(key) < _MIN_KEY_CHARS:
                raise InvalidInput(
                    f"an API key must have at least {_MIN_KEY_CHARS} characters", source=where
                )
            (read if role == "read" else write).append(key.encode())
        return cls(tuple(read), tuple(write))

    @classmethod
    def load(
        cls, file: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> ApiKeys:
        """The keys of ``file`` (if given) and of ``$SIE_INDEX_API_KEYS`` together."""
        environ = os.environ if environ is None else environ
        keys = cls()
        if file is not None:
            try:
                text = Path(file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInput(
                    f"cannot read the API key file: {exc}", source=str(file)
                ) from exc
            lines = [ln.strip() for ln in text.splitlines()]
            keys = keys | cls.parse(
                [ln for ln in lines if ln and not ln.startswith("#")], str(file)
            )
        if environ.get(ENV_VAR):
            keys = keys | cls.parse(re.split(r"[\s,]+", environ[ENV_VAR].strip()), ENV_VAR)
        return keys

    def __or__(self, other: ApiKeys) -> ApiKeys:
        return ApiKeys(self.read + other.read, self.write + other.write)

    def role(self, presented: str) -> Role | None:
        """The role of ``presented``, or None for an unknown key. Compares against every
        key, each in constant time, so the time taken says nothing of which one matched."""
        given = presented.encode()
        found: Role | None = None
        for key in self.read:
            if hmac.compare_digest(key, given) and found is None:
                found = "read"
        for key in self.write:
            if hmac.compare_digest(key, given):
                found = "write"
        return found
