"""A LlamaIndex retriever over sie-index (``pip install 'sie-index[llamaindex]'``).

    from sie_index.integrations.llama_index import SieIndexRetriever

    retriever = SieIndexRetriever(Index.open("my-index"), k=4)   # or Client(url)
    nodes = retriever.retrieve("how do I resize photos?")

Each hit is a ``NodeWithScore`` holding a ``TextNode`` (the stored text, the
document's metadata, the document's id as ``id_``) and the MaxSim score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sie_index.integrations import asearch, search
from sie_index.params import Hit

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the LlamaIndex retriever needs llama-index-core: pip install 'sie-index[llamaindex]'"
    ) from exc

__all__ = ["SieIndexRetriever"]


def _node(hit: Hit) -> NodeWithScore:
    node = TextNode(id_=hit.external_id, text=hit.text or "", metadata=dict(hit.metadata or {}))
    return NodeWithScore(node=node, score=hit.score)


class SieIndexRetriever(BaseRetriever):
    """Top ``k`` documents of a sie-index :class:`~sie_index.Index`, ``Client`` or
    ``AsyncClient`` (async calls only) for a query. ``search_kwargs`` go to
    ``search`` (``filter``, ``k_token``, ``n_rerank``, ...)."""

    def __init__(
        self,
        index: Any,
        k: int = 4,
        search_kwargs: Mapping[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        super().__init__(callback_manager=callback_manager)
        self.index = index
        self.k = k
        self.search_kwargs = dict(search_kwargs or {})

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = search(self.index, query_bundle.query_str, self.k, self.search_kwargs)
        return [_node(h) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await asearch(self.index, query_bundle.query_str, self.k, self.search_kwargs)
        return [_node(h) for h in hits]
