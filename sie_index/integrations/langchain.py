"""A LangChain retriever over sie-index (``pip install 'sie-index[langchain]'``).

    from sie_index.integrations.langchain import SieIndexRetriever

    retriever = SieIndexRetriever(index=Index.open("my-index"), k=4)   # or Client(url)
    docs = retriever.invoke("how do I resize photos?")

Each hit is a ``langchain_core.documents.Document``: the stored text as
``page_content``, the document's metadata plus ``id`` and ``score`` as
``metadata``, and the id as ``id``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from sie_index.integrations import asearch, search
from sie_index.params import Hit

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the LangChain retriever needs langchain-core: pip install 'sie-index[langchain]'"
    ) from exc

__all__ = ["SieIndexRetriever"]


def _document(hit: Hit) -> Document:
    metadata = {**(hit.metadata or {}), "id": hit.external_id, "score": hit.score}
    return Document(page_content=hit.text or "", metadata=metadata, id=hit.external_id)


class SieIndexRetriever(BaseRetriever):
    """Top ``k`` documents of a sie-index :class:`~sie_index.Index`, ``Client`` or
    ``AsyncClient`` (async calls only) for a text query. ``search_kwargs`` go to
    ``search`` (``filter``, ``k_token``, ``n_rerank``, ...)."""

    index: Any
    k: int = 4
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [_document(h) for h in search(self.index, query, self.k, self.search_kwargs)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = await asearch(self.index, query, self.k, self.search_kwargs)
        return [_document(h) for h in hits]
