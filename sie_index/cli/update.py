"""``sie-index add``, ``upsert``, ``delete`` and ``compact``: changes to an index."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sie_index.cli.options import (
    INDEX_HELP,
    _add_encoder_options,
    _add_filter_options,
    _corpus_arg,
    _filter_args,
    _query_encoder,
    _sharded,
    names_arg,
    open_index,
)
from sie_index.errors import InvalidInput
from storage import GROWTH_WARN_FACTOR


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
    if args.no_retrain:
        options["retrain"] = "never"
    resumable: dict[str, Any] = {}
    if args.commit_every is not None:
        resumable["commit_every"] = args.commit_every
    if getattr(args, "resume", False):
        resumable["skip_existing"] = True
    if _sharded(index):
        if resumable:
            raise InvalidInput("--commit-every and --resume are for an unsharded index")
        with open_index(index, encoder=_query_encoder(args, index), verify=False) as sharded:
            add = sharded.upsert if args.command == "upsert" else sharded.add
            report = add(_corpus_arg(args.corpus), **options)
    else:
        with IndexWriter(index, encoder=_query_encoder(args, index)) as writer:
            add = writer.upsert if args.command == "upsert" else writer.add
            report = add(_corpus_arg(args.corpus), **options, **resumable)
        if report.skipped:
            print(f"resumed: {report.skipped} documents already in the index were left out")
    print(
        _change_line(
            args.command + "ed" if args.command == "add" else "upserted", index, report.change
        )
    )
    if report.change.retrained:
        print(
            f"retrained: the index had grown to {report.change.outgrown:.2f}x the tokens its "
            f"quantizer was trained on (past {GROWTH_WARN_FACTOR:g}x); it has a new one "
            "(--no-retrain only warns)"
        )
    elif report.change.outgrown is not None:
        print(
            f"warning: the index now holds {report.change.outgrown:.2f}x the tokens its "
            f"quantizer was trained on (past {GROWTH_WARN_FACTOR:g}x), which costs recall; "
            f"retrain it: sie-index compact --retrain {index}"
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
    fields = None if args.lexicon is None else names_arg(args.lexicon)
    with open_index(index, verify=False) if _sharded(index) else IndexWriter(index) as writer:
        change = writer.compact(retrain=args.retrain, lexical_fields=fields)
    print(
        f"compacted {index}: {change.documents} documents, {change.tokens} tokens in one "
        f"segment (generation {change.generation}, {time.perf_counter() - t:.1f}s)"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        p.add_argument(
            "--commit-every",
            type=int,
            default=None,
            metavar="N",
            help="commit each N documents, so a failed or killed run keeps what it "
            "committed (default: one commit, all or nothing)",
        )
        p.add_argument(
            "--no-retrain",
            action="store_true",
            help="past 2x the tokens its quantizer was trained on, only warn (default: "
            "retrain the quantizer then, one more commit; searches go on meanwhile)",
        )
        if name == "add":
            p.add_argument(
                "--resume",
                action="store_true",
                help="leave out documents whose ids are in the index already (re-run an "
                "add that failed or was killed after some of its commits)",
            )
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
    p.add_argument(
        "--lexicon",
        nargs="?",
        const="",
        metavar="F,G",
        help="give the index a lexicon for --hybrid searches, of the text and these "
        "metadata fields (an index built before lexicons has none)",
    )
    p.set_defaults(func=cmd_compact)
