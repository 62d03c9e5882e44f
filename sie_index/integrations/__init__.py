"""Retrievers for RAG frameworks, over a local :class:`~sie_index.Index` or a
:class:`~sie_index.client.Client` / :class:`~sie_index.client.AsyncClient`.

- :mod:`sie_index.integrations.langchain`: ``SieIndexRetriever``, a langchain-core
  ``BaseRetriever`` (``pip install 'sie-index[langchain]'``);
- :mod:`sie_index.integrations.llama_index`: ``SieIndexRetriever``, a llama-index-core
  ``BaseRetriever`` (``pip install 'sie-index[llamaindex]'``).

Both ask for ``k`` hits with their text and metadata; a hit's score and id travel in
the framework's own objects. This module holds what they share and imports neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sie_index.params import Hit

__all__ = ["asearch", "search"]


def search(index: Any, query: str, k: int, options: Mapping[str, Any]) -> list[Hit]:
    """Hits with text and metadata from an Index or a Client (an AsyncClient must be
    awaited: use the framework's async call)."""
    from sie_index.client import AsyncClient

    if isinstance(index, AsyncClient):
        raise TypeError("an AsyncClient searches asynchronously: call the retriever's async API")
    hits: list[Hit] = index.search(query, k, text=True, metadata=True, **options)
    return hits


async def asearch(index: Any, query: str, k: int, options: Mapping[str, Any]) -> list[Hit]:
    """The same, awaited: an AsyncClient directly, anything else in a worker thread."""
    from sie_index.client import AsyncClient

    if isinstance(index, AsyncClient):
        return await index.search(query, k, text=True, metadata=True, **options)
    return await asyncio.to_thread(search, index, query, k, options)
