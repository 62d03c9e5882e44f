"""``sie-index search``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

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
from sie_index.cli.table import _clip, print_table


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
                "hits": [
                    {
                        "rank": i + 1,
                        "id": h.external_id,
                        "score": h.score,
                        "text": h.text,
                        "metadata": h.metadata,
                        **({"explain": [asdict(m) for m in h.explain]} if h.explain else {}),
                    }
                    for i, h in enumerate(hits)
                ],
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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
