"""Timed runs of encoded queries, one ``rank`` call a query: what the codec and
pooling benchmarks measure each variant with."""

from __future__ import annotations

import time
from typing import Any


def timed_run(
    index: Any, Qs: list[Any], qids: list[str], external: list[str], params: Any
) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Each query's results as a run entry (external id -> score) and the seconds its
    ``rank`` call took (the mapping to external ids is not timed), after a few
    warm-up queries (page cache, FAISS)."""
    index.rank(Qs[:5], params, threads=1)
    run: dict[str, dict[str, float]] = {}
    times = []
    for qid, Q in zip(qids, Qs, strict=True):
        t0 = time.perf_counter()
        ranked = index.rank([Q], params, threads=1)[0]
        times.append(time.perf_counter() - t0)
        run[qid] = {
            external[d]: float(s)
            for d, s in zip(ranked.doc_ids.tolist(), ranked.scores.tolist(), strict=True)
        }
    return run, times
