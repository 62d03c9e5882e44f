"""The ``sie-index`` command: a thin layer over the library.

Each subcommand parses its arguments, makes one or two library calls, prints
the result, and turns a :class:`SieIndexError` into a one-line ``error: ...``
on stderr and exit status 2 (an interrupt: one line, status 130). No logic
lives only here.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sie_index.errors import InvalidInput, SieIndexError

if TYPE_CHECKING:
    from sie_index.params import Hit

__all__ = ["main"]

DEMO_QUERIES = 6
INDEX_HELP = "the index folder"
NO_VERIFY_HELP = "check the vector file block by block as searches read it, not all at open"
# SieEncoder's own defaults (a test holds them equal), here so that parsing
# arguments does not import httpx.
SIE_DEADLINE, SIE_BATCH_SIZE, SIE_CONCURRENCY = 60.0, 32, 4


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return number


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number of seconds > 0")
    return seconds


def _corpus_arg(value: str) -> Path:
    """A corpus path, or the name of a dataset shipped with sie-index."""
    from sie_index.corpus import resolve_dataset

    return resolve_dataset(value)


def _filter_args(args: argparse.Namespace) -> dict[str, Any]:
    """``filter``, ``ids`` and ``filter_sql`` from ``--where`` (repeatable, all must
    hold), ``--filter-json``, ``--ids`` and ``--filter-sql``."""
    from sie_index.errors import InvalidInput
    from sie_index.filters import parse_where

    parts = [parse_where(c) for c in args.where or []]
    if args.filter_json is not None:
        try:
            parts.insert(0, json.loads(args.filter_json))
        except ValueError as exc:
            raise InvalidInput(f"--filter-json is not JSON: {exc}") from exc
    flt = None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}
    ids = None
    if args.ids is not None:
        ids = [i for i in args.ids.split(",") if i]
    return {"filter": flt, "ids": ids, "filter_sql": args.filter_sql}


def _add_filter_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--where",
        action="append",
        metavar="FIELD=VALUE",
        help=f"{what} whose metadata field matches (also !=, >, >=, <, <=; dotted "
        "paths reach nested fields; repeat: all must hold)",
    )
    p.add_argument("--ids", metavar="A,B,C", help=f"{what} with these ids")
    p.add_argument(
        "--filter-json",
        metavar="JSON",
        help='the whole filter language, e.g. \'{"year": {"$gte": 2020}}\'',
    )
    p.add_argument(
        "--filter-sql", metavar="SQL", help="a raw SQL predicate over documents (read-only)"
    )


def _params(args: argparse.Namespace) -> Any:
    from sie_index.params import SearchParams

    flt = _filter_args(args) if hasattr(args, "filter_json") else {}
    return SearchParams(**{k: v for k, v in flt.items() if v is not None}).with_(
        k=getattr(args, "k", None),
        k_token=args.k_token,
        n_rerank=args.n_rerank,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        exact_threshold=args.exact_threshold,
    )


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k-token", type=int, help="document tokens fetched per query token")
    p.add_argument("--n-rerank", type=int, help="candidates rescored by exact MaxSim")
    p.add_argument("--nprobe", type=int, help="inverted lists visited per query token (IVF)")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth")
    p.add_argument(
        "--exact-threshold",
        type=int,
        help="score every allowed document exactly when at most this many are allowed "
        "(default 8 x max(n_rerank, k); 0: always the token ANN)",
    )


def _add_encoder_options(p: argparse.ArgumentParser, *, building: bool) -> None:
    p.add_argument(
        "--encoder",
        default=None,
        help="minilm, colbert:PATH, sie, token-states:PATH, precomputed:PATH "
        + ("(default: minilm)" if building else "(default: the index's own)"),
    )
    p.add_argument("--sie-url", help="SIE server, e.g. http://host:8080 (with --encoder sie)")
    p.add_argument("--model", help="model id on the SIE server, e.g. jinaai/jina-colbert-v2")
    p.add_argument(
        "--sie-format",
        default="msgpack",
        choices=("msgpack", "json"),
        help="SIE wire format (default: %(default)s)",
    )
    p.add_argument(
        "--sie-deadline",
        type=_positive_seconds,
        default=SIE_DEADLINE,
        metavar="SECONDS",
        help="wall time one SIE request may take, retries included (default: %(default)g)",
    )
    p.add_argument(
        "--sie-batch-size",
        type=_positive_int,
        default=SIE_BATCH_SIZE,
        metavar="N",
        help="texts per SIE request (default: %(default)s)",
    )
    p.add_argument(
        "--sie-concurrency",
        type=_positive_int,
        default=SIE_CONCURRENCY,
        metavar="N",
        help="SIE requests in flight at once (default: %(default)s)",
    )


def _sie_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "deadline": args.sie_deadline,
        "batch_size": args.sie_batch_size,
        "max_in_flight": args.sie_concurrency,
    }


def _query_encoder(args: argparse.Namespace, index_path: Path) -> Any:
    from sie_index.index_encoder import encoder_for_index

    return encoder_for_index(
        index_path,
        args.encoder,
        sie_url=args.sie_url,
        model=args.model,
        sie_format=args.sie_format,
        sie_options=_sie_options(args),
    )


def _add_build_options(p: argparse.ArgumentParser) -> None:
    _add_encoder_options(p, building=True)
    p.add_argument(
        "--index-kind", default="auto", help="auto, flat, ivf-flat, ivf-sq8, ivf-pq, hnsw"
    )
    p.add_argument(
        "--codec",
        default="auto",
        choices=("auto", "f16", "sq8", "pq"),
        help="how token vectors are stored: f16 (exact), sq8 (8-bit), pq (residual product "
        "codes shared with the ivf-pq index); auto picks by corpus size",
    )
    p.add_argument(
        "--dim",
        type=int,
        default=None,
        help="keep this many dimensions (a projection fitted at build time; queries follow it)",
    )
    p.add_argument(
        "--pool-factor",
        type=int,
        default=1,
        help="merge each document's token vectors into about one in N (Ward clustering; "
        "queries untouched; adds pool alike); 1 keeps every token vector",
    )
    p.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    p.add_argument("--batch-size", type=int, default=256, help="documents per encode/commit batch")
    p.add_argument("--skip-bad-lines", action="store_true", help="leave bad corpus lines out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index")
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        help="build a sharded index of N shards (ids routed by hash; default: one index)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted build (same corpus and settings): keep what it "
        "encoded, encode the rest (with --shards: keep the shards it committed)",
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="with --shards: encode in a Ray Data actor pool (pip install 'sie-index[ray]')",
    )


def _build(args: argparse.Namespace, corpus: Path, out: Path) -> Any:
    from sie_index.encoders.registry import load_encoder
    from sie_index.index import Index
    from sie_index.sharded import ShardedIndex

    encoder = load_encoder(
        args.encoder or "minilm",
        sie_url=args.sie_url,
        model=args.model,
        sie_format=args.sie_format,
        sie_options=_sie_options(args),
    )
    options: dict[str, Any] = {
        "index_kind": args.index_kind,
        "codec": args.codec,
        "limit": args.limit or None,
        "batch_size": args.batch_size,
        "on_error": "skip" if args.skip_bad_lines else "raise",
        "overwrite": args.overwrite,
        "progress": False if args.quiet else None,
    }
    if args.shards is not None:
        if args.dim is not None:
            raise InvalidInput("--dim is not available with --shards (one shared quantizer)")
        if args.pool_factor != 1:
            raise InvalidInput("--pool-factor is not available with --shards yet")
        return ShardedIndex.build(
            out,
            corpus,
            shards=args.shards,
            encoder=encoder,
            resume=args.resume,
            ray=args.ray,
            **options,
        )
    if args.ray:
        raise InvalidInput("--ray builds sharded indexes: add --shards N")
    return Index.build(
        out,
        corpus,
        encoder=encoder,
        dim=args.dim,
        resume=args.resume,
        pool_factor=args.pool_factor,
        **options,
    )


def cmd_build(args: argparse.Namespace) -> int:
    index = _build(args, _corpus_arg(args.corpus), Path(args.index))
    r = index.build_report
    assert r is not None  # set by Index.build
    if r.resumed_documents:
        print(f"resumed: {r.resumed_documents} documents kept from the interrupted build")
    print(
        f"built {index.path}: {r.documents} documents, {r.tokens} tokens "
        f"(encoding {r.encode_seconds:.1f}s, storing {r.store_seconds:.1f}s, "
        f"indexing {r.index_seconds:.1f}s)"
    )
    for bad in r.bad_lines:
        print(f"skipped {bad.source}:{bad.line}: {bad.reason}", file=sys.stderr)
    return 0


def _sharded(path: Path) -> bool:
    from storage import read_shard_map

    return read_shard_map(path) is not None


def open_index(path: str | Path, **options: Any) -> Any:
    from sie_index.sharded import open_index as open_any

    return open_any(path, **options)


def _change_line(verb: str, index: Path, change: Any) -> str:
    parts = [
        f"{n} {what}"
        for what, n in (
            ("added", change.added),
            ("replaced", change.replaced),
            ("deleted", change.deleted),
        )
        if n
    ]
    done = ", ".join(parts) if parts else "nothing changed"
    return f"{verb} {index}: {done}; {change.documents} documents (generation {change.generation})"


def cmd_add(args: argparse.Namespace) -> int:
    from sie_index.updates import IndexWriter

    index = Path(args.index)
    options: dict[str, Any] = {
        "on_error": "skip" if args.skip_bad_lines else "raise",
        "limit": args.limit or None,
        "batch_size": args.batch_size,
        "progress": False if args.quiet else None,
    }
    if _sharded(index):
        with open_index(index, encoder=_query_encoder(args, index), verify=False) as sharded:
            add = sharded.upsert if args.command == "upsert" else sharded.add
            report = add(_corpus_arg(args.corpus), **options)
    else:
        with IndexWriter(index, encoder=_query_encoder(args, index)) as writer:
            add = writer.upsert if args.command == "upsert" else writer.add
            report = add(_corpus_arg(args.corpus), **options)
    print(
        _change_line(
            args.command + "ed" if args.command == "add" else "upserted", index, report.change
        )
    )
    for bad in report.bad_lines:
        print(f"skipped {bad.source}:{bad.line}: {bad.reason}", file=sys.stderr)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from sie_index.updates import IndexWriter

    flt = _filter_args(args)
    filtered = any(v is not None for v in flt.values())
    if not args.doc_ids and not filtered:
        raise SystemExit(
            "sie-index delete: name ids, or a filter (--where, --ids, --filter-json, --filter-sql)"
        )
    index = Path(args.index)
    with open_index(index, verify=False) if _sharded(index) else IndexWriter(index) as writer:
        change = writer.delete(args.doc_ids) if args.doc_ids else None
        if filtered:
            more = writer.delete_where(flt["filter"], ids=flt["ids"], filter_sql=flt["filter_sql"])
            if change is not None:
                more = type(more)(**{**vars(more), "deleted": more.deleted + change.deleted})
            change = more
    assert change is not None
    print(_change_line("deleted from", index, change))
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from sie_index.updates import IndexWriter

    index = Path(args.index)
    t = time.perf_counter()
    with open_index(index, verify=False) if _sharded(index) else IndexWriter(index) as writer:
        change = writer.compact(retrain=args.retrain)
    print(
        f"compacted {index}: {change.documents} documents, {change.tokens} tokens in one "
        f"segment (generation {change.generation}, {time.perf_counter() - t:.1f}s)"
    )
    return 0


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    """Print rows as a plain fixed-width table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def _hit_json(rank: int, hit: Hit) -> dict[str, Any]:
    """A hit as ``search --json`` prints it: :meth:`Hit.to_dict` after its rank, with
    ``text`` and ``metadata`` always there (null when the document has none), as
    this command has always printed them."""
    out = {"rank": rank, **hit.to_dict()}
    out.setdefault("text", None)
    out.setdefault("metadata", None)
    return out


