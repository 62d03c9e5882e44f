"""``sie-index search``: one query or many (from a file or stdin), printed as a
table, JSON, JSON lines or a TREC run."""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sie_index.cli.options import (
    INDEX_HELP,
    NO_VERIFY_HELP,
    _add_encoder_options,
    _add_filter_options,
    _add_search_options,
    _params,
    _query_encoder,
    open_index,
)
from sie_index.cli.table import print_table, terminal_width
from sie_index.errors import InvalidInput

if TYPE_CHECKING:
    from sie_index.params import Hit

FORMATS = ("table", "json", "jsonl", "trec")


def _query_lines(source: str) -> tuple[str, Iterable[str]]:
    if source == "-":
        return "<stdin>", sys.stdin
    path = Path(source)
    if not path.is_file():
        raise InvalidInput("no such queries file", source=source)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return source, fh.read().splitlines()


def read_queries(source: str) -> list[tuple[str, str]]:
    """``(qid, text)`` pairs from a file (``-``: stdin): JSON lines with ``_id`` (or
    ``id``) and ``text``, as BEIR's queries.jsonl, when the first line is an object;
    else one query a line, its id its line number. Blank lines are skipped."""
    name, lines = _query_lines(source)
    queries: list[tuple[str, str]] = []
    seen: set[str] = set()
    as_json: bool | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if as_json is None:
            as_json = line.startswith("{")
        if not as_json:
            queries.append((str(number), line))
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"not a JSON object: {exc}", source=name, line=number) from exc
        qid = record.get("_id", record.get("id")) if isinstance(record, dict) else None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(qid, str | int) or isinstance(qid, bool) or not str(qid).strip():
            raise InvalidInput("a query needs an _id", source=name, line=number)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("a query needs a non-empty text", source=name, line=number)
        if str(qid) in seen:
            raise InvalidInput(f"query id {qid!r} repeated", source=name, line=number)
        seen.add(str(qid))
        queries.append((str(qid), text))
    if not queries:
        raise InvalidInput("no queries", source=name)
    return queries


def _hit_dict(rank: int, h: Hit) -> dict[str, Any]:
    """A hit as ``search --json`` prints it: :meth:`Hit.to_dict` after its rank, with
    ``text`` and ``metadata`` always there (null when the document has none), as
    this command has always printed them."""
    out = {"rank": rank, **h.to_dict()}
    out.setdefault("text", None)
    out.setdefault("metadata", None)
    return out


def _print_tables(queries: list[tuple[str, str]], results: list[Any], explain: bool) -> None:
    width = terminal_width()
    for (_, q), hits in zip(queries, results, strict=True):
        print(f"\nquery: {q}")
        if not hits:
            print("no results")
            continue
        rows = [
            (str(i + 1), h.external_id, f"{h.score:.3f}", h.text or "") for i, h in enumerate(hits)
        ]
        print_table(rows, ("rank", "id", "score", "text"), width=width)
        if explain:
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


def cmd_search(args: argparse.Namespace) -> int:
    if bool(args.queries) == (args.queries_file is not None):
        raise SystemExit("sie-index search: give query texts or --queries FILE (not both)")
    if args.queries_file is not None:
        queries = read_queries(args.queries_file)
    else:
        queries = [(str(n), q) for n, q in enumerate(args.queries, start=1)]
    encoder = _query_encoder(args, Path(args.index))
    index = open_index(args.index, encoder=encoder, verify=not args.no_verify)
    # one batch: the model loads once and every core works on it
    results = index.search_batch(
        [text for _, text in queries],
        params=_params(args),
        text=args.format != "trec",
        metadata=args.format != "trec",
        explain=args.explain,
    )
    pairs = list(zip(queries, results, strict=True))
    if args.format == "json":
        out = [
            {"qid": qid, "query": q, "hits": [_hit_dict(i + 1, h) for i, h in enumerate(hits)]}
            for (qid, q), hits in pairs
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
    elif args.format == "jsonl":
        for (qid, q), hits in pairs:
            record = {
                "qid": qid,
                "query": q,
                "hits": [_hit_dict(i + 1, h) for i, h in enumerate(hits)],
            }
            print(json.dumps(record, ensure_ascii=False))
    elif args.format == "trec":
        from sie_index.evaluation import trec_lines

        for (qid, _), hits in pairs:
            for line in trec_lines(qid, ((h.external_id, h.score) for h in hits), args.run_name):
                print(line)
    else:
        _print_tables(queries, results, args.explain)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("search", help="search an index: a table, JSON, JSON lines or a TREC run")
    p.add_argument("index", help=INDEX_HELP)
    p.add_argument("queries", nargs="*", help="one or more query texts (or --queries FILE)")
    p.add_argument(
        "--queries",
        dest="queries_file",
        metavar="FILE",
        help="read the queries from FILE ('-': stdin): one a line (its id the line number), "
        "or JSON lines with _id and text (BEIR queries.jsonl)",
    )
    p.add_argument("-k", type=int, default=10, help="hits per query")
    _add_filter_options(p, "only documents")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table, JSON, JSON lines (one query a line) or a TREC run (qid Q0 id rank score name)",
    )
    p.add_argument(
        "--json", action="store_const", const="json", dest="format", help="--format json"
    )
    p.add_argument("--run-name", default="sie-index", help="the last column of a TREC run")
    p.add_argument(
        "--explain",
        action="store_true",
        help="for each hit, the document token each query token matched, and how well",
    )
    p.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)
    _add_search_options(p)
    _add_encoder_options(p, building=False)
    p.set_defaults(func=cmd_search)
