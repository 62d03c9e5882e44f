"""Putting shards' answers together: the exact merge of their hits, and one report
of the commits a change made in several shards."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sie_index.fusion import fuse
from sie_index.params import Hit, Hits, SearchParams
from sie_index.updates import ChangeReport, UpdateReport

__all__ = ["combine_changes", "combine_updates", "fuse_hits", "merge_hits"]


def merge_hits(
    per_shard: Sequence[Sequence[Hit] | None], k: int, missing: tuple[int, ...] = ()
) -> Hits:
    """The global top ``k`` of each shard's exact top ``k``: by score, ties by shard
    then internal id (as one index breaks ties by internal id)."""
    pooled = [
        (-h.score, shard, h.doc_id, h)
        for shard, hits in enumerate(per_shard)
        if hits is not None
        for h in hits
    ]
    pooled.sort(key=lambda t: t[:3])
    return Hits(
        [dataclasses.replace(h, shard=shard) for _, shard, _, h in pooled[:k]], missing=missing
    )


def fuse_hits(
    per_shard: Sequence[Sequence[Hit] | None],
    params: SearchParams,
    missing: tuple[int, ...] = (),
) -> Hits:
    """A hybrid search's top ``k``: every shard's candidates (each with its exact
    MaxSim and its BM25 score, by the statistics of all shards) fused together, as
    one index fuses its candidates (:func:`sie_index.fusion.fuse`), in the order
    shard then internal id, so ties go as in :func:`merge_hits`."""
    pooled = [
        dataclasses.replace(h, shard=shard)
        for shard, hits in enumerate(per_shard)
        if hits is not None
        for h in sorted(hits, key=lambda h: h.doc_id)
    ]
    if not pooled:
        return Hits([], missing=missing)
    maxsim = np.array([h.maxsim for h in pooled], np.float64)
    bm25 = np.array([h.bm25 for h in pooled], np.float64)
    fused = fuse(maxsim, bm25, params.fusion, params.fusion_weight)
    order = np.argsort(-fused, kind="stable")[: params.k]
    return Hits(
        [dataclasses.replace(pooled[i], score=float(fused[i])) for i in order.tolist()],
        missing=missing,
    )


def combine_changes(reports: Sequence[ChangeReport], documents: int) -> ChangeReport:
    return ChangeReport(
        generation=max((r.generation for r in reports), default=0),
        added=sum(r.added for r in reports),
        deleted=sum(r.deleted for r in reports),
        replaced=sum(r.replaced for r in reports),
        tokens=sum(r.tokens for r in reports),
        documents=documents,
        # a shard that crossed the growth threshold in this change says so
        outgrown=max((r.outgrown for r in reports if r.outgrown is not None), default=None),
    )


def combine_updates(reports: Sequence[UpdateReport], documents: int) -> UpdateReport:
    return UpdateReport(
        change=combine_changes([r.change for r in reports], documents),
        encode_seconds=sum(r.encode_seconds for r in reports),
        store_seconds=sum(r.store_seconds for r in reports),
        bad_lines=[b for r in reports for b in r.bad_lines],
    )
