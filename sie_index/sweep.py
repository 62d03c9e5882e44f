"""The quality / latency trade-off: one evaluation per point of a parameter grid.

Queries are encoded once; each grid point (``k_token`` x ``nprobe`` x
``n_rerank``) runs every query one at a time and records MRR@10, R@100 and
search latency (p50 / p95). Exhaustive MaxSim over every stored token is
scored once, as the ceiling, its latency that of an in-memory scan.
:func:`plot_sweep` (:mod:`sie_index.sweep_plot`) draws MRR@10 and R@100 against
p50 latency.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from sie_index.corpus import BeirDataset
from sie_index.errors import InvalidInput
from sie_index.evaluation import (
    Run,
    exhaustive_metrics,
    external_ids,
    judged_queries,
    metrics_of_run,
    percentiles,
    run_one,
    run_params,
)
from sie_index.index import Index
from sie_index.params import SearchParams
from sie_index.sweep_plot import plot_sweep

__all__ = ["SweepPoint", "SweepReport", "grid_from_args", "plot_sweep", "sweep"]

DEFAULT_GRID = {"k_token": (16, 32, 64, 128), "nprobe": (8, 16), "n_rerank": (32, 64, 128)}


@dataclass(frozen=True, kw_only=True)
class SweepPoint:
    """One grid point: its settings, its quality and its search latency (ms)."""

    k_token: int
    nprobe: int
    n_rerank: int
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    n_centroid: int = 0
    """Candidates screened down to ``n_rerank`` at this point (0: none): the base
    parameters' ``n_centroid``, where it is above the point's ``n_rerank``."""


@dataclass(frozen=True, kw_only=True)
class SweepReport:
    """Every grid point, the settings the grid varies from (``base_settings``:
    ``k_token``, ``nprobe``, ``n_rerank`` and ``n_centroid`` of the base search
    parameters, the defaults unless changed), and the exhaustive oracle's metrics and latency."""

    dataset: str
    queries: int
    base_settings: dict[str, int]
    points: list[SweepPoint]
    exhaustive_metrics: dict[str, float]
    exhaustive_latency_ms: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def sweep(
    index: Index,
    dataset: BeirDataset,
    *,
    grid: dict[str, Sequence[int]] | None = None,
    base: SearchParams | None = None,
    max_queries: int | None = None,
    dataset_name: str = "",
    progress: bool = False,
    exhaustive_latency_queries: int = 20,
) -> SweepReport:
    """Evaluate ``index`` at every point of ``grid`` (keys ``k_token``, ``nprobe``,
    ``n_rerank``; missing keys keep ``base``'s value)."""
    params = run_params(base).resolved(index.search_defaults)
    grid = {**{k: (getattr(params, k),) for k in DEFAULT_GRID}, **(grid or {})}
    external = external_ids(index)
    qids = judged_queries(dataset, external)[:max_queries]
    qrels = {q: dataset.qrels[q] for q in qids}
    Qs = index.encode_queries([dataset.queries[q] for q in qids]) if qids else []
    combos = list(itertools.product(grid["k_token"], grid["nprobe"], grid["n_rerank"]))
    points = []
    bar = tqdm(total=len(combos) * len(qids), desc="sweep", unit="q", disable=not progress)
    for k_token, nprobe, n_rerank in combos:
        p = params.with_(k_token=k_token, nprobe=nprobe, n_rerank=n_rerank)
        run: Run = {}
        times = []
        for qid, Q in zip(qids, Qs, strict=True):
            t0 = time.perf_counter()
            run[qid] = run_one(index, Q, p, external, dataset.queries[qid])
            times.append(time.perf_counter() - t0)
            bar.update()
        points.append(
            SweepPoint(
                k_token=k_token,
                nprobe=nprobe,
                n_rerank=n_rerank,
                metrics=metrics_of_run(qrels, run),
                latency_ms=percentiles(times),
                n_centroid=p.screen_depth(),
            )
        )
    bar.close()
    ex, ex_latency = exhaustive_metrics(
        index, list(Qs), qids, qrels, external, exhaustive_latency_queries
    )
    return SweepReport(
        dataset=dataset_name,
        queries=len(qids),
        base_settings={k: getattr(params, k) for k in (*DEFAULT_GRID, "n_centroid")},
        points=points,
        exhaustive_metrics=ex,
        exhaustive_latency_ms=ex_latency,
    )


def grid_from_args(k_token: str | None, nprobe: str | None, n_rerank: str | None) -> dict[str, Any]:
    """A grid from comma-separated values (None: the default values)."""
    out: dict[str, Any] = {}
    for name, raw in (("k_token", k_token), ("nprobe", nprobe), ("n_rerank", n_rerank)):
        try:
            values = DEFAULT_GRID[name] if raw is None else [int(v) for v in raw.split(",") if v]
        except ValueError as exc:
            raise InvalidInput(f"the {name} grid {raw!r} is not a list of integers") from exc
        if not values or min(values) < 1:
            raise InvalidInput(f"the {name} grid {raw!r} needs positive integers")
        out[name] = tuple(values)
    return out
