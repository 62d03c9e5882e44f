"""``sie-index serve``: an index over HTTP."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sie_index.cli.options import (
    INDEX_HELP,
    NO_VERIFY_HELP,
    _add_encoder_options,
    _positive_int,
    _positive_seconds,
    _query_encoder,
)


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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
