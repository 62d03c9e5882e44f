"""Encoders: texts to multivectors (see :mod:`sie_index.encoders.base` for the protocol).

- :class:`TokenStatesEncoder` (``token_states``): the embedded default, token states of
  all-MiniLM-L6-v2 or any local BERT-like folder;
- :class:`ColbertEncoder` (``colbert``): a local ColBERT checkpoint, Stanford or PyLate layout;
- :class:`SieEncoder` (``sie``): a ColBERT model served by a Search Inference Engine;
- :class:`PrecomputedEncoder` (``precomputed``): vectors the user already has.

Names are imported on first use, so importing this package loads neither torch nor httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ColbertEncoder", "PrecomputedEncoder", "SieEncoder", "TokenStatesEncoder"]

_WHERE = {
    "ColbertEncoder": "sie_index.encoders.colbert",
    "PrecomputedEncoder": "sie_index.encoders.precomputed",
    "SieEncoder": "sie_index.encoders.sie",
    "TokenStatesEncoder": "sie_index.encoders.token_states",
}

if TYPE_CHECKING:
    from sie_index.encoders.colbert import ColbertEncoder
    from sie_index.encoders.precomputed import PrecomputedEncoder
    from sie_index.encoders.sie import SieEncoder
    from sie_index.encoders.token_states import TokenStatesEncoder


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sie_index.encoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
