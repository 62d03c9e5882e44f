"""Runs of encoded queries the benchmarks share: timed runs, one ``rank`` call a
query (what the codec, pooling and scale benchmarks measure each variant with),
and exhaustive MaxSim's run, kept in a file and reused while its key holds."""

from __future__ import annotations

import json
import time
from pathlib import Path
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


def exhaustive_run(
    index: Any, Qs: list[Any], qids: list[str], external: list[str], keep: Path, key: Any
) -> dict[str, dict[str, float]]:
    """Exhaustive MaxSim's run of the queries (100 deep), kept in ``keep`` with
    ``key`` (what the run depends on) and read back while the key is the same: the
    oracle is most of a benchmark's time."""
    from sie_index.evaluation import RUN_DEPTH

    if keep.is_file():
        kept = json.loads(keep.read_text())
        if kept["key"] == key:
            return dict(kept["run"])
    run = {
        qid: {external[int(d)]: float(s) for d, s in zip(r.doc_ids, r.scores, strict=True)}
        for qid, r in zip(qids, index.exhaustive(Qs, RUN_DEPTH), strict=True)
    }
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text(json.dumps({"key": key, "run": run}))
    return run
