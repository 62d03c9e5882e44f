"""Vector codecs on the full corpus: bytes a token, quality and speed against exhaustive MaxSim.

    python scripts/bench.py               # first: the f16 index and its exhaustive oracle
    python scripts/bench.py --codecs      # then: every codec x dim, built from its vectors

Each variant (codec, dim) is built in its own process from the stored vectors of
the f16 index that ``scripts/bench.py`` built (those are the encoder's vectors in
float16, so no variant re-encodes the corpus), with the default index kind. Every
variant then answers the same encoded dev queries one at a time at default
settings and with a deeper rerank, and is scored against exhaustive MaxSim over
the f16 index's uncompressed vectors (the oracle of ``scripts/bench.py``), so the
whole loss, ANN and codec together, shows in one ratio. Bytes a token count every
file of the index on disk (ANN codes, token map, documents) over its tokens.
Writes runs/bench/codecs.json and codecs.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = [("f16", 0), ("sq8", 0), ("pq", 0), ("f16", 128), ("sq8", 128), ("pq", 128)]
RERANK = (64, 256)
CHUNK_DOCS = 1024


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_variant(base: Path, target: Path, codec: str, dim: int) -> dict[str, Any]:
    """Build ``target`` from the documents and stored vectors of ``base``."""
    import numpy as np

    from sie_index.index import Index
    from storage import CodecChoice, PendingDoc, StoreBuilder, StoreSnapshot

    t0 = time.perf_counter()
    with StoreSnapshot.open(base, verify_vectors=False) as snap:
        spec = snap.manifest.encoder
        with StoreBuilder(
            target, snap.codec.input_dim, overwrite=True, codec=CodecChoice(codec, dim or None)
        ) as builder:
            live = np.flatnonzero(~snap.spans.deleted)
            for lo in range(0, len(live), CHUNK_DOCS):
                chunk = live[lo : lo + CHUNK_DOCS]
                stored = snap.docs.fetch(chunk.tolist(), text=True, metadata=True)
                counts = snap.spans.token_count[chunk]
                vectors = snap.tokens.spans(snap.spans.token_start[chunk], counts)
                parts = np.split(vectors, np.cumsum(counts)[:-1])
                builder.add(
                    [
                        PendingDoc(
                            external_id=stored[d].external_id,
                            text=stored[d].text,
                            metadata=stored[d].metadata,
                            vectors=v,
                        )
                        for d, v in zip(chunk.tolist(), parts, strict=True)
                    ]
                )
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
        "peak_rss_mb": _peak_rss_mb(),
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
                index.rank(Qs[:5], params, threads=1)  # warm the page cache and FAISS
                run: dict[str, dict[str, float]] = {}
                times = []
                for qid, Q in zip(qids, Qs, strict=True):
                    t0 = time.perf_counter()
                    ranked = index.rank([Q], params, threads=1)[0]
                    times.append(time.perf_counter() - t0)
                    run[qid] = {
                        ext[d]: float(s)
                        for d, s in zip(
                            ranked.doc_ids.tolist(), ranked.scores.tolist(), strict=True
                        )
                    }
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
    return {"queries": len(qids), "search": results, "peak_rss_mb": _peak_rss_mb()}


def _name(codec: str, dim: int) -> str:
    return f"{codec}-{dim}" if dim else codec


def table(report: dict[str, Any]) -> str:
    ex = report["exhaustive_metrics"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"{report['queries']} dev queries; exhaustive MaxSim over the f16 vectors: "
        f"MRR@10 {ex['MRR@10']:.4f}, R@100 {ex['R@100']:.4f}. p50/p95: search only, one "
        "query at a time, one run on the 2-core machine.",
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


def _worker(args: argparse.Namespace) -> int:
    if args.worker == "build":
        result = build_variant(Path(args.base), Path(args.target), args.codec, args.dim)
    else:
        paths = dict(item.split("=", 1) for item in args.names.split(","))
        result = search_variants(Path(args.base), paths, args.queries)
    Path(args.worker_out).write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base", default="runs/bench/index", help="the f16 index of bench.py")
    parser.add_argument("--bench-out", default="runs/bench", help="where bench.py wrote its json")
    parser.add_argument("--out", default="runs/bench/codecs", help="where the variants go")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--variants", default=",".join(_name(c, d) for c, d in VARIANTS))
    parser.add_argument("--keep", action="store_true", help="keep the variants' indexes")
    parser.add_argument("--worker", choices=("build", "search"))
    parser.add_argument("--worker-out")
    parser.add_argument("--target")
    parser.add_argument("--codec")
    parser.add_argument("--dim", type=int, default=0)
    parser.add_argument("--names")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exhaustive = json.loads((Path(args.bench_out) / "exhaustive.json").read_text())
    builds: dict[str, Any] = {}
    for name in args.variants.split(","):
        codec, _, dim = name.partition("-")
        target = out / name
        if codec == "f16" and not dim:  # the bench.py index itself
            from sie_index.index import Index

            base_build = json.loads((Path(args.bench_out) / "build.json").read_text())
            with Index.open(args.base, verify=False) as index:
                info = index.info()
            builds[name] = {
                "codec": "f16",
                "dim": info["dim"],
                "path": args.base,
                "build_s": base_build["index_s"] + base_build["store_s"],
                "bytes_per_token": info["bytes_per_token"],
                "vector_bytes_per_token": info["vector_bytes_per_token"],
                "token_index": info["token_index"]["factory"],
                "note": "the bench.py build (storing + indexing, encoding not counted)",
            }
            continue
        result_path = out / f"{name}.build.json"
        cmd = [sys.executable, __file__, "--worker", "build", "--worker-out", str(result_path)]
        cmd += ["--base", args.base, "--target", str(target), "--codec", codec]
        cmd += ["--dim", dim or "0"]
        subprocess.run(cmd, check=True)
        builds[name] = {**json.loads(result_path.read_text()), "path": str(target)}
        print(f"built {name}: {builds[name]['bytes_per_token']:.1f} B/token", flush=True)
    search_path = out / "search.json"
    cmd = [sys.executable, __file__, "--worker", "search", "--worker-out", str(search_path)]
    cmd += ["--base", args.base, "--names", ",".join(f"{n}={b['path']}" for n, b in builds.items())]
    if args.queries:
        cmd += ["--queries", str(args.queries)]
    subprocess.run(cmd, check=True)
    search = json.loads(search_path.read_text())
    report = {
        "command": "python " + " ".join(sys.argv),
        "queries": search["queries"],
        "exhaustive_metrics": exhaustive["exhaustive_metrics"],
        "builds": builds,
        "search": search["search"],
    }
    (Path(args.bench_out) / "codecs.json").write_text(json.dumps(report, indent=2))
    text = table(report)
    (Path(args.bench_out) / "codecs.md").write_text(text)
    print(text)
    if not args.keep:
        for name in builds:
            if builds[name]["path"] != args.base:
                shutil.rmtree(out / name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
