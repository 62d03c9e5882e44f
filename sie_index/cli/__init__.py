"""The ``sie-index`` command: a thin layer over the library.

Each subcommand parses its arguments, makes one or two library calls, prints
the result, and turns a :class:`SieIndexError` into a one-line ``error: ...``
on stderr and exit status 2 (an interrupt: one line, status 130). No logic
lives only here.

One module per subcommand (or family of them), each with its ``add_parser``;
``options`` holds the argument groups several of them share.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from sie_index import __version__
from sie_index.cli import build, demo, evaluate, info, search, serve, update
from sie_index.cli.options import QUIET_HELP, VERBOSE_HELP, CommandParser, HelpFormatter
from sie_index.errors import SieIndexError

__all__ = ["build_parser", "main"]


# The library's messages name its keyword arguments; on the command line the same
# advice is a flag. Translated here, once, so that the library need not know
# about the CLI.
_KEYWORD_FLAGS = (
    (re.compile(r"\(ShardedIndex\.build, overwrite\)"), "(sie-index build --shards N --overwrite)"),
    (re.compile(r"\bcompact\(retrain=True\)"), "compact --retrain"),
    (re.compile(r"\bpass (overwrite|resume|retrain)(=True)?\b"), r"pass --\1"),
    (re.compile(r"\b(overwrite|resume|retrain)=True\b"), r"--\1"),
    (re.compile(r"\(split=\)"), "(--split)"),
    (re.compile(r"\bfilter_sql="), "--filter-sql"),
    (re.compile(r"\bdim=(\d+):"), r"--dim \1:"),
    (re.compile(r"\bopen the index with encoder=\.\.\."), "name its encoder with --encoder"),
)


def read_journal_safely(folder: Path) -> bool:
    """Whether ``folder`` holds an interrupted build (its journal), without raising."""
    from storage import read_journal

    try:
        return read_journal(folder) is not None
    except (OSError, SieIndexError):
        return False


def as_flags(message: str) -> str:
    """A library message with its keyword arguments named as the CLI's flags."""
    for pattern, flag in _KEYWORD_FLAGS:
        message = pattern.sub(flag, message)
    return message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sie-index",
        description="Build, change, search, serve and evaluate multi-vector indexes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    for module in (build, update, search, serve, info, evaluate, demo):
        module.add_parser(sub)
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
        message = as_flags(" ".join(str(exc).split()))  # one line, whatever it holds
        print(f"error: sie-index {args.command}: {type(exc).__name__}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = ""
        if args.command == "build" and read_journal_safely(Path(args.index)):
            kept = "; what it encoded is kept: run the same command with --resume"
        print(f"error: sie-index {args.command}: interrupted{kept}", file=sys.stderr)
        return 130
