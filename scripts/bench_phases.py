"""Where a query's milliseconds go, one query at a time against one batch.

    python scripts/bench.py phases --index runs/bench/base/index --queries 1000

On an index an earlier ``bench.py full`` run built: encodes the first ``--queries`` dev
queries once, then, ``--runs`` times, searches them one ``search`` call at a time
and all in one ``search_batch`` call (default settings, ids only), timing each
phase of the pipeline (``sie_index.phases``: ANN, candidates, vector reads,
exact MaxSim, SQLite). Reports the medians over the runs: queries a second each
way, their ratio (measured in the same run), the single query's p50, and the
milliseconds a query in each phase. A batch runs its queries on threads side by
side, so its phase times add up the threads' seconds (the work, not the wall).
Writes phases.json and phases.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_report import write_report


def run(index_path: str, queries: int, runs: int) -> dict[str, Any]:
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import external_ids, judged_queries
    from sie_index.index import Index
    from sie_index.phases import PHASES, PhaseTimes

    dataset = BeirDataset.load("debian-pkgs")
    with Index.open(index_path, verify=False) as index:
        qids = judged_queries(dataset, external_ids(index))[:queries]
        Qs = index.encode_queries([dataset.queries[q] for q in qids])
        index.search_batch(Qs[:20])  # warm the page cache and FAISS
        rounds = []
        for _ in range(runs):
            single, latencies = PhaseTimes(), []
            t0 = time.perf_counter()
            for Q in Qs:
                t = time.perf_counter()
                index.search(Q, timings=single)
                latencies.append(time.perf_counter() - t)
            single_s = time.perf_counter() - t0
            batch = PhaseTimes()
            t0 = time.perf_counter()
            index.search_batch(Qs, timings=batch)
            batch_s = time.perf_counter() - t0
            rounds.append(
                {
                    "single_qps": len(Qs) / single_s,
                    "batch_qps": len(Qs) / batch_s,
                    "ratio": single_s / batch_s,
                    "single_p50_ms": 1000 * float(np.median(latencies)),
                    "single_ms": single.per_query_ms(len(Qs)),
                    "batch_ms": batch.per_query_ms(len(Qs)),
                }
            )
    median = {
        key: float(np.median([r[key] for r in rounds]))
        for key in ("single_qps", "batch_qps", "ratio", "single_p50_ms")
    }
    for way in ("single_ms", "batch_ms"):
        median[way] = {p: float(np.median([r[way][p] for r in rounds])) for p in PHASES}
    return {"queries": len(Qs), "runs": runs, "median": median, "rounds": rounds}


def kernels(index_path: str, queries: int, rounds: int = 2) -> dict[str, Any]:
    """Single-query latency and phases with the rerank's product by the compiled
    float16 kernel (:mod:`sie_index.fused_maxsim`, when numba is installed), by
    torch and by NumPy (both after widening the rows), alternating blocks of 50
    queries (the order turns every block)."""
    import sie_index.search as search
    from sie_index import fused_maxsim
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import external_ids, judged_queries
    from sie_index.index import Index
    from sie_index.phases import PhaseTimes
    from sie_index.scoring import segment_maxsim, segment_maxsim_torch

    dataset = BeirDataset.load("debian-pkgs")
    chosen = {"numpy": segment_maxsim, "torch": segment_maxsim_torch}
    names = ["fused", *chosen] if fused_maxsim.kernel() is not None else list(chosen)
    seen: dict[str, tuple[list[float], PhaseTimes]] = {k: ([], PhaseTimes()) for k in names}
    try:
        with Index.open(index_path, verify=False) as index:
            qids = judged_queries(dataset, external_ids(index))[:queries]
            Qs = index.encode_queries([dataset.queries[q] for q in qids])
            index.search_batch(Qs[:20])  # warm the page cache and FAISS
            for r in range(rounds):
                for b in range(0, len(Qs), 50):
                    turn = (b // 50 + r) % len(names)
                    for name in names[turn:] + names[:turn]:
                        fused_maxsim.set_enabled(name == "fused")
                        search.segment_maxsim_torch = chosen.get(name, segment_maxsim_torch)  # type: ignore[assignment]
                        latencies, times = seen[name]
                        for Q in Qs[b : b + 50]:
                            t = time.perf_counter()
                            index.search(Q, timings=times)
                            latencies.append(time.perf_counter() - t)
    finally:
        search.segment_maxsim_torch = segment_maxsim_torch  # type: ignore[assignment]
        fused_maxsim.set_enabled(True)
    return {
        name: {
            "p50_ms": 1000 * float(np.median(latencies)),
            "ms": times.per_query_ms(len(latencies)),
        }
        for name, (latencies, times) in seen.items()
    }


BEFORE = {"k_token": 64, "nprobe": 16, "n_rerank": 64, "n_centroid": 0}
"""The fixed settings the index-derived defaults replaced (n_rerank at least k)."""


def compare(index_path: str, queries: int, rounds: int = 2) -> dict[str, Any]:
    """Before against after, one query at a time, at k=100 and k=10, interleaved in
    blocks of 50 queries (the order flips every block): before, the fixed settings,
    FAISS's scan of every centroid and torch's product of widened rows; after, the
    index's own defaults, the graph over the centroids (:mod:`storage.coarse`, from
    2,048 lists on), the compiled float16 kernel
    (:mod:`sie_index.fused_maxsim`) and the compiled candidates
    (:mod:`sie_index.candidate_scores`)."""
    from sie_index import candidate_scores, fused_maxsim
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import external_ids, judged_queries
    from sie_index.index import Index
    from sie_index.params import SearchParams
    from sie_index.phases import PhaseTimes
    from storage import coarse

    dataset = BeirDataset.load("debian-pkgs")
    graph_from = coarse.COARSE_GRAPH_MIN_LISTS
    out: dict[str, Any] = {}
    try:
        with Index.open(index_path, verify=False) as index:
            token_index = index._snapshot.token_index
            qids = judged_queries(dataset, external_ids(index))[:queries]
            Qs = index.encode_queries([dataset.queries[q] for q in qids])
            index.search_batch(Qs[:20])  # warm the page cache, FAISS and the graph
            # which coarse step each part takes is decided on its first search and
            # kept: each variant gets its own decisions (the graph built once)
            coarse.COARSE_GRAPH_MIN_LISTS = 1 << 40
            token_index._coarse.clear()
            index.search_batch(Qs[:1])
            scan = dict(token_index._coarse)
            coarse.COARSE_GRAPH_MIN_LISTS = graph_from
            token_index._coarse.clear()
            index.search_batch(Qs[:20])
            graph = dict(token_index._coarse)
            for k in (100, 10):
                variants = {
                    "before": (SearchParams(k=k, **BEFORE), scan),
                    "after": (SearchParams(k=k), graph),
                }
                seen = {name: ([], PhaseTimes()) for name in variants}
                for r in range(rounds):
                    for b in range(0, len(Qs), 50):
                        names = list(variants) if (b // 50 + r) % 2 == 0 else list(variants)[::-1]
                        for name in names:
                            params, decided = variants[name]
                            token_index._coarse = dict(decided)
                            fused_maxsim.set_enabled(name == "after")
                            candidate_scores.KERNEL.set_enabled(name == "after")
                            latencies, times = seen[name]
                            for Q in Qs[b : b + 50]:
                                t = time.perf_counter()
                                index.rank([Q], params, threads=1, timings=times)
                                latencies.append(time.perf_counter() - t)
                for name, (latencies, times) in seen.items():
                    resolved = variants[name][0].resolved(index.search_defaults)
                    out[f"{name} k={k}"] = {
                        "settings": {
                            key: getattr(resolved, key)
                            for key in ("k_token", "nprobe", "n_rerank", "n_centroid")
                        },
                        "p50_ms": 1000 * float(np.median(latencies)),
                        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
                        "ms": times.per_query_ms(len(latencies)),
                    }
    finally:
        coarse.COARSE_GRAPH_MIN_LISTS = graph_from
        fused_maxsim.set_enabled(True)
        candidate_scores.KERNEL.set_enabled(True)
    return out


def table(result: dict[str, Any]) -> str:
    m = result["median"]
    phases = list(m["single_ms"])
    lines = [
        f"{result['queries']} dev queries, default settings, medians of {result['runs']} runs: "
        f"one at a time {m['single_qps']:.0f} q/s (p50 {m['single_p50_ms']:.2f} ms), "
        f"one batch {m['batch_qps']:.0f} q/s, ratio {m['ratio']:.2f}.",
        "",
        "| ms a query | " + " | ".join(phases) + " | sum |",
        "|---|" + "---|" * (len(phases) + 1),
    ]
    for name, key in (("one at a time", "single_ms"), ("batch (thread sums)", "batch_ms")):
        ms = m[key]
        cells = " | ".join(f"{ms[p]:.2f}" for p in phases)
        lines.append(f"| {name} | {cells} | {sum(ms.values()):.2f} |")
    if "kernels" in result:
        lines += [
            "",
            "One query at a time, the rerank's product by kernel (interleaved blocks of 50):",
            "",
            "| kernel | p50 ms | " + " | ".join(phases) + " | after the ANN |",
            "|---|---|" + "---|" * (len(phases) + 1),
        ]
        for name, row in result["kernels"].items():
            ms = row["ms"]
            cells = " | ".join(f"{ms[p]:.2f}" for p in phases)
            after = sum(v for p, v in ms.items() if p != "ann")
            lines.append(f"| {name} | {row['p50_ms']:.2f} | {cells} | {after:.2f} |")
    if "compare" in result:
        lines += [
            "",
            "Before (fixed 64 / 16 / max(64, k), every centroid scanned, torch's product of "
            "widened rows, NumPy's candidates) against after (the index's own defaults, the "
            "graph over the centroids, the compiled float16 kernel and candidates), one "
            "query at a time "
            "(ids only), interleaved blocks of 50:",
            "",
            "| settings | k_token / nprobe / n_rerank | p50 ms | p95 ms | "
            + " | ".join(phases)
            + " |",
            "|---|---|---|---|" + "---|" * len(phases),
        ]
        for name, row in result["compare"].items():
            ms, st = row["ms"], row["settings"]
            cells = " | ".join(f"{ms[p]:.2f}" for p in phases)
            lines.append(
                f"| {name} | {st['k_token']} / {st['nprobe']} / {st['n_rerank']} | "
                f"{row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {cells} |"
            )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default="runs/bench/index")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--compare", action="store_true", help="also before (fixed settings) against after"
    )


def command(args: argparse.Namespace) -> int:
    result = run(args.index, args.queries, args.runs)
    result["kernels"] = kernels(args.index, args.queries)
    if args.compare:
        result["compare"] = compare(args.index, args.queries)
    medians = (
        f"phases and q/s: medians of {args.runs} runs; kernels: one run of "
        "interleaved blocks of 50 queries"
    )
    write_report(Path(args.out), "phases", result, table(result), medians)
    return 0
