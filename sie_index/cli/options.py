"""Argument types and option groups that several subcommands share, and the
helpers that turn them into library arguments."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from sie_index.errors import InvalidInput
from sie_index.fusion import DEFAULT_FUSION, DEFAULT_WEIGHT, FUSIONS

INDEX_HELP = "the index folder"
QUIET_HELP = "no progress bars"
VERBOSE_HELP = "log at INFO level"
NO_VERIFY_HELP = "check the vector file block by block as searches read it, not all at open"
# SieEncoder's own defaults (a test holds them equal), here so that parsing
# arguments does not import httpx.
SIE_DEADLINE, SIE_BATCH_SIZE, SIE_CONCURRENCY = 60.0, 32, 4


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one worth showing (not None, not
    the False of a flag), unless its help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: defaults in its help, and ``-q`` / ``-v`` accepted
    after the subcommand as well as before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # SUPPRESS: a flag given before the subcommand is not reset by the
        # subcommand's own default.
        self.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP
        )
        self.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )


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


def names_arg(text: str) -> list[str]:
    """A comma-separated list of names (empty: none)."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _params(args: argparse.Namespace) -> Any:
    from sie_index.params import SearchParams

    flt = _filter_args(args) if hasattr(args, "filter_json") else {}
    hybrid_only = [
        flag
        for flag, name in (
            ("--fusion", "fusion"),
            ("--fusion-weight", "fusion_weight"),
            ("--lexical-k", "lexical_k"),
        )
        if getattr(args, name, None) is not None
    ]
    if hybrid_only and not getattr(args, "hybrid", False):
        raise InvalidInput(f"{', '.join(hybrid_only)} tune a hybrid search: add --hybrid")
    return SearchParams(**{k: v for k, v in flt.items() if v is not None}).with_(
        k=getattr(args, "k", None),
        k_token=args.k_token,
        n_rerank=args.n_rerank,
        n_centroid=getattr(args, "n_centroid", None),
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        exact_threshold=args.exact_threshold,
        hybrid=True if getattr(args, "hybrid", False) else None,
        fusion=getattr(args, "fusion", None),
        fusion_weight=getattr(args, "fusion_weight", None),
        lexical_k=getattr(args, "lexical_k", None),
    )


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--k-token",
        type=int,
        help="document tokens fetched per query token (default: the index's own, from its size)",
    )
    p.add_argument(
        "--n-rerank",
        type=int,
        help="candidates rescored by exact MaxSim (default: the index's own, at least 1.5 k)",
    )
    p.add_argument(
        "--nprobe",
        type=int,
        help="inverted lists visited per query token, IVF (default: the index's own)",
    )
    p.add_argument(
        "--n-centroid",
        type=int,
        help="candidates screened by centroid interaction down to n_rerank, IVF "
        "(default: the index's own, none below 7.2M tokens; 0: no screen)",
    )
    p.add_argument("--ef-search", type=int, help="HNSW search breadth")
    p.add_argument(
        "--exact-threshold",
        type=int,
        help="score every allowed document exactly when at most this many are allowed "
        "(default 8 x max(n_rerank, k); 0: always the token ANN)",
    )
    p.add_argument(
        "--hybrid",
        action="store_true",
        help="add BM25's best documents to the candidates and fuse the scores",
    )
    p.add_argument(
        "--fusion",
        choices=FUSIONS,
        help=f"with --hybrid: the final score (default: {DEFAULT_FUSION})",
    )
    p.add_argument(
        "--fusion-weight",
        type=float,
        metavar="W",
        help=f"with --fusion weighted: the weight of MaxSim, 0..1 (default: {DEFAULT_WEIGHT})",
    )
    p.add_argument(
        "--lexical-k", type=int, metavar="N", help="with --hybrid: BM25 candidates (default: 50)"
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


def _sharded(path: Path) -> bool:
    from storage import read_shard_map

    return read_shard_map(path) is not None


def open_index(path: str | Path, **options: Any) -> Any:
    from sie_index.sharded import open_index as open_any

    return open_any(path, **options)
