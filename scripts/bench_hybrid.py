"""Hybrid search against exhaustive MaxSim, BM25 alone and the plain pipeline, one run.

    python scripts/bench.py hybrid --index runs/bench/index       # a built index with a lexicon
    python scripts/bench.py hybrid --index IDX --weights 0.5,0.8,0.9 --queries 500

The dev queries of debian-pkgs whose relevant documents the index holds are
encoded once; each is answered one at a time (one thread, 100 hits) by every
variant, in one process, in this order each round: the pipeline (hybrid off),
hybrid with ``fusion="maxsim"``, ``"rrf"`` and ``"weighted"`` at each of
``--weights`` (the weight of MaxSim), the default fusion at each of
``--lexical-ks``, and BM25 alone (the lexicon's best 100).
Exhaustive MaxSim over every stored vector is the reference, in the same run
(its run is kept in OUT/hybrid-exhaustive.json and reused while the index and
the queries are the same).
Latency is the ``rank`` call of an encoded query (its text goes along for the
lexicon); the lexical stage is the search's own ``lexical`` phase (BM25 and the
join), its p50 taken over the queries. An index without a lexicon gets one
first: ``sie-index compact INDEX --lexicon``.
Writes hybrid.json and hybrid.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_report import write_report
from bench_runs import exhaustive_run

MEDIANS = "one run; p50 / p95 are over the queries of that run"


def measure(
    index_path: str, weights: list[float], lexical_ks: list[int], queries: int | None, out: Path
) -> dict[str, Any]:
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import RUN_DEPTH, external_ids, judged_queries, metrics_of_run
    from sie_index.index import Index
    from sie_index.params import SearchParams
    from sie_index.phases import PhaseTimes

    dataset = BeirDataset.load("debian-pkgs")
    index = Index.open(index_path)
    external = external_ids(index)
    qids = judged_queries(dataset, external)[:queries]
    texts = [dataset.queries[q] for q in qids]
    qrels = {q: dataset.qrels[q] for q in qids}
    Qs = index.encode_queries(texts)
    base = SearchParams(k=RUN_DEPTH)
    variants: dict[str, SearchParams] = {
        "pipeline": base,
        "hybrid maxsim": base.with_(hybrid=True, fusion="maxsim"),
        "hybrid rrf": base.with_(hybrid=True, fusion="rrf"),
        **{
            f"hybrid weighted {w:g}": base.with_(hybrid=True, fusion="weighted", fusion_weight=w)
            for w in weights
        },
        **{
            f"hybrid weighted, lexical_k {n}": base.with_(hybrid=True, lexical_k=n)
            for n in lexical_ks
        },
    }
    index.rank(Qs[:5], base.with_(hybrid=True), threads=1, texts=texts[:5])  # warm
    rows: dict[str, dict[str, Any]] = {}
    for name, params in variants.items():
        run: dict[str, dict[str, float]] = {}
        times, lexical = [], []
        for qid, Q, text in zip(qids, Qs, texts, strict=True):
            timings = PhaseTimes()
            t0 = time.perf_counter()
            ranked = index.rank([Q], params, threads=1, texts=[text], timings=timings)[0]
            times.append(time.perf_counter() - t0)
            lexical.append(timings.seconds["lexical"])
            run[qid] = {
                external[d]: float(s)
                for d, s in zip(ranked.doc_ids.tolist(), ranked.scores.tolist(), strict=True)
            }
        rows[name] = {
            "metrics": metrics_of_run(qrels, run),
            "p50_ms": 1000 * float(np.median(times)),
            "p95_ms": 1000 * float(np.percentile(times, 95)),
            "lexical_p50_ms": 1000 * float(np.median(lexical)),
        }
    lexicon = index._searcher.lexical()
    live = ~index._snapshot.spans.deleted
    run, times = {}, []
    for qid, text in zip(qids, texts, strict=True):
        t0 = time.perf_counter()
        ids, scores = lexicon.scores(text)
        top = np.argsort(-scores, kind="stable")[:RUN_DEPTH]
        times.append(time.perf_counter() - t0)
        run[qid] = {external[int(ids[i])]: float(scores[i]) for i in top if live[ids[i]]}
    rows["BM25 alone"] = {
        "metrics": metrics_of_run(qrels, run),
        "p50_ms": 1000 * float(np.median(times)),
        "p95_ms": 1000 * float(np.percentile(times, 95)),
        "lexical_p50_ms": 1000 * float(np.median(times)),
    }
    t0 = time.perf_counter()
    info = index.info(growth=False)
    ex_run = _exhaustive_run(index, Qs, qids, external, out / "hybrid-exhaustive.json", info)
    exhaustive = metrics_of_run(qrels, ex_run)
    index.close()
    return {
        "index": index_path,
        "documents": info["documents"],
        "tokens": info["tokens"],
        "queries": len(qids),
        "exhaustive": exhaustive,
        "exhaustive_s": time.perf_counter() - t0,
        "variants": rows,
    }


def _exhaustive_run(
    index: Any, Qs: list[Any], qids: list[str], external: list[str], keep: Path, info: Any
) -> dict[str, dict[str, float]]:
    """Exhaustive MaxSim's run, kept in ``keep`` and reused while the index (its
    folder and generation) and the queries are the same: it is most of the time."""
    key = {"index": str(index.path), "generation": info["generation"], "queries": qids}
    return exhaustive_run(index, Qs, qids, external, keep, key)


def table(report: dict[str, Any]) -> str:
    ex = report["exhaustive"]
    lines = [
        f"{report['documents']:,} documents, {report['queries']} judged dev queries, 100 hits "
        f"each; exhaustive MaxSim: MRR@10 {ex['MRR@10']:.4f}, R@100 {ex['R@100']:.4f}.",
        "",
        "| variant | MRR@10 | vs exhaustive | R@100 | nDCG@10 | p50 ms | p95 ms | lexical p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["variants"].items():
        m = row["metrics"]
        lines.append(
            f"| {name} | {m['MRR@10']:.4f} | {m['MRR@10'] - ex['MRR@10']:+.4f} | "
            f"{m['R@100']:.4f} | {m['nDCG@10']:.4f} | {row['p50_ms']:.2f} | "
            f"{row['p95_ms']:.2f} | {row['lexical_p50_ms']:.2f} |"
        )
    return "\n".join(lines)


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--index", default="runs/bench/index", help="a built index with a lexicon")
    sub.add_argument(
        "--weights", default="0.5,0.7,0.8,0.9", help="weights of MaxSim for fusion=weighted"
    )
    sub.add_argument(
        "--lexical-ks",
        default="25,100",
        help="lexical_k values for the default fusion (besides the default, 50)",
    )
    sub.add_argument("--queries", type=int, default=None, help="at most this many dev queries")


def command(args: argparse.Namespace) -> int:
    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    lexical_ks = [int(n) for n in args.lexical_ks.split(",") if n.strip()]
    report = measure(args.index, weights, lexical_ks, args.queries, Path(args.out))
    write_report(Path(args.out), "hybrid", report, table(report), MEDIANS)
    print(table(report))
    return 0
