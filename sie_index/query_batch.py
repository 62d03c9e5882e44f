"""What ``search`` was given: one query, or a batch of texts.

``Index.search`` and ``ShardedIndex.search`` take one query (a text, or a query
matrix ``[n_tokens, dim]`` as an array or nested lists) and, like the libraries
people come from (PyLate, RAGatouille), a list or tuple of texts, which is a
batch answered as ``search_batch`` answers it. Both facades ask
:func:`texts_of_batch` so they tell the shapes apart the same way, and refuse the
same nonsense with the same message.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from numbers import Number
from typing import Any

from sie_index.errors import InvalidInput

__all__ = ["EXPECTED", "texts_of_batch"]

EXPECTED = "a text, a list of texts, or a query matrix [n_tokens, dim]"


def texts_of_batch(query: Any) -> list[str] | None:
    """The texts when ``query`` is a batch (a non-empty list or tuple of strings),
    None when it is one query; :class:`InvalidInput` naming what search takes when
    it is neither (an empty list, a list of numbers, texts mixed with other values,
    None, a number, a dict)."""
    if query is None or isinstance(query, Number | bytes | Mapping | Set):
        raise InvalidInput(f"search takes {EXPECTED}, got {type(query).__name__}")
    if not isinstance(query, list | tuple):
        return None  # a text or an array: checked where it is encoded or validated
    if not query:
        raise InvalidInput(f"search got an empty {type(query).__name__}: it takes {EXPECTED}")
    texts = [q for q in query if isinstance(q, str)]
    if len(texts) == len(query):
        return texts
    if texts:
        raise InvalidInput(
            f"search got a {type(query).__name__} mixing texts with other values: it takes "
            f"{EXPECTED}; search_batch takes texts and matrices together"
        )
    if all(isinstance(q, Number) for q in query):
        # a flat list of numbers is one token vector, not a query: say so rather
        # than fail later on its shape
        raise InvalidInput(
            f"search got a flat {type(query).__name__} of numbers: it takes {EXPECTED} "
            "(one token vector needs an outer list: [[...]])"
        )
    return None  # nested lists: one query matrix
