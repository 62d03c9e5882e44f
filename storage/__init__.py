"""The on-disk layer of sie-index, and nothing else; this module is its one front door.

One folder per index (:mod:`storage.generations`): the commit pointer
``CURRENT``, the write lock (:mod:`storage.lock`), generation folders holding
``manifest.json`` (:mod:`storage.manifest`) and ``deleted.i64``
(:mod:`storage.deletions`), and immutable segment folders
(:mod:`storage.segment`) holding ``docs.sqlite`` (:mod:`storage.docstore`),
the token vectors, coded as :mod:`storage.codec` says (``tokens.f16``,
``tokens.sq8`` or ``tokens.pq``), and ``token_doc.i32`` (:mod:`storage.vectors`)
and FAISS data (:mod:`storage.token_index`). :mod:`storage.builder` writes a new index,
:mod:`storage.store_writer` changes one in place (and merges small segments as
:mod:`storage.merging` says), :mod:`storage.commit` commits either, after the
reader's own checks, :mod:`storage.snapshot` opens one (:mod:`storage.segmented`
reads across its segments), :mod:`storage.verify` checks one, and
:mod:`storage.build_journal` records a build in progress so it can be resumed;
:mod:`storage.lexicon` keeps each segment's terms for BM25; :mod:`storage.growth`
says how far it has grown since its quantizer was trained. Its errors are in
:mod:`storage.errors`. It knows nothing of models or HTTP, imports nothing from
``sie_index``, and importing it changes no process state.

The layer above (``sie_index``) imports only the names below, from here. They
are loaded on first use, so ``import storage`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "DOCS_NAME",
    "FILTER_BUDGET_S",
    "GROWTH_WARN_FACTOR",
    "MAX_POOL_FACTOR",
    "SHARD_MAP_NAME",
    "ChangeReport",
    "CodecChoice",
    "CorruptIndex",
    "DimensionMismatch",
    "FormatVersionMismatch",
    "Growth",
    "IndexClosed",
    "IndexLocked",
    "InvalidInput",
    "MergePolicy",
    "NearLists",
    "NotAnIndex",
    "PendingDoc",
    "Predicate",
    "ReadOnlyIndex",
    "RowFilter",
    "SegmentedTokens",
    "ShardMap",
    "ShardedBuilder",
    "SieIndexError",
    "StorageError",
    "StorageFull",
    "StoreBuilder",
    "StoreSnapshot",
    "StoreWriter",
    "TokenReader",
    "TooManyOpenFiles",
    "VerifyReport",
    "WriteLock",
    "as_array",
    "check_build_options",
    "check_condition",
    "check_document",
    "check_lexical_fields",
    "check_text",
    "mapped_os_errors",
    "measure_growth",
    "plain_json",
    "query_terms",
    "read_journal",
    "read_manifest",
    "read_shard_map",
    "shard_of",
    "verify_index",
]

_WHERE = {
    "GROWTH_WARN_FACTOR": "storage.growth",
    "Growth": "storage.growth",
    "measure_growth": "storage.growth",
    "mapped_os_errors": "storage.errors",
    "WriteLock": "storage.lock",
    "as_array": "storage.segment",
    "check_document": "storage.values",
    "check_text": "storage.values",
    "FILTER_BUDGET_S": "storage.predicate",
    "check_condition": "storage.predicate",
    "Predicate": "storage.predicate",
    "SHARD_MAP_NAME": "storage.shard_map",
    "shard_of": "storage.shard_map",
    "read_shard_map": "storage.shard_map",
    "ShardMap": "storage.shard_map",
    "ShardedBuilder": "storage.sharded_build",
    "DOCS_NAME": "storage.docstore",
    "MAX_POOL_FACTOR": "storage.manifest",
    "ChangeReport": "storage.store_writer",
    "CodecChoice": "storage.builder",
    "CorruptIndex": "storage.errors",
    "DimensionMismatch": "storage.errors",
    "FormatVersionMismatch": "storage.errors",
    "IndexClosed": "storage.errors",
    "IndexLocked": "storage.errors",
    "InvalidInput": "storage.errors",
    "MergePolicy": "storage.merging",
    "NotAnIndex": "storage.errors",
    "PendingDoc": "storage.segment",
    "ReadOnlyIndex": "storage.errors",
    "NearLists": "storage.token_index",
    "RowFilter": "storage.token_index",
    "SegmentedTokens": "storage.segmented",
    "SieIndexError": "storage.errors",
    "StorageError": "storage.errors",
    "StorageFull": "storage.errors",
    "StoreBuilder": "storage.builder",
    "StoreSnapshot": "storage.snapshot",
    "StoreWriter": "storage.store_writer",
    "TokenReader": "storage.vectors",
    "TooManyOpenFiles": "storage.errors",
    "VerifyReport": "storage.verify",
    "check_build_options": "storage.builder",
    "check_lexical_fields": "storage.lexicon",
    "query_terms": "storage.lexicon",
    "plain_json": "storage.values",
    "read_manifest": "storage.snapshot",
    "read_journal": "storage.build_journal",
    "verify_index": "storage.verify",
}

if TYPE_CHECKING:
    from storage.build_journal import read_journal
    from storage.builder import CodecChoice, StoreBuilder, check_build_options
    from storage.docstore import DOCS_NAME
    from storage.errors import (
        CorruptIndex,
        DimensionMismatch,
        FormatVersionMismatch,
        IndexClosed,
        IndexLocked,
        InvalidInput,
        NotAnIndex,
        ReadOnlyIndex,
        SieIndexError,
        StorageError,
        StorageFull,
        TooManyOpenFiles,
        mapped_os_errors,
    )
    from storage.growth import GROWTH_WARN_FACTOR, Growth, measure_growth
    from storage.lexicon import check_lexical_fields, query_terms
    from storage.lock import WriteLock
    from storage.manifest import MAX_POOL_FACTOR
    from storage.merging import MergePolicy
    from storage.predicate import FILTER_BUDGET_S, Predicate, check_condition
    from storage.segment import PendingDoc, as_array
    from storage.segmented import SegmentedTokens
    from storage.shard_map import SHARD_MAP_NAME, ShardMap, read_shard_map, shard_of
    from storage.sharded_build import ShardedBuilder
    from storage.snapshot import StoreSnapshot, read_manifest
    from storage.store_writer import ChangeReport, StoreWriter
    from storage.token_index import NearLists, RowFilter
    from storage.values import check_document, check_text, plain_json
    from storage.vectors import TokenReader
    from storage.verify import VerifyReport, verify_index


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
