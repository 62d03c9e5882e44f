"""Filters over document metadata, compiled to an SQL predicate with bound values.

A filter is a dict (``{"lang": "en", "year": 2020}``: every key's metadata value
equals the given one) or a raw SQL predicate over the ``documents`` table
(``metadata`` is JSON text: ``json_extract(metadata, '$.lang') = 'en'``), run on
a read-only connection with a time budget. Search and ``delete_where`` use the
same compiler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["compile_filter"]


def compile_filter(flt: str | Mapping[str, Any]) -> tuple[str, list[Any]]:
    """``(predicate, parameters)`` for a filter."""
    if isinstance(flt, Mapping):
        where = " AND ".join("json_extract(metadata, ?) IS ?" for _ in flt) or "1"
        params: list[Any] = []
        for key, value in flt.items():
            params += [f'$."{key}"', value]
        return where, params
    return flt, []
