"""Token pooling: tokens, bytes, quality and speed by pool factor, against exhaustive MaxSim.

    python scripts/bench.py pooling                       # 3,000 documents, factors 1/2/3, f16
    python scripts/bench.py pooling --docs 3000 --factors 1,2,3 --codecs f16,pq

The first ``--docs`` documents of the committed debian-pkgs corpus (bad and
duplicate lines skipped) are encoded once, with the default encoder, into an
unpooled f16 index. Every variant (pool factor x codec) is then built from that
index's stored vectors with :meth:`Index.from_vectors` (``pool_factor``), so no
variant encodes again and every variant pools the same vectors; every one has
the same token-index kind (``--index-kind``, ivf-pq: what ``auto`` picks for the
unpooled index), with its parameters chosen from its own token count. The dev queries
whose relevant documents the slice holds are encoded once and answered by every
variant one at a time (one thread, default settings, 100 hits), and scored
against exhaustive MaxSim over the unpooled vectors, so the ratio shows the
whole loss, pooling and ANN together; exhaustive MaxSim over each variant's own
(pooled) vectors shows pooling's share. Bytes a token are every file of the
index over the tokens of the original text (the unpooled index's count).
The indexes go under ``--work`` (default OUT/pooling).
Writes pooling.json and pooling.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench_report import write_report
from bench_runs import timed_run

MEDIANS = "one run; p50 / p95 are over the queries of that run"


def build_base(path: Path, docs: int, index_kind: str) -> dict[str, Any]:
    """The unpooled f16 index of the first ``docs`` documents (encoding them)."""
    from sie_index.corpus import BeirDataset
    from sie_index.index import Index

    dataset = BeirDataset.load("debian-pkgs")
    t0 = time.perf_counter()
    index = Index.build(
        path,
        dataset.corpus_path,
        limit=docs,
        on_error="skip",
        codec="f16",
        index_kind=index_kind,
        overwrite=True,
        progress=False,
    )
    report = index.build_report
    assert report is not None
    index.close()
    return {
        "build_s": time.perf_counter() - t0,
        "encode_s": report.encode_seconds,
        "store_index_s": report.store_seconds + report.index_seconds,
        "bad_lines": len(report.bad_lines),
    }


def stored_documents(base: Path) -> tuple[list[str], list[Any], list[str]]:
    """Ids, stored (float16, widened) vectors and texts of the base index's documents."""
    import numpy as np

    from storage import StoreSnapshot

    ids: list[str] = []
    vectors: list[Any] = []
    texts: list[str] = []
    with StoreSnapshot.open(base, verify_vectors=False) as snap:
        for batch in snap.live_documents():
            for doc in batch:
                ids.append(doc.external_id)
                vectors.append(np.asarray(doc.vectors, dtype=np.float32))
                texts.append(doc.text or "")
    return ids, vectors, texts


def build_variant(
    target: Path,
    factor: int,
    codec: str,
    index_kind: str,
    docs: tuple[list[str], list[Any], list[str]],
) -> dict[str, Any]:
    from sie_index.index import Index

    ids, vectors, texts = docs
    t0 = time.perf_counter()
    Index.from_vectors(
        target,
        ids,
        vectors,
        texts=texts,
        codec=codec,
        index_kind=index_kind,
        pool_factor=factor,
        overwrite=True,
    ).close()
    return {"build_s": time.perf_counter() - t0}


def _run(
    index: Any, Qs: list[Any], qids: list[str], external: list[str]
) -> tuple[Any, list[float]]:
    from sie_index.evaluation import RUN_DEPTH
    from sie_index.params import SearchParams

    return timed_run(index, Qs, qids, external, SearchParams(k=RUN_DEPTH))


def _exhaustive_run(index: Any, Qs: list[Any], qids: list[str], external: list[str]) -> Any:
    from sie_index.evaluation import RUN_DEPTH

    return {
        qid: {external[int(d)]: float(s) for d, s in zip(r.doc_ids, r.scores, strict=True)}
        for qid, r in zip(qids, index.exhaustive(Qs, RUN_DEPTH), strict=True)
    }


def measure(paths: dict[str, Path], base: Path, queries: int | None) -> dict[str, Any]:
    """Every variant's metrics, tokens, bytes and p50 on the same encoded queries."""
    import numpy as np

    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import external_ids, judged_queries, metrics_of_run
    from sie_index.index import Index

    dataset = BeirDataset.load("debian-pkgs")
    with Index.open(base, verify=False) as index:
        external = external_ids(index)
        qids = judged_queries(dataset, external)[:queries]
        Qs = index.encode_queries([dataset.queries[q] for q in qids])
        original_tokens = index.info()["tokens"]
        qrels = {q: dataset.qrels[q] for q in qids}
        oracle = metrics_of_run(qrels, _exhaustive_run(index, Qs, qids, external))
    rows: dict[str, Any] = {}
    for name, path in paths.items():
        with Index.open(path, verify=False) as index:
            info = index.info()
            ext = external_ids(index)
            run, times = _run(index, Qs, qids, ext)
            own = metrics_of_run(qrels, _exhaustive_run(index, Qs, qids, ext))
        ms = np.array(times) * 1000
        rows[name] = {
            "pool_factor": info["pool_factor"],
            "codec": info["codec"],
            "token_index": info["token_index"]["factory"],
            "tokens": info["tokens"],
            "bytes": info["total_bytes"],
            "bytes_per_original_token": info["total_bytes"] / original_tokens,
            "vector_bytes_per_original_token": info["files_bytes"].get(f"{_vector_file(info)}", 0)
            / original_tokens,
            "metrics": metrics_of_run(qrels, run),
            "exhaustive_own_metrics": own,
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)),
        }
    return {
        "queries": len(qids),
        "original_tokens": original_tokens,
        "oracle": oracle,
        "variants": rows,
    }


