"""Vector codecs on the full corpus: bytes a token, quality and speed against exhaustive MaxSim.

    python scripts/bench.py full          # first: the f16 index and its exhaustive oracle
    python scripts/bench.py codecs        # then: every codec x dim, built from its vectors
    python scripts/bench.py codecs --variants f16,pq,pq-128 --reuse   # search again only

Each variant (codec, dim) is built in its own process from the stored vectors of
the f16 index that ``bench.py full`` built (those are the encoder's vectors in
float16, so no variant re-encodes the corpus), with the default index kind. Every
variant then answers the same encoded dev queries one at a time at default
settings and with a deeper rerank, and is scored against exhaustive MaxSim over
the f16 index's uncompressed vectors (the oracle of ``bench.py full``, read from
exhaustive.json under ``--out``), so the whole loss, ANN and codec together,
shows in one ratio. Bytes a token count every file of the index on disk (ANN
codes, token map, documents) over its tokens. ``--reuse`` searches the variants
an earlier ``--keep`` run left instead of building them again.
Writes codecs.json and codecs.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench_child import in_child, peak_rss_mb
from bench_report import write_report
from bench_runs import timed_run

VARIANTS = [("f16", 0), ("sq8", 0), ("pq", 0), ("f16", 128), ("sq8", 128), ("pq", 128)]
RERANK = (64, 256)
MEDIANS = "one run; p50 / p95 are over the queries of that run"


def build_variant(base: Path, target: Path, codec: str, dim: int) -> dict[str, Any]:
    """Build ``target`` from the documents and stored vectors of ``base``."""

    from sie_index.index import Index
    from storage import CodecChoice, StoreBuilder, StoreSnapshot

    t0 = time.perf_counter()
    with StoreSnapshot.open(base, verify_vectors=False) as snap:
        spec = snap.manifest.encoder
        with StoreBuilder(
            target, snap.codec.input_dim, overwrite=True, codec=CodecChoice(codec, dim or None)
        ) as builder:
            for batch in snap.live_documents():
                builder.add(batch)
            store_s = time.perf_counter() - t0
            builder.finish(encoder_spec=spec)
    build_s = time.perf_counter() - t0
    with Index.open(target, verify=False) as index:
        info = index.info()
    return {
        "codec": codec,
        "dim": dim or info["encoder"]["dim"],
        "store_s": store_s,
        "index_s": build_s - store_s,
        "build_s": build_s,
        "bytes": info["total_bytes"],
        "bytes_per_token": info["bytes_per_token"],
        "vector_bytes_per_token": info["vector_bytes_per_token"],
        "token_index": info["token_index"]["factory"],
        "files_bytes": info["files_bytes"],
        "peak_rss_mb": peak_rss_mb(),
    }


def search_variants(base: Path, paths: dict[str, str], queries: int | None) -> dict[str, Any]:
    """Encode the dev queries once, then run them against every variant."""
    import numpy as np

    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import RUN_DEPTH, external_ids, judged_queries, metrics_of_run
    from sie_index.index import Index
    from sie_index.params import SearchParams

    dataset = BeirDataset.load("debian-pkgs")
    with Index.open(base, verify=False) as index:
        external = external_ids(index)
        qids = judged_queries(dataset, external)[:queries]
        Qs = index.encode_queries([dataset.queries[q] for q in qids])
    qrels = {q: dataset.qrels[q] for q in qids}
    results: dict[str, Any] = {}
    for name, path in paths.items():
        with Index.open(path, verify=False) as index:
            ext = external_ids(index)
            rows = []
            for n_rerank in RERANK:
                params = SearchParams(k=RUN_DEPTH, n_rerank=n_rerank)
                run, times = timed_run(index, Qs, qids, ext, params)
                ms = np.array(times) * 1000
                # the same queries in one batch (search_batch), against the loop above
                t0 = time.perf_counter()
                index.rank(Qs, params)
                batch_s = time.perf_counter() - t0
                rows.append(
                    {
                        "n_rerank": n_rerank,
                        "metrics": metrics_of_run(qrels, run),
                        "p50_ms": float(np.percentile(ms, 50)),
                        "p95_ms": float(np.percentile(ms, 95)),
                        "single_qps": len(Qs) / float(np.sum(times)),
                        "batch_qps": len(Qs) / batch_s,
                    }
                )
            results[name] = rows
    return {"queries": len(qids), "search": results, "peak_rss_mb": peak_rss_mb()}


def _name(codec: str, dim: int) -> str:
    return f"{codec}-{dim}" if dim else codec


def table(report: dict[str, Any]) -> str:
    ex = report["exhaustive_metrics"]
    lines = [
        f"{report['queries']} dev queries; exhaustive MaxSim over the f16 vectors: "
        f"MRR@10 {ex['MRR@10']:.4f}, R@100 {ex['R@100']:.4f}. p50/p95: search only, one "
        "query at a time.",
        "",
        "| codec | dim | bytes a token (vectors) | ANN | n_rerank | MRR@10 | ratio | R@100 "
        "| ratio | p50 ms | p95 ms | q/s one at a time / batch | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, build in report["builds"].items():
        for row in report["search"][name]:
            m = row["metrics"]
            lines.append(
                f"| {build['codec']} | {build['dim']} | {build['bytes_per_token']:.1f} "
                f"({build['vector_bytes_per_token']}) | {build['token_index']} | "
                f"{row['n_rerank']} | {m['MRR@10']:.4f} | {m['MRR@10'] / ex['MRR@10']:.3f} | "
                f"{m['R@100']:.4f} | {m['R@100'] / ex['R@100']:.3f} | {row['p50_ms']:.2f} | "
                f"{row['p95_ms']:.2f} | {row['single_qps']:.0f} / {row['batch_qps']:.0f} | "
                f"{build['build_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default="runs/bench/index", help="the f16 index of `full`")
    parser.add_argument(
        "--variants-dir", help="where the variants' indexes go (default: OUT/codecs)"
    )
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--variants", default=",".join(_name(c, d) for c, d in VARIANTS))
    parser.add_argument("--keep", action="store_true", help="keep the variants' indexes")
    parser.add_argument(
        "--reuse", action="store_true", help="search (and keep) the variants a --keep run left"
    )


def command(args: argparse.Namespace) -> int:
    bench_out = Path(args.out)
    out = Path(args.variants_dir) if args.variants_dir else bench_out / "codecs"
    out.mkdir(parents=True, exist_ok=True)
    exhaustive = json.loads((bench_out / "exhaustive.json").read_text())
    builds: dict[str, Any] = {}
    for name in args.variants.split(","):
        codec, _, dim = name.partition("-")
        target = out / name
        if codec == "f16" and not dim:  # the bench.py index itself
            from sie_index.index import Index

            base_build = json.loads((bench_out / "build.json").read_text())
            with Index.open(args.index, verify=False) as index:
                info = index.info()
            builds[name] = {
                "codec": "f16",
                "dim": info["dim"],
                "path": args.index,
                "build_s": base_build["index_s"] + base_build["store_s"],
                "bytes_per_token": info["bytes_per_token"],
                "vector_bytes_per_token": info["vector_bytes_per_token"],
                "token_index": info["token_index"]["factory"],
                "note": "the bench.py full build (storing + indexing, encoding not counted)",
            }
            continue
        result_path = out / f"{name}.build.json"
        reused = args.reuse and (target / "CURRENT").is_file() and result_path.is_file()
        if reused:
            build = json.loads(result_path.read_text())
        else:
            build = in_child(
                build_variant, Path(args.index), target, codec, int(dim or 0), keep=result_path
            )
        builds[name] = {**build, "path": str(target)}
        done = "reused" if reused else "built"
        print(f"{done} {name}: {builds[name]['bytes_per_token']:.1f} B/token", flush=True)
    paths = {n: b["path"] for n, b in builds.items()}
    search = in_child(
        search_variants, Path(args.index), paths, args.queries, keep=out / "search.json"
    )
    report = {
        "queries": search["queries"],
        "exhaustive_metrics": exhaustive["exhaustive_metrics"],
        "builds": builds,
        "search": search["search"],
    }
    write_report(bench_out, "codecs", report, table(report), MEDIANS)
    if not (args.keep or args.reuse):
        for name in builds:
            if builds[name]["path"] != args.index:
                shutil.rmtree(out / name, ignore_errors=True)
    return 0
