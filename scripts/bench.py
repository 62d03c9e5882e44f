"""One benchmark tool: ``python scripts/bench.py SUBCOMMAND [options]``.

    python scripts/bench.py full                  # build, search, exhaustive: full debian-pkgs
    python scripts/bench.py full --limit 5000     # a quick look
    python scripts/bench.py build                 # the index alone (runs/bench/index)
    python scripts/bench.py search                # search and exhaustive on the index built
    python scripts/bench.py codecs                # then: codec x dim from its stored vectors
    python scripts/bench.py SUBCOMMAND --help     # what it measures, and its options

``python scripts/bench.py --help`` lists every subcommand. Each writes NAME.json
and NAME.md under ``--out`` (runs/bench) through the one report writer
(``bench_report.py``: the exact command, the machine's cores, the date, how its
timings were taken) and runs what needs its own peak RSS through the one
worker-process helper (``bench_child.py``). The measurements of the other
subcommands live in ``bench_<name>.py``; ``build``, ``search`` and ``full`` are here,
each step in its own process:

1. build: encode + store + token index (timings split into encoding and indexing);
   writes build.json and build.md;
2. search: every dev query one at a time (2 threads), the pipeline's metrics and
   latency, plus a small sweep of search settings on the same index;
3. exhaustive: the oracle, exact MaxSim over every stored token, its metrics and
   its per-query latency.

``search`` (2 and 3) and ``full`` (1 to 3) write report.json and report.md; the
steps' own results stay as build.json, search.json and exhaustive.json, which
``codecs`` and ``rerank-codes`` read.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench_child import in_child, peak_rss_mb
from bench_report import write_report

SWEEP = [  # (k_token, nprobe, n_rerank)
    (32, 8, 32),
    (64, 8, 64),
    (64, 16, 64),
    (128, 16, 128),
]
COMMANDS = [  # subcommand, the module of its measurements (add_arguments, command)
    ("phases", "bench_phases"),
    ("codecs", "bench_codecs"),
    ("living", "bench_living"),
    ("encoding", "bench_encoding"),
    ("kinds", "bench_kinds"),
    ("pooling", "bench_pooling"),
    ("hybrid", "bench_hybrid"),
    ("rerank-codes", "bench_rerank_codes"),
    ("shards", "bench_shards"),
    ("merges", "bench_merges"),
    ("server", "bench_server"),
    ("scale", "bench_scale"),
]
MEDIANS = "one run; p50 / p95 are over the queries of that run"


def worker_build(index_path: str, limit: int, index_kind: str, codec: str) -> dict[str, Any]:
    from sie_index.index import Index

    index = Index.build(
        index_path,
        "debian-pkgs",
        limit=limit or None,
        on_error="skip",
        overwrite=True,
        index_kind=index_kind,
        codec=codec,
        progress=False,
    )
    r = index.build_report
    assert r is not None
    info = index.info()
    return {
        "index": index_path,
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
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_search(index_path: str, queries: int | None) -> dict[str, Any]:
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import evaluate
    from sie_index.index import Index
    from sie_index.params import SearchParams

    index = Index.open(index_path, verify=False)
    dataset = BeirDataset.load("debian-pkgs")
    main = evaluate(index, dataset, params=SearchParams(), max_queries=queries)
    sweep = []
    for k_token, nprobe, n_rerank in SWEEP:
        p = SearchParams(k_token=k_token, nprobe=nprobe, n_rerank=n_rerank)
        rep = evaluate(index, dataset, params=p, max_queries=queries)
        sweep.append(
            {
                "k_token": k_token,
                "nprobe": nprobe,
                "n_rerank": n_rerank,
                "metrics": rep.metrics,
                "latency_ms": rep.latency_ms,
            }
        )
    return {"main": json.loads(main.to_json()), "sweep": sweep, "peak_rss_mb": peak_rss_mb()}


def worker_exhaustive(index_path: str, queries: int | None, latency_queries: int) -> dict[str, Any]:
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import evaluate
    from sie_index.index import Index

    index = Index.open(index_path, verify=False)
    dataset = BeirDataset.load("debian-pkgs")
    rep = evaluate(
        index,
        dataset,
        exhaustive=True,
        max_queries=queries,
        exhaustive_latency_queries=latency_queries,
    )
    return {
        "exhaustive_metrics": rep.exhaustive_metrics,
        "exhaustive_latency_ms": rep.exhaustive_latency_ms,
        "peak_rss_mb": peak_rss_mb(),
    }


def _timed(fn: Any, *args: Any, keep: Path | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    result: dict[str, Any] = in_child(fn, *args, keep=keep)
    result["wall_s"] = time.perf_counter() - t0
    return result


def _build_rows(build: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            "documents / tokens",
            f"{build['documents']:,} / {build['tokens']:,} "
            f"({build['skipped_lines']} repeated-id lines skipped)",
        ),
        ("token index", json.dumps(build["token_index"])),
        (
            "build: encoding / storing / indexing (s)",
            f"{build['encode_s']:.0f} / {build['store_s']:.0f} / {build['index_s']:.0f}",
        ),
        (
            "index size on disk",
            f"{build['index_bytes'] / 2**20:,.0f} MiB, "
            f"{build['bytes_per_token']:.0f} bytes a token",
        ),
        ("peak RSS build (MiB)", f"{build['peak_rss_mb']:,.0f}"),
    ]


def _markdown(rows: list[tuple[str, str]]) -> list[str]:
    return ["| measure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]


def _table(build: dict[str, Any] | None, search: dict[str, Any], ex: dict[str, Any]) -> str:
    m = search["main"]
    pm, lat = m["metrics"], m["latency_ms"]
    em, elat = ex["exhaustive_metrics"], ex["exhaustive_latency_ms"]
    rows = [
        ("queries", f"{m['queries']}"),
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
            "peak RSS search / exhaustive (MiB)",
            " / ".join(f"{r['peak_rss_mb']:,.0f}" for r in (search, ex)),
        ),
    ]
    if build is not None:
        rows = _build_rows(build) + rows
    lines = [
        *_markdown(rows),
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


def _add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=0, help="documents to index (0: all)")
    parser.add_argument("--index-kind", default="auto")
    parser.add_argument(
        "--codec",
        default="f16",
        help="f16 by default: its vectors are the exhaustive oracle's and `codecs`'s source",
    )


def _add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queries", type=int, default=None, help="dev queries to run (default all)"
    )
    parser.add_argument("--exhaustive-latency-queries", type=int, default=50)


def run_build(args: argparse.Namespace) -> dict[str, Any]:
    """Build ``--index`` in a child process; write build.json and build.md."""
    build = _timed(worker_build, args.index, args.limit, args.index_kind, args.codec)
    medians = "one run"
    write_report(Path(args.out), "build", build, "\n".join(_markdown(_build_rows(build))), medians)
    return build


def command_build(args: argparse.Namespace) -> int:
    run_build(args)
    return 0


def command_search(args: argparse.Namespace, build: dict[str, Any] | None = None) -> int:
    out = Path(args.out)
    if build is None and (out / "build.json").is_file():  # the build of this index, if any
        build = json.loads((out / "build.json").read_text())
        build = build if build.get("index") == args.index else None
    search = _timed(worker_search, args.index, args.queries, keep=out / "search.json")
    ex = _timed(
        worker_exhaustive,
        args.index,
        args.queries,
        args.exhaustive_latency_queries,
        keep=out / "exhaustive.json",
    )
    report = {"build": build, "search": search, "exhaustive": ex}
    write_report(out, "report", report, _table(build, search, ex), MEDIANS)
    return 0


def command_full(args: argparse.Namespace) -> int:
    return command_search(args, run_build(args))


def build_parser() -> argparse.ArgumentParser:
    """bench.py's parser: one subparser a subcommand, each with its own options."""
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    def add(name: str, doc: str) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(
            name,
            help=" ".join(doc.strip().split("\n\n")[0].split()).rstrip("."),
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--out", default="runs/bench", help="folder of the reports")
        return sub

    full = add("full", "Build, search and exhaustive MaxSim, each in its own process.")
    build = add("build", "Build the debian-pkgs index (encode, store, token index).")
    search = add("search", "Search quality and speed against exhaustive MaxSim, on a built index.")
    for sub in (full, build, search):
        sub.add_argument("--index", default="runs/bench/index")
    for sub in (full, build):
        _add_build_arguments(sub)
    for sub in (full, search):
        _add_search_arguments(sub)
    full.set_defaults(run=command_full)
    build.set_defaults(run=command_build)
    search.set_defaults(run=command_search)
    for name, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        sub = add(name, module.__doc__ or name)
        module.add_arguments(sub)
        sub.set_defaults(run=module.command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
