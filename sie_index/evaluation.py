"""Offline evaluation on a BEIR folder: quality, latency, and the cost of the ANN.

Every query is run one at a time (as a user would), timed twice: search only
(query already encoded) and with query encoding. Metrics come from ir-measures
(nDCG@10, MRR@10, Recall@1/10/100), averaged over every judged query, a query
with no results counting as zero. With ``exhaustive=True`` every query is also
scored by exact MaxSim over all stored tokens, and the pipeline's metrics are
reported as a ratio of that oracle's, so the loss from the ANN is visible; the
oracle's latency is that of an in-memory bfloat16 scan of every token
(:class:`ResidentScan`), the brute-force competitor a user would write.
Writes a TREC run file and a JSON report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG
from tqdm import tqdm

from sie_index.corpus import BeirDataset
from sie_index.index import Index
from sie_index.params import SearchParams

__all__ = [
    "EvalReport",
    "Run",
    "evaluate",
    "exhaustive_metrics",
    "external_ids",
    "judged_documents_indexed",
    "judged_queries",
    "metrics_of_run",
    "percentiles",
    "run_one",
    "run_params",
    "trec_lines",
    "write_trec_run",
]

MEASURES = {"nDCG@10": nDCG @ 10, "MRR@10": RR @ 10, "R@1": R @ 1, "R@10": R @ 10, "R@100": R @ 100}
RUN_DEPTH = 100

Run = dict[str, dict[str, float]]


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """Everything one evaluation measured."""

    dataset: str
    split: str
    queries: int
    queries_without_indexed_answer: int
    params: dict[str, Any]
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    exhaustive_metrics: dict[str, float] | None = None
    ratio_to_exhaustive: dict[str, float] | None = None
    exhaustive_latency_ms: dict[str, float] | None = None
    index: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def metrics_of_run(qrels: Mapping[str, Mapping[str, int]], run: Run) -> dict[str, float]:
    """Mean of each measure over every judged query (missing or empty runs count as 0)."""
    sums = dict.fromkeys(MEASURES, 0.0)
    names = {str(m): name for name, m in MEASURES.items()}
    judged = {q: dict(r) for q, r in qrels.items()}
    for result in ir_measures.iter_calc(list(MEASURES.values()), judged, run):
        sums[names[str(result.measure)]] += float(result.value)
    n = max(len(judged), 1)
    return {name: total / n for name, total in sums.items()}


def trec_lines(qid: str, ranked: Iterable[tuple[str, float]], name: str) -> Iterator[str]:
    """One query's results, best first, as TREC run lines (``qid Q0 docid rank score
    name``); ranks count from 1."""
    for rank, (doc, score) in enumerate(ranked, start=1):
        yield f"{qid} Q0 {doc} {rank} {score:.6f} {name}"


def write_trec_run(path: Path, run: Run, name: str = "sie-index") -> None:
    """Write ``run`` as a TREC run file, each query's documents by score (ties by id)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            fh.writelines(line + "\n" for line in trec_lines(qid, ranked, name))


def percentiles(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {"p50": 0.0, "p95": 0.0, "mean": 0.0}
    arr = np.asarray(values_s) * 1000.0
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "mean": float(arr.mean()),
    }