def cmd_search(args: argparse.Namespace) -> int:

    encoder = _query_encoder(args, Path(args.index))
    index = open_index(args.index, encoder=encoder, verify=not args.no_verify)
    results = index.search_batch(
        args.queries, params=_params(args), text=True, metadata=True, explain=args.explain
    )
    if args.json:
        out = [
            {
                "query": q,
                "hits": [_hit_json(i + 1, h) for i, h in enumerate(hits)],
            }
            for q, hits in zip(args.queries, results, strict=True)
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for q, hits in zip(args.queries, results, strict=True):
        print(f"\nquery: {q}")
        rows = [
            (str(i + 1), h.external_id, f"{h.score:.3f}", _clip(h.text or "", 70))
            for i, h in enumerate(hits)
        ]
        print_table(rows, ("rank", "id", "score", "text"))
        if args.explain:
            for i, h in enumerate(hits):
                print(f"\n#{i + 1} {h.external_id}: score {h.score:.3f} = sum of the best matches")
                print_table(
                    [
                        (
                            m.query_text or f"[{m.query_token}]",
                            m.doc_text or f"[{m.doc_token}]",
                            f"{m.similarity:.3f}",
                        )
                        for m in h.explain or ()
                    ],
                    ("query token", "document token", "similarity"),
                )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from sie_index.server.app import open_served, serve
        from sie_index.server.auth import ApiKeys
        from sie_index.server.config import Limits, ServerConfig
    except ImportError as exc:
        print(f"error: sie-index serve: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(
        host=args.host,
        port=args.port,
        keys=ApiKeys.load(args.api_key_file),
        limits=Limits.parse(args.limit or [], deadline_s=args.deadline),
        batch_window_s=args.batch_window_ms / 1000,
        batch_documents=args.batch_documents,
        max_queued_writes=args.max_queued_writes,
        allow_filter_sql=args.allow_filter_sql,
        **({"search_threads": args.workers} if args.workers else {}),
    )
    encoder = _query_encoder(args, Path(args.index))
    serve(open_served(args.index, encoder=encoder, verify=not args.no_verify), config)
    return 0


def cmd_info(args: argparse.Namespace) -> int:

    info = open_index(args.index, verify=not args.no_verify).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print_table(
        [(k, json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in info.items()],
        ("field", "value"),
    )
    return 0


def _verify_sharded(args: argparse.Namespace) -> int:
    from sie_index.sharded import ShardedIndex

    with ShardedIndex.open(args.index, verify=False) as index:
        report = index.verify()
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["ok"]:
        print(f"ok: {report['path']}: every shard verified, every id in the shard it routes to")
    else:
        for problem in report["problems"]:
            print(f"DAMAGED: {problem}", file=sys.stderr)
    return 0 if report["ok"] else 1


def cmd_verify(args: argparse.Namespace) -> int:

    from storage import read_shard_map, verify_index

    if read_shard_map(Path(args.index)) is not None:
        return _verify_sharded(args)
    report = verify_index(Path(args.index), repair=args.repair)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    elif report.ok:
        print(
            f"ok: {report.path} generation {report.generation}, {report.documents} documents, "
            f"{report.tokens} tokens; every checksum and invariant verified"
        )
        for name in report.removed:
            print(f"removed {name}")
        for name in report.debris:
            print(f"left over: {name}" + (" (held by a reader)" if args.repair else ""))
    else:
        print(f"DAMAGED: {report.problem}", file=sys.stderr)
    return 0 if report.ok else 1


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
            f"{p.metrics['MRR@10']:.4f}",
            f"{p.metrics['R@100']:.4f}",
            f"{p.latency_ms['p50']:.1f}",
            f"{p.latency_ms['p95']:.1f}",
        )
        for p in report.points
    ]
    ex = report.exhaustive_metrics
    rows.append(("exhaustive", "", "", f"{ex['MRR@10']:.4f}", f"{ex['R@100']:.4f}", "", ""))
    print(f"{report.queries} queries")
    print_table(rows, ("k_token", "nprobe", "n_rerank", "MRR@10", "R@100", "p50 ms", "p95 ms"))
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import evaluate
    from sie_index.index import Index

    folder = _corpus_arg(args.dataset)
    dataset = BeirDataset.load(folder, split=args.split)
    index_path = Path(args.index)
    if args.build or not index_path.exists():
        index = _build(args, dataset.corpus_path, index_path)  # keeps its encoder for queries
    else:
        encoder = _query_encoder(args, index_path)
        index = Index.open(index_path, encoder=encoder, verify=not args.no_verify)
    out = Path(args.out)
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
        split=args.split,
        progress=progress,
    )
    rows = [
        (
            name,
            f"{value:.4f}",
            f"{report.exhaustive_metrics[name]:.4f}" if report.exhaustive_metrics else "",
            f"{report.ratio_to_exhaustive[name]:.3f}" if report.ratio_to_exhaustive else "",
        )
        for name, value in report.metrics.items()
    ]
    print(
        f"{report.queries} queries, {report.index['documents']} documents, "
        f"{report.index['tokens']} tokens"
    )
    print_table(rows, ("metric", "pipeline", "exhaustive", "ratio"))
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


