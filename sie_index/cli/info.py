"""``sie-index info`` and ``verify``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from sie_index.cli.options import (
    INDEX_HELP,
    NO_VERIFY_HELP,
    open_index,
)
from sie_index.cli.table import print_table


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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