def evaluate(
    index: Index,
    dataset: BeirDataset,
    *,
    params: SearchParams | None = None,
    exhaustive: bool = False,
    exhaustive_latency_queries: int = 20,
    max_queries: int | None = None,
    run_path: Path | None = None,
    report_path: Path | None = None,
    dataset_name: str = "",
    split: str = "dev",
    progress: bool = False,
) -> EvalReport:
    """Run every query of ``dataset`` against ``index`` and measure quality and latency."""
    params = run_params(params).resolved(index.search_defaults)  # the report says which
    external = external_ids(index)
    judged = judged_queries(dataset, external)
    qids = judged[:max_queries]
    texts = [dataset.queries[q] for q in qids]
    qrels = {q: dataset.qrels[q] for q in qids}
    index.encode_queries(texts[:1])  # load the model before timing
    run: Run = {}
    Qs: list[np.ndarray] = []
    search_s: list[float] = []
    total_s: list[float] = []
    for qid, text in tqdm(
        list(zip(qids, texts, strict=True)), desc="queries", unit="q", disable=not progress
    ):
        t0 = time.perf_counter()
        Q = index.encode_queries([text])[0]
        t1 = time.perf_counter()
        run[qid] = run_one(index, Q, params, external, text)
        t2 = time.perf_counter()
        search_s.append(t2 - t1)
        total_s.append(t2 - t0)
        Qs.append(Q)
    metrics = metrics_of_run(qrels, run)
    latency = {
        **{f"search_{k}": v for k, v in percentiles(search_s).items()},
        **{f"with_encoding_{k}": v for k, v in percentiles(total_s).items()},
    }
    ex_metrics = ratio = ex_latency = None
    if exhaustive:
        ex_metrics, ex_latency = exhaustive_metrics(
            index, Qs, qids, qrels, external, exhaustive_latency_queries
        )
        ratio = {k: (metrics[k] / v if v else 0.0) for k, v in ex_metrics.items()}
    report = EvalReport(
        dataset=dataset_name,
        split=split,
        queries=len(qids),
        queries_without_indexed_answer=len(dataset.queries) - len(judged),
        params={k: v for k, v in asdict(params).items() if k not in ("filter", "_compiled")},
        metrics=metrics,
        latency_ms=latency,
        exhaustive_metrics=ex_metrics,
        ratio_to_exhaustive=ratio,
        exhaustive_latency_ms=ex_latency,
        index={k: v for k, v in index.info().items() if k not in ("files_bytes",)},
    )
    if run_path is not None:
        write_trec_run(Path(run_path), run)
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(report.to_json(), encoding="utf-8")
    return report


def run_params(params: SearchParams | None) -> SearchParams:
    """``params`` with ``k`` at least the run depth (100)."""
    params = params or SearchParams()
    return params.with_(k=max(params.k, RUN_DEPTH))


def external_ids(index: Index) -> list[str]:
    """Internal id -> external id, read once (evaluation maps every result)."""
    return index.external_ids()


def judged_documents_indexed(index: Index, dataset: BeirDataset) -> tuple[int, int]:
    """How many of the documents ``dataset`` judges relevant ``index`` holds, and how
    many it judges: few held usually means an index of another corpus, or a slice."""
    judged = sorted({d for rel in dataset.qrels.values() for d, score in rel.items() if score > 0})
    return len(index.lookup(judged)), len(judged)


def judged_queries(dataset: BeirDataset, external: list[str]) -> list[str]:
    """Queries whose relevant documents the index holds (an index of a slice of the
    corpus cannot answer the others; reports say how many were left out)."""
    indexed = set(external)
    return [q for q in dataset.queries if any(d in indexed for d in dataset.qrels.get(q, {}))]


def run_one(
    index: Index, Q: np.ndarray, params: SearchParams, external: list[str], text: str | None = None
) -> dict[str, float]:
    """One encoded query's results, as a run entry (external id -> score); ``text``:
    the query's, which a hybrid search needs."""
    ranked = index.rank([Q], params, threads=1, texts=[text])[0]
    return {external[d]: float(s) for d, s in zip(ranked.doc_ids, ranked.scores, strict=True)}


def exhaustive_metrics(
    index: Index,
    Qs: list[np.ndarray],
    qids: list[str],
    qrels: Mapping[str, Mapping[str, int]],
    external: list[str],
    latency_queries: int,
) -> tuple[dict[str, float], dict[str, float]]:
    ranked = index.exhaustive(Qs, RUN_DEPTH)
    run = {
        qid: {external[int(d)]: float(s) for d, s in zip(r.doc_ids, r.scores, strict=True)}
        for qid, r in zip(qids, ranked, strict=True)
    }
    # Latency of the brute-force competitor: every vector in memory (bfloat16),
    # one scan per query, as the usual in-memory MaxSim baseline runs.
    timings = []
    if latency_queries > 0 and Qs:
        scan = index.resident_scan()
        for Q in Qs[:latency_queries]:
            t0 = time.perf_counter()
            scan.scores(Q)
            timings.append(time.perf_counter() - t0)
        del scan
    return metrics_of_run(qrels, run), percentiles(timings)
