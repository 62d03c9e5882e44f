"""sie-index: a multi-vector (ColBERT-style) retrieval index.

Documents are encoded into one vector per token, stored in a FAISS token index
plus SQLite document maps, and searched by token ANN followed by exact MaxSim::

    from sie_index import Index

    index = Index.build("my-index", "corpus.jsonl")          # default encoder
    for hit in Index.open("my-index").search("how do I ...", k=5):
        print(hit.external_id, hit.score)

Names are imported on first use, so ``import sie_index`` stays cheap (the
encoders pull in torch only when one is made).
"""

from __future__ import annotations

import importlib
import os

# FAISS and torch each load their own OpenMP runtime. Threads that spin after a
# parallel region steal cores from the other runtime, which doubled search latency
# on a 2-core machine; waiting passively avoids it. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BuildReport",
    "ChangeReport",
    "ColbertEncoder",
    "CompiledFilter",
    "CorruptIndex",
    "DimensionMismatch",
    "Document",
    "Encoder",
    "EncoderError",
    "EncoderMismatch",
    "EncoderProtocolError",
    "EncoderSpec",
    "EncoderUnavailable",
    "FormatVersionMismatch",
    "Hit",
    "Hits",
    "Index",
    "IndexClosed",
    "IndexLocked",
    "IndexWriter",
    "InvalidInput",
    "LexicalStats",
    "NoLexicon",
    "NotAnIndex",
    "PrecomputedEncoder",
    "Ranked",
    "ReadOnlyIndex",
    "ResidentScan",
    "SearchDefaults",
    "SearchParams",
    "ShardTimeout",
    "ShardedIndex",
    "ShardedWriter",
    "SieEncoder",
    "SieIndexError",
    "StorageError",
    "StorageFull",
    "TokenStatesEncoder",
    "TooManyOpenFiles",
    "UpdateReport",
    "maxsim",
    "maxsim_batch",
    "open_index",
]

_WHERE = {
    "ShardedWriter": "sie_index.sharded_writer",
    "ShardTimeout": "sie_index.errors",
    "open_index": "sie_index.sharded",
    "Hits": "sie_index.params",
    "ShardedIndex": "sie_index.sharded",
    "CompiledFilter": "sie_index.filters",
    "UpdateReport": "sie_index.updates",
    "ResidentScan": "sie_index.exhaustive",
    "Ranked": "sie_index.search",
    "IndexWriter": "sie_index.updates",
    "ChangeReport": "sie_index.updates",
    "BuildReport": "sie_index.writer",
    "TooManyOpenFiles": "sie_index.errors",
    "StorageFull": "sie_index.errors",
    "ReadOnlyIndex": "sie_index.errors",
    "IndexClosed": "sie_index.errors",
    "CorruptIndex": "sie_index.errors",
    "DimensionMismatch": "sie_index.errors",
    "EncoderError": "sie_index.errors",
    "EncoderMismatch": "sie_index.errors",
    "EncoderProtocolError": "sie_index.errors",
    "EncoderUnavailable": "sie_index.errors",
    "FormatVersionMismatch": "sie_index.errors",
    "IndexLocked": "sie_index.errors",
    "InvalidInput": "sie_index.errors",
    "LexicalStats": "sie_index.lexical",
    "NoLexicon": "sie_index.errors",
    "NotAnIndex": "sie_index.errors",
    "SieIndexError": "sie_index.errors",
    "StorageError": "sie_index.errors",
    "Document": "sie_index.corpus",
    "Encoder": "sie_index.encoders.base",
    "EncoderSpec": "sie_index.encoders.base",
    "ColbertEncoder": "sie_index.encoders.colbert",
    "PrecomputedEncoder": "sie_index.encoders.precomputed",
    "SieEncoder": "sie_index.encoders.sie",
    "TokenStatesEncoder": "sie_index.encoders.token_states",
    "Hit": "sie_index.params",
    "SearchDefaults": "sie_index.search_defaults",
    "SearchParams": "sie_index.params",
    "Index": "sie_index.index",
    "maxsim": "sie_index.scoring",
    "maxsim_batch": "sie_index.scoring",
}

if TYPE_CHECKING:
    from sie_index.corpus import Document
    from sie_index.encoders.base import Encoder, EncoderSpec
    from sie_index.encoders.colbert import ColbertEncoder
    from sie_index.encoders.precomputed import PrecomputedEncoder
    from sie_index.encoders.sie import SieEncoder
    from sie_index.encoders.token_states import TokenStatesEncoder
    from sie_index.errors import (
        CorruptIndex,
        DimensionMismatch,
        EncoderError,
        EncoderMismatch,
        EncoderProtocolError,
        EncoderUnavailable,
        FormatVersionMismatch,
        IndexClosed,
        IndexLocked,
        InvalidInput,
        NoLexicon,
        NotAnIndex,
        ReadOnlyIndex,
        ShardTimeout,
        SieIndexError,
        StorageError,
        StorageFull,
        TooManyOpenFiles,
    )
    from sie_index.exhaustive import ResidentScan
    from sie_index.filters import CompiledFilter
    from sie_index.index import Index
    from sie_index.lexical import LexicalStats
    from sie_index.params import Hit, Hits, SearchParams
    from sie_index.scoring import maxsim, maxsim_batch
    from sie_index.search import Ranked
    from sie_index.sharded import ShardedIndex, open_index
    from sie_index.sharded_writer import ShardedWriter
    from sie_index.updates import ChangeReport, IndexWriter, UpdateReport
    from sie_index.writer import BuildReport


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sie_index' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
