"""Sharded search and build: 1 / 2 / 4 shards, local threads and Ray actors, against
the unsharded index in the same run; Ray Data encoding with 1 and 2 actors.

    python scripts/bench.py shards                          # on runs/bench/index
    python scripts/bench.py shards --index runs/bench/index --queries 500

Search: the f16 index an earlier ``bench.py full`` run built (``--index``) is
resharded into 1, 2 and 4 shards from its stored vectors (nothing re-encoded,
so every variant holds the same vectors). The dev queries are encoded once;
each variant answers each query one at a time (k=100, default settings):
p50 / p95 ms, QPS, MRR@10 and R@100, and their ratios to the unsharded index.
Build: ``--build-docs`` documents of debian-pkgs into 2 shards, encoded by a Ray
Data pool of 1 and of 2 actors, and half as many documents with 2 (documents/s,
and the driver's peak RSS), each in its own process. The resharded indexes go
under ``--out``. Writes shards.json and shards.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_child import in_child, peak_rss_mb
from bench_report import write_report

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MEDIANS = "one run; p50 / p95 are over the queries of that run"


def _search_all(index: Any, Qs: list[np.ndarray], qids: list[str], external: Any) -> dict[str, Any]:
    from sie_index.evaluation import percentiles

    run: dict[str, dict[str, float]] = {}
    times = []
    for qid, Q in zip(qids, Qs, strict=True):
        t = time.perf_counter()
        hits = index.search(Q, k=100)
        times.append(time.perf_counter() - t)
        run[qid] = {external(h): float(h.score) for h in hits}
    lat = percentiles(times)
    return {"run": run, "p50_ms": lat["p50"], "p95_ms": lat["p95"], "qps": len(Qs) / sum(times)}


def search_rows(index_path: Path, work: Path, queries: int | None) -> list[dict[str, Any]]:
    from sie_index import Index, ShardedIndex
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import metrics_of_run

    dataset = BeirDataset.load("debian-pkgs", "dev")
    qids = list(dataset.queries)[: queries or None]
    qrels = {q: dataset.qrels[q] for q in qids}
    rows = []
    with Index.open(index_path, verify=False) as one:
        Qs = one.encode_queries([dataset.queries[q] for q in qids])
        names = one.external_ids()
        for Q in Qs[:20]:  # warm, as every variant is
            one.search(Q, k=100)
        base = _search_all(one, Qs, qids, lambda h: names[h.doc_id])
        base_m = metrics_of_run(qrels, base.pop("run"))
        rows.append({"variant": "unsharded", **base, **base_m})
        for shards in (1, 2, 4):
            path = work / f"shards-{shards}"
            if not (path / "SHARDS").exists():
                if path.exists():
                    shutil.rmtree(path)
                ShardedIndex.from_index(index_path, path, shards=shards).close()
            for executor in ("local", "ray"):
                with ShardedIndex.open(path, verify=False, ray=executor == "ray") as sharded:
                    for Q in Qs[:20]:  # warm
                        sharded.search(Q, k=100)
                    result = _search_all(sharded, Qs, qids, lambda h: h.external_id)
                m = metrics_of_run(qrels, result.pop("run"))
                rows.append({"variant": f"{shards} shards, {executor}", **result, **m})
    for row in rows:
        row["mrr_ratio"] = row["MRR@10"] / base_m["MRR@10"]
        row["r100_ratio"] = row["R@100"] / base_m["R@100"]
        row["p50_over_unsharded_ms"] = row["p50_ms"] - rows[0]["p50_ms"]
    return rows


def build_worker(docs: int, actors: int, out: Path) -> dict[str, Any]:
    """One Ray Data build of ``docs`` documents into 2 shards (run in its own process)."""
    from sie_index import ShardedIndex

    t = time.perf_counter()
    with ShardedIndex.build(
        out,
        "debian-pkgs",
        shards=2,
        limit=docs,
        ray=True,
        encode_actors=actors,
        overwrite=True,
        progress=False,
    ) as index:
        seconds = time.perf_counter() - t
        n = len(index)
    return {
        "actors": actors,
        "documents": n,
        "seconds": seconds,
        "docs_per_s": n / seconds,
        "driver_peak_rss_mb": peak_rss_mb(),
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | p50 ms | p95 ms | QPS | MRR@10 | ratio | R@100 | ratio | p50 over unsharded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["search"]:
        lines.append(
            f"| {r['variant']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['qps']:.1f} "
            f"| {r['MRR@10']:.4f} | {r['mrr_ratio']:.3f} | {r['R@100']:.4f} "
            f"| {r['r100_ratio']:.3f} | {r['p50_over_unsharded_ms']:+.2f} ms |"
        )
    lines += [
        "",
        "| encode actors | documents | s | documents/s | driver peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for b in result["build"]:
        lines.append(
            f"| {b['actors']} | {b['documents']} | {b['seconds']:.1f} | {b['docs_per_s']:.1f} "
            f"| {b['driver_peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default="runs/bench/index", help="an f16 index to reshard")
    parser.add_argument("--queries", type=int, default=None, help="dev queries (default all)")
    parser.add_argument("--build-docs", type=int, default=2000, help="documents a build")
    parser.add_argument("--skip-build", action="store_true", help="search figures only")


def command(args: argparse.Namespace) -> int:
    import ray

    out = Path(args.out)
    ray.init(include_dashboard=False, log_to_driver=False)
    result: dict[str, Any] = {"search": search_rows(Path(args.index), out, args.queries)}
    ray.shutdown()
    # 1 and 2 actors on the same documents; 2 actors on half of them too, so the
    # driver's peak RSS is seen against corpus size
    runs = [(1, args.build_docs), (2, args.build_docs), (2, args.build_docs // 2)]
    result["build"] = [
        in_child(build_worker, docs, actors, out / "shards-build")
        for actors, docs in ([] if args.skip_build else runs)
    ]
    write_report(out, "shards", result, table(result), MEDIANS)
    return 0
