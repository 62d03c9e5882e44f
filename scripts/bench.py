"""The full-corpus benchmark: build, search quality and speed against exhaustive MaxSim.

    python scripts/bench.py                      # full debian-pkgs, default encoder
    python scripts/bench.py --limit 5000         # a quick look
    python scripts/bench.py --reuse              # keep an index built by an earlier run
    python scripts/bench.py --encoding           # encoding speed only (scripts/bench_encoding.py)
    python scripts/bench.py --living             # changes in place (scripts/bench_living.py)
    python scripts/bench.py --codecs             # codec x dim on this index (bench_codecs.py)
    python scripts/bench.py --phases             # ms a phase, single vs batch (bench_phases.py)
    python scripts/bench.py --rerank-codes       # MRR a product code keeps (bench_rerank_codes.py)
    python scripts/bench.py --shards             # 1/2/4 shards, local and Ray (bench_shards.py)
    python scripts/bench.py --merges             # 10,000 single adds, merged? (bench_merges.py)
    python scripts/bench.py --server             # the HTTP service under load (bench_server.py)
    python scripts/bench.py --kinds              # index kinds by corpus size (bench_kinds.py)
    python scripts/bench.py --pooling            # pool factor 1/2/3, 3,000 docs (bench_pooling.py)

Each phase runs in its own process so its peak RSS is its own:
1. build: encode + store + token index (timings split into encoding and indexing);
2. search: every dev query one at a time (2 threads), the pipeline's metrics and
   latency, plus a small sweep of search settings on the same index;
3. exhaustive: the oracle, exact MaxSim over every stored token, its metrics and
   its per-query latency.
Writes runs/bench/report.json and report.md (a table with the exact command).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SWEEP = [  # (k_token, nprobe, n_rerank)
    (32, 8, 32),
    (64, 8, 64),
    (64, 16, 64),
    (128, 16, 128),
]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_build(args: argparse.Namespace) -> dict[str, Any]:
    from sie_index.index import Index

    index = Index.build(
        args.index,
        "debian-pkgs",
        limit=args.limit or None,
        on_error="skip",
        overwrite=True,
        index_kind=args.index_kind,
        codec=args.codec,
        progress=False,
    )
    r = index.build_report
    assert r is not None
    info = index.info()
    return {
        "documents": r.documents,
        "tokens": r.tokens,
        "skipped_lines": len(r.bad_lines),
        "encode_s": r.encode_seconds,
        "store_s": r.store_seconds,
        "index_s": r.index_seconds,
        "total_s": r.total_seconds,
        "index_bytes": info["total_bytes"],
        "bytes_per_token": info["bytes_per_token"],
        "files_bytes": info["files_bytes"],
        "token_index": info["token_index"],
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_search(args: argparse.Namespace) -> dict[str, Any]:
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import evaluate
    from sie_index.index import Index
    from sie_index.params import SearchParams

    index = Index.open(args.index, verify=False)
    dataset = BeirDataset.load("debian-pkgs")
    main = evaluate(index, dataset, params=SearchParams(), max_queries=args.queries)
    sweep = []
    for k_token, nprobe, n_rerank in SWEEP:
        p = SearchParams(k_token=k_token, nprobe=nprobe, n_rerank=n_rerank)
        rep = evaluate(index, dataset, params=p, max_queries=args.queries)
        sweep.append(
            {
                "k_token": k_token,
                "nprobe": nprobe,
                "n_rerank": n_rerank,
                "metrics": rep.metrics,
                "latency_ms": rep.latency_ms,
            }
        )
    return {"main": json.loads(main.to_json()), "sweep": sweep, "peak_rss_mb": _peak_rss_mb()}


def worker_exhaustive(args: argparse.Namespace) -> dict[str, Any]:
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import evaluate
    from sie_index.index import Index

    index = Index.open(args.index, verify=False)
    dataset = BeirDataset.load("debian-pkgs")
    rep = evaluate(
        index,
        dataset,
        exhaustive=True,
        max_queries=args.queries,
        exhaustive_latency_queries=args.exhaustive_latency_queries,
    )
    return {
        "exhaustive_metrics": rep.exhaustive_metrics,
        "exhaustive_latency_ms": rep.exhaustive_latency_ms,
        "peak_rss_mb": _peak_rss_mb(),
    }


WORKERS = {"build": worker_build, "search": worker_search, "exhaustive": worker_exhaustive}


def _run_worker(name: str, argv: list[str], out: Path) -> dict[str, Any]:
    target = out / f"{name}.json"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--worker", name, "--worker-out", str(target), *argv], check=True
    )
    result: dict[str, Any] = json.loads(target.read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


def _table(build: dict[str, Any], search: dict[str, Any], ex: dict[str, Any], command: str) -> str:
    m = search["main"]
    pm, lat = m["metrics"], m["latency_ms"]
    em, elat = ex["exhaustive_metrics"], ex["exhaustive_latency_ms"]
    rows = [
        (
            "documents / tokens",
            f"{build['documents']:,} / {build['tokens']:,} "
            f"({build['skipped_lines']} repeated-id lines skipped)",
        ),
        ("queries", f"{m['queries']}"),
        ("token index", json.dumps(build["token_index"])),
        (
            "MRR@10 pipeline / exhaustive / ratio",
            f"{pm['MRR@10']:.4f} / {em['MRR@10']:.4f} / {pm['MRR@10'] / em['MRR@10']:.3f}",
        ),
        ("nDCG@10 pipeline / exhaustive", f"{pm['nDCG@10']:.4f} / {em['nDCG@10']:.4f}"),
        ("R@1 / R@10 / R@100 pipeline", f"{pm['R@1']:.4f} / {pm['R@10']:.4f} / {pm['R@100']:.4f}"),
        (
            "R@1 / R@10 / R@100 exhaustive",
            f"{em['R@1']:.4f} / {em['R@10']:.4f} / {em['R@100']:.4f}",
        ),
        (
            "search-only latency p50 / p95 (ms)",
            f"{lat['search_p50']:.2f} / {lat['search_p95']:.2f}",
        ),
        (
            "with query encoding p50 / p95 (ms)",
            f"{lat['with_encoding_p50']:.2f} / {lat['with_encoding_p95']:.2f}",
        ),
        ("exhaustive MaxSim p50 / p95 (ms)", f"{elat['p50']:.1f} / {elat['p95']:.1f}"),
        ("exhaustive p50 / pipeline p50", f"{elat['p50'] / lat['search_p50']:.1f}x"),
        (
            "build: encoding / storing / indexing (s)",
            f"{build['encode_s']:.0f} / {build['store_s']:.0f} / {build['index_s']:.0f}",
        ),
        (
            "index size on disk",
            f"{build['index_bytes'] / 2**20:,.0f} MiB, "
            f"{build['bytes_per_token']:.0f} bytes a token",
        ),
        (
            "peak RSS build / search / exhaustive (MiB)",
            " / ".join(f"{r['peak_rss_mb']:,.0f}" for r in (build, search, ex)),
        ),
    ]
    lines = [f"Command: `{command}`", "", "| measure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += [
        "",
        "Search settings (same index, same queries):",
        "",
        "| k_token | nprobe | n_rerank | MRR@10 | R@100 | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in search["sweep"]:
        lines.append(
            f"| {s['k_token']} | {s['nprobe']} | {s['n_rerank']} | "
            f"{s['metrics']['MRR@10']:.4f} | {s['metrics']['R@100']:.4f} | "
            f"{s['latency_ms']['search_p50']:.2f} | {s['latency_ms']['search_p95']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--limit", type=int, default=0, help="documents to index (0: all)")
    parser.add_argument("--index", default="runs/bench/index")
    parser.add_argument("--index-kind", default="auto")
    parser.add_argument(
        "--codec",
        default="f16",
        help="f16 by default: its vectors are the exhaustive oracle's and --codecs's source",
    )
    parser.add_argument(
        "--queries", type=int, default=None, help="dev queries to run (default all)"
    )
    parser.add_argument("--exhaustive-latency-queries", type=int, default=50)
    parser.add_argument("--reuse", action="store_true", help="reuse an existing index")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument(
        "--encoding", action="store_true", help="measure encoding speed only (bench_encoding.py)"
    )
    parser.add_argument("--encoding-docs", type=int, default=2000, help="documents (--encoding)")
    parser.add_argument(
        "--living", action="store_true", help="measure changes in place only (bench_living.py)"
    )
    parser.add_argument("--living-docs", type=int, default=60_000, help="documents (--living)")
    parser.add_argument(
        "--codecs",
        action="store_true",
        help="codec x dim variants of the index an earlier run built (bench_codecs.py)",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="where a query's time goes, one at a time and batched (bench_phases.py)",
    )
    parser.add_argument(
        "--rerank-codes",
        action="store_true",
        help="MRR@10 each product code keeps when it scores the rerank (bench_rerank_codes.py)",
    )
    parser.add_argument(
        "--merges",
        action="store_true",
        help="single-document adds with and without segment merging (bench_merges.py)",
    )
    parser.add_argument("--merge-adds", type=int, default=10_000, help="adds (--merges)")
    parser.add_argument(
        "--shards",
        action="store_true",
        help="sharded search (1/2/4 shards, local and Ray) and Ray Data builds (bench_shards.py)",
    )
    parser.add_argument(
        "--server",
        action="store_true",
        help="QPS and p50/p99 of sie-index serve at 1, 4, 16 clients (bench_server.py)",
    )
    parser.add_argument(
        "--server-docs", type=int, default=20_000, help="synthetic documents (--server)"
    )
    parser.add_argument(
        "--kinds",
        action="store_true",
        help="index kinds by corpus size: build s, p50, quality (bench_kinds.py)",
    )
    parser.add_argument(
        "--kind-sizes", default="1500,5000,15000", help="documents a variant (--kinds)"
    )
    parser.add_argument(
        "--pooling",
        action="store_true",
        help="pool factors: tokens, bytes, quality, p50 (bench_pooling.py)",
    )
    parser.add_argument("--pooling-docs", type=int, default=3000, help="documents (--pooling)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = WORKERS[args.worker](args)
        Path(args.worker_out).write_text(json.dumps(result, indent=2))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.encoding:
        import bench_encoding

        result = bench_encoding.run(args.encoding_docs)
        result["command"] = "python " + " ".join(sys.argv)
        (out / "encoding.json").write_text(json.dumps(result, indent=2))
        print(bench_encoding.table(result))
        return 0
    if args.pooling:
        import bench_pooling

        pooling_args = ["--docs", str(args.pooling_docs), "--out", str(out / "pooling")]
        if args.queries:
            pooling_args += ["--queries", str(args.queries)]
        return bench_pooling.main(pooling_args)
    if args.codecs:
        import bench_codecs

        codec_args = ["--base", args.index, "--bench-out", str(out)]
        if args.queries:
            codec_args += ["--queries", str(args.queries)]
        return bench_codecs.main(codec_args)
    if args.phases:
        import bench_phases

        return bench_phases.main(
            ["--index", args.index, "--bench-out", str(out), "--queries", str(args.queries or 1000)]
        )
    if args.rerank_codes:
        import bench_rerank_codes

        codes_args = ["--index", args.index, "--bench-out", str(out)]
        if args.queries:
            codes_args += ["--queries", str(args.queries)]
        return bench_rerank_codes.main(codes_args)
    if args.shards:
        import bench_shards

        shard_args = ["--index", args.index, "--out", str(out)]
        if args.queries:
            shard_args += ["--queries", str(args.queries)]
        return bench_shards.main(shard_args)
    if args.merges:
        import bench_merges

        return bench_merges.main(["--adds", str(args.merge_adds), "--out", str(out)])
    if args.server:
        import bench_server

        source = ["--index", args.index] if args.reuse else ["--synthetic", str(args.server_docs)]
        return bench_server.main([*source, "--out", str(out)])
    if args.kinds:
        import bench_kinds

        kind_args = ["--sizes", args.kind_sizes, "--out", str(out)]
        if args.queries:
            kind_args += ["--queries", str(args.queries)]
        return bench_kinds.main(kind_args)
    if args.living:
        import bench_living

        return bench_living.main(["--docs", str(args.living_docs)])
    argv = [
        "--index",
        args.index,
        "--index-kind",
        args.index_kind,
        "--codec",
        args.codec,
        "--limit",
        str(args.limit),
        "--exhaustive-latency-queries",
        str(args.exhaustive_latency_queries),
    ]
    if args.queries:
        argv += ["--queries", str(args.queries)]
    if args.reuse and (Path(args.index) / "CURRENT").is_file() and (out / "build.json").is_file():
        build = json.loads((out / "build.json").read_text())
    else:
        build = _run_worker("build", argv, out)
    search = _run_worker("search", argv, out)
    ex = _run_worker("exhaustive", argv, out)
    command = "python " + " ".join(sys.argv)
    report = {"build": build, "search": search, "exhaustive": ex, "command": command}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    table = _table(build, search, ex, command)
    (out / "report.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
