"""``sie-index build``: a new index from a corpus."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sie_index.cli.options import (
    _add_encoder_options,
    _corpus_arg,
    _sie_options,
    names_arg,
)
from sie_index.errors import InvalidInput


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
    p.add_argument(
        "--lexical-fields",
        metavar="F,G",
        default="",
        help="metadata fields the lexicon indexes besides the text, for --hybrid searches",
    )
    p.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    p.add_argument("--batch-size", type=int, default=256, help="documents per encode/commit batch")
    p.add_argument("--skip-bad-lines", action="store_true", help="leave bad corpus lines out")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing index (evaluate: and an earlier report in --out)",
    )
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
        if args.lexical_fields:
            raise InvalidInput("--lexical-fields is not available with --shards yet")
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
        lexical_fields=names_arg(args.lexical_fields),
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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build", help="build an index from a JSONL corpus or a BEIR folder")
    p.add_argument(
        "corpus", help="corpus .jsonl / .jsonl.gz / .tsv, a BEIR folder, or 'debian-pkgs'"
    )
    p.add_argument("index", help="folder to write the index to")
    _add_build_options(p)
    p.set_defaults(func=cmd_build)