def cmd_demo(args: argparse.Namespace) -> int:
    from sie_index.corpus import BeirDataset, packaged_dataset
    from sie_index.index import Index

    folder = packaged_dataset("debian-pkgs")
    dataset = BeirDataset.load(folder, split="dev")
    limit = args.limit or None
    print(
        f"building an index of debian-pkgs ({limit or 'all'} documents) "
        f"with the default encoder (all-MiniLM-L6-v2 token states) into {args.out} ..."
    )
    t0 = time.perf_counter()
    # The shipped corpus repeats a few package names (packages with several
    # descriptions); skip mode keeps the first and reports the rest.
    index = Index.build(
        args.out,
        dataset.corpus_path,
        limit=limit,
        overwrite=True,
        on_error="skip",
        progress=False if args.quiet else None,
    )
    r = index.build_report
    assert r is not None  # set by Index.build
    print(
        f"built in {time.perf_counter() - t0:.0f}s: {r.documents} documents, {r.tokens} tokens, "
        f"token index {index.info()['token_index']['kind']}"
        + (f"; {len(r.bad_lines)} corpus lines skipped (repeated ids)" if r.bad_lines else "")
    )
    present = index.lookup(sorted({d for rel in dataset.qrels.values() for d in rel}))
    picked = [
        (qid, text, next(iter(dataset.qrels[qid])))
        for qid, text in dataset.queries.items()
        if any(d in present for d in dataset.qrels[qid])
    ][:DEMO_QUERIES]
    results = index.search_batch([text for _, text, _ in picked], k=3, text=True)
    for (_, text, answer), hits in zip(picked, results, strict=True):
        print(f"\nquery: {text}   (the judged answer: {answer})")
        rows = [
            (
                str(i + 1),
                ("* " if h.external_id == answer else "  ") + h.external_id,
                f"{h.score:.2f}",
                _clip(h.text or "", 64),
            )
            for i, h in enumerate(hits)
        ]
        print_table(rows, ("rank", "package", "score", "description"))
    print(f'\nsearch it yourself: .venv/bin/sie-index search {args.out} "your question"')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sie-index", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build an index from a JSONL corpus or a BEIR folder")
    p.add_argument(
        "corpus", help="corpus .jsonl / .jsonl.gz / .tsv, a BEIR folder, or 'debian-pkgs'"
    )
    p.add_argument("index", help="folder to write the index to")
    _add_build_options(p)
    p.set_defaults(func=cmd_build)

    for name, helptext in (
        ("add", "add new documents to an index (an id already there is an error)"),
        ("upsert", "add documents, replacing those whose ids are in the index"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("index", help=INDEX_HELP)
        p.add_argument("corpus", help="corpus .jsonl / .jsonl.gz / .tsv or a BEIR folder")
        _add_encoder_options(p, building=False)
        p.add_argument("--limit", type=int, default=None, help="only the first N documents")
        p.add_argument("--batch-size", type=int, default=256, help="documents per encode batch")
        p.add_argument("--skip-bad-lines", action="store_true", help="leave bad corpus lines out")
        p.set_defaults(func=cmd_add)

    p = sub.add_parser("delete", help="delete documents by id (or by filter) from an index")
    p.add_argument("index", help=INDEX_HELP)
    p.add_argument("doc_ids", nargs="*", metavar="ids", help="ids of the documents to delete")
    _add_filter_options(p, "delete the documents")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("compact", help="purge deleted documents: rewrite the index as one segment")
    p.add_argument("index", help=INDEX_HELP)
    p.add_argument(
        "--retrain", action="store_true", help="train a new quantizer on the live tokens"
    )
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("search", help="search an index and print a table (or JSON)")
    p.add_argument("index", help=INDEX_HELP)
    p.add_argument("queries", nargs="+", help="one or more query texts")
    p.add_argument("-k", type=int, default=10, help="hits per query")
    _add_filter_options(p, "only documents")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--explain",
        action="store_true",
        help="for each hit, the document token each query token matched, and how well",
    )
    p.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)
    _add_search_options(p)
    _add_encoder_options(p, building=False)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="serve an index over HTTP (needs sie-index[server])")
    p.add_argument("index", help=INDEX_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=8000, help="port (default: %(default)s; 0: any free one)"
    )
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="API keys, one a line: read:KEY, write:KEY or KEY (also $SIE_INDEX_API_KEYS; "
        "keys never go on the command line)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="searches at once, in threads of one process (default: the cores); "
        "writes always go through one writer",
    )
    p.add_argument(
        "--deadline",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="wall time one request may take in the server (default: %(default)g)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=100.0,
        metavar="MS",
        help="writes arriving this long after the first waiting one share its commit "
        "(default: %(default)g)",
    )
    p.add_argument(
        "--batch-documents",
        type=_positive_int,
        default=300,
        metavar="N",
        help="at most this many documents a commit (default: %(default)s)",
    )
    p.add_argument(
        "--max-queued-writes",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="write requests that may wait for the writer; more get 503 (default: %(default)s)",
    )
    p.add_argument(
        "--limit",
        action="append",
        metavar="NAME=N",
        help="a request limit: body_bytes, k, query_chars, query_tokens, batch, documents "
        "or filter_bytes (repeatable; see GET /info for the values in force)",
    )
    p.add_argument(
        "--allow-filter-sql",
        action="store_true",
        help="let clients send raw SQL predicates (read-only, time-budgeted)",
    )
    p.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)
    _add_encoder_options(p, building=False)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="describe an index")
    p.add_argument("index", help=INDEX_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "verify", help="check every checksum and invariant; exit 1 if the index is damaged"
    )
    p.add_argument("index", help=INDEX_HELP)
    p.add_argument("--repair", action="store_true", help="remove what killed writers left behind")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("evaluate", help="evaluate on a BEIR folder: nDCG, MRR, recall, latency")
    p.add_argument("dataset", help="BEIR folder (corpus, queries, qrels/), or 'debian-pkgs'")
    p.add_argument("--index", required=True, help="index folder (built from the corpus if absent)")
    p.add_argument("--build", action="store_true", help="(re)build the index first")
    p.add_argument("--split", default="dev", help="qrels split to score (default: %(default)s)")
    p.add_argument(
        "--exhaustive", action="store_true", help="also score by exact MaxSim over all tokens"
    )
    p.add_argument("--max-queries", type=int, default=None, help="score at most N queries")
    p.add_argument("-k", type=int, default=100, help="run depth")
    p.add_argument("--out", default="runs/eval", help="folder for report.json and run.trec")
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

    p = sub.add_parser(
        "demo", help="build an index of the shipped debian-pkgs corpus and search it"
    )
    p.add_argument("--out", default="demo-index", help="index folder")
    p.add_argument("--limit", type=int, default=5000, help="documents to index (0: all 60,631)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except SieIndexError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"error: sie-index {args.command}: {type(exc).__name__}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: sie-index {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
