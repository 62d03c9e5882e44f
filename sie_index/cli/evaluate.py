"""``sie-index evaluate``: metrics (or a parameter sweep) on a BEIR folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sie_index.cli.build import _add_build_options, _build
from sie_index.cli.options import (
    NO_VERIFY_HELP,
    _add_search_options,
    _corpus_arg,
    _params,
    _query_encoder,
)
from sie_index.cli.table import print_table
from sie_index.errors import InvalidInput


def _sweep(
    args: argparse.Namespace, index: Any, dataset: Any, name: str, out: Path, progress: bool
) -> int:
    from sie_index.sweep import grid_from_args, plot_sweep, sweep

    grid = grid_from_args(args.sweep_k_token, args.sweep_nprobe, args.sweep_n_rerank)
    report = sweep(
        index,
        dataset,
        grid=grid,
        base=_params(args),
        max_queries=args.max_queries,
        dataset_name=name,
        progress=progress,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(report.to_json(), encoding="utf-8")
    plot_sweep(report, out / "sweep.png")
    rows = [
        (
            str(p.k_token),
            str(p.nprobe),
            str(p.n_rerank),
            str(p.n_centroid or "-"),
            f"{p.metrics['MRR@10']:.4f}",
            f"{p.metrics['R@100']:.4f}",
            f"{p.latency_ms['p50']:.1f}",
            f"{p.latency_ms['p95']:.1f}",
        )
        for p in report.points
    ]
    ex = report.exhaustive_metrics
    rows.append(("exhaustive", "", "", "", f"{ex['MRR@10']:.4f}", f"{ex['R@100']:.4f}", "", ""))
    print(f"{report.queries} queries")
    # n_centroid: the candidates screened down to n_rerank ("-": none)
    head = ("k_token", "nprobe", "n_rerank", "n_centroid", "MRR@10", "R@100", "p50 ms", "p95 ms")
    print_table(rows, head)
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    return 0


def _check_out(out: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Refuse to write over an earlier report (a run worth keeping is easily lost to
    a second one with other settings)."""
    earlier = [name for name in names if (out / name).exists()]
    if earlier and not overwrite:
        raise InvalidInput(
            f"{out} already holds {' and '.join(earlier)} from an earlier run; name a new "
            "folder with --out, or pass --overwrite to replace them"
        )


def _warn_if_few_judged_indexed(index: Any, dataset: Any) -> None:
    from sie_index.evaluation import judged_documents_indexed

    indexed, judged = judged_documents_indexed(index, dataset)
    if judged and indexed < judged / 2:
        print(
            f"warning: the index holds {indexed:,} of the {judged:,} documents the "
            f"{dataset.split} qrels judge relevant (an index of another corpus, or of a "
            "slice?); only queries whose answers it holds are scored",
            file=sys.stderr,
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sie_index.corpus import BeirDataset, default_split
    from sie_index.evaluation import evaluate
    from sie_index.index import Index

    folder = _corpus_arg(args.dataset)
    split = args.split or default_split(folder)
    out = Path(args.out)
    written = ("sweep.json", "sweep.png") if args.sweep else ("report.json", "run.trec")
    _check_out(out, written, args.overwrite)
    dataset = BeirDataset.load(folder, split=split)
    index_path = Path(args.index)
    if args.build or not index_path.exists():
        index = _build(args, dataset.corpus_path, index_path)  # keeps its encoder for queries
    else:
        encoder = _query_encoder(args, index_path)
        index = Index.open(index_path, encoder=encoder, verify=not args.no_verify)
    _warn_if_few_judged_indexed(index, dataset)
    progress = not args.quiet and sys.stderr.isatty()
    if args.sweep:
        return _sweep(args, index, dataset, folder.name, out, progress)
    report = evaluate(
        index,
        dataset,
        params=_params(args),
        exhaustive=args.exhaustive,
        max_queries=args.max_queries,
        run_path=out / "run.trec",
        report_path=out / "report.json",
        dataset_name=folder.name,
        split=split,
        progress=progress,
    )
    hybrid = report.params.get("hybrid")
    column = f"hybrid ({report.params['fusion']})" if hybrid else "pipeline"
    header: tuple[str, ...] = ("metric", column)
    rows: list[tuple[str, ...]] = [(name, f"{value:.4f}") for name, value in report.metrics.items()]
    if report.exhaustive_metrics and report.ratio_to_exhaustive:
        header += ("exhaustive", "ratio")
        rows = [
            (
                *row,
                f"{report.exhaustive_metrics[row[0]]:.4f}",
                f"{report.ratio_to_exhaustive[row[0]]:.3f}",
            )
            for row in rows
        ]
    print(
        f"{report.queries} queries ({split}), {report.index['documents']} documents, "
        f"{report.index['tokens']} tokens"
    )
    print_table(rows, header)
    lat = report.latency_ms
    print(
        f"latency ms: search p50 {lat['search_p50']:.1f} p95 {lat['search_p95']:.1f}; "
        f"with encoding p50 {lat['with_encoding_p50']:.1f} p95 {lat['with_encoding_p95']:.1f}"
    )
    if report.exhaustive_latency_ms:
        ex = report.exhaustive_latency_ms
        print(f"exhaustive MaxSim latency ms: p50 {ex['p50']:.1f} p95 {ex['p95']:.1f}")
    print(f"wrote {out / 'report.json'} and {out / 'run.trec'}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="evaluate on a BEIR folder: nDCG, MRR, recall, latency")
    p.add_argument("dataset", help="BEIR folder (corpus, queries, qrels/), or 'debian-pkgs'")
    p.add_argument("--index", required=True, help="index folder (built from the corpus if absent)")
    p.add_argument("--build", action="store_true", help="(re)build the index first")
    p.add_argument(
        "--split",
        help="qrels split to score (default: dev if the folder has it, else its only split)",
    )
    p.add_argument(
        "--exhaustive", action="store_true", help="also score by exact MaxSim over all tokens"
    )
    p.add_argument("--max-queries", type=int, default=None, help="score at most N queries")
    p.add_argument("-k", type=int, default=100, help="run depth")
    p.add_argument(
        "--out",
        default="runs/eval",
        help="folder for report.json and run.trec (an earlier report there is kept: "
        "--overwrite replaces it)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="evaluate a grid of k_token x nprobe x n_rerank; write sweep.json and sweep.png",
    )
    p.add_argument("--sweep-k-token", metavar="A,B,..", help="k_token values (16,32,64,128)")
    p.add_argument("--sweep-nprobe", metavar="A,B,..", help="nprobe values (8,16)")
    p.add_argument("--sweep-n-rerank", metavar="A,B,..", help="n_rerank values (32,64,128)")
    p.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)
    _add_build_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_evaluate)
