"""``sie-index info`` and ``verify``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sie_index.cli.options import (
    INDEX_HELP,
    NO_VERIFY_HELP,
    open_index,
)
from sie_index.cli.table import print_table, terminal_width


def _value(value: Any) -> str:
    if isinstance(value, float):  # a ratio or a size per token: four figures say it
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        return ", ".join(_value(v) for v in value) or "(none)"
    if value == {}:
        return "(none)"
    return str(value)


def info_rows(info: Mapping[str, Any], indent: int = 0) -> list[tuple[str, str]]:
    """``info`` as (field, value) rows; a nested mapping (or a list of them) as its
    own rows under its field, indented, so that no row is a JSON blob."""
    rows: list[tuple[str, str]] = []
    pad = " " * indent
    for key, value in info.items():
        if isinstance(value, dict) and value:
            rows.append((f"{pad}{key}", ""))
            rows.extend(info_rows(value, indent + 2))
        elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
            rows.append((f"{pad}{key}", ""))
            items = {f"[{i}]": v for i, v in enumerate(value)}
            rows.extend(info_rows(items, indent + 2))
        else:
            rows.append((f"{pad}{key}", _value(value)))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    info = open_index(args.index, verify=not args.no_verify).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print_table(info_rows(info), ("field", "value"), width=terminal_width())
    return 0


def _verify_sharded(args: argparse.Namespace) -> int:
    from sie_index.sharded import ShardedIndex

    with ShardedIndex.open(args.index, verify=False) as index:
        report = index.verify()
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["ok"]:
        print(f"ok: {report['path']}: every shard verified, every id in the shard it routes to")
        for warning in report["warnings"]:
            print(f"warning: {warning}")
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
        for warning in report.warnings:
            print(f"warning: {warning}")
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
