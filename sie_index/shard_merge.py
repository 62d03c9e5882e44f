"""Putting shards' answers together: the exact merge of their hits, and one report
of the commits a change made in several shards."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sie_index.params import Hit, Hits
from sie_index.updates import ChangeReport, UpdateReport

__all__ = ["combine_changes", "combine_updates", "merge_hits"]


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