def _vector_file(info: dict[str, Any]) -> str:
    """The key of the index's vector file in ``files_bytes`` (one segment after a build)."""
    suffix = {"f16": "tokens.f16", "sq8": "tokens.sq8", "pq": "tokens.pq"}[info["codec"]]
    return next((k for k in info["files_bytes"] if k.endswith(suffix)), suffix)


def table(report: dict[str, Any]) -> str:
    ex = report["oracle"]
    lines = [
        f"First {report['docs']} debian-pkgs documents ({report['original_tokens']} tokens "
        f"unpooled), {report['queries']} judged dev queries; exhaustive MaxSim over the "
        f"unpooled vectors: MRR@10 {ex['MRR@10']:.4f}, R@100 {ex['R@100']:.4f}. Search: "
        "default settings, one query at a time, one thread. Base build (encoding): "
        f"{report['base']['build_s']:.0f} s.",
        "",
        "| pool factor | codec | ANN | tokens | bytes / original token (vectors) | MRR@10 | ratio "
        "| R@100 | ratio | exhaustive own MRR@10 / R@100 | p50 ms | p95 ms | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["variants"].items():
        m, own = row["metrics"], row["exhaustive_own_metrics"]
        lines.append(
            f"| {row['pool_factor']} | {row['codec']} | {row['token_index']} | {row['tokens']} | "
            f"{row['bytes_per_original_token']:.1f} ({row['vector_bytes_per_original_token']:.1f})"
            f" | {m['MRR@10']:.4f} | {m['MRR@10'] / ex['MRR@10']:.3f} | {m['R@100']:.4f} | "
            f"{m['R@100'] / ex['R@100']:.3f} | {own['MRR@10']:.4f} / {own['R@100']:.4f} | "
            f"{row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {report['builds'][name]['build_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=3000, help="first N corpus documents")
    parser.add_argument("--factors", default="1,2,3")
    parser.add_argument("--codecs", default="f16", help="comma-separated: f16, sq8, pq")
    parser.add_argument("--queries", type=int, default=None, help="at most N dev queries")
    parser.add_argument(
        "--index-kind",
        default="ivf-pq",
        help="one token-index kind for every variant (auto would pick flat for a small "
        "pooled index, and its latency would measure that choice, not pooling)",
    )
    parser.add_argument("--work", help="folder of the indexes (default: OUT/pooling)")
    parser.add_argument("--reuse", action="store_true", help="keep the base index if built")
    parser.add_argument(
        "--base",
        help="an unpooled f16 index to start from instead of encoding --docs documents "
        "(bench.py build's; its build.json, beside it, gives its build time)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the variants' indexes")


def command(args: argparse.Namespace) -> int:
    out = Path(args.work) if args.work else Path(args.out) / "pooling"
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    base_json = out / "base.json"
    if args.base:  # an unpooled f16 index already built (bench.py build): no encoding
        base = Path(args.base)
        built = base.parent / "build.json"
        b = json.loads(built.read_text()) if built.is_file() else {}
        base_report = {
            "docs": b.get("documents"),
            "build_s": b.get("total_s", float("nan")),
            "store_index_s": b.get("store_s", 0.0) + b.get("index_s", float("nan")),
        }
    elif args.reuse and (base / "CURRENT").is_file() and base_json.is_file():
        base_report = json.loads(base_json.read_text())
    else:
        base_report = build_base(base, args.docs, args.index_kind)
        base_json.write_text(json.dumps(base_report, indent=2))
    print(f"base: {base_report}", flush=True)
    docs = stored_documents(base)
    paths: dict[str, Path] = {}
    builds: dict[str, Any] = {}
    for codec in args.codecs.split(","):
        for factor in (int(f) for f in args.factors.split(",")):
            name = f"p{factor}-{codec}"
            if factor == 1 and codec == "f16":
                paths[name] = base
                builds[name] = {"build_s": base_report["store_index_s"]}
                continue
            paths[name] = out / name
            builds[name] = build_variant(out / name, factor, codec, args.index_kind, docs)
            print(f"built {name}: {builds[name]}", flush=True)
    del docs
    result = measure(paths, base, args.queries)
    report = {
        "docs": base_report.get("docs") or args.docs,
        "base": base_report,
        "builds": builds,
        **result,
    }
    write_report(Path(args.out), "pooling", report, table(report), MEDIANS)
    if not args.keep:
        for path in paths.values():
            if path != base:
                shutil.rmtree(path, ignore_errors=True)
    return 0
