"""scripts/bench.py: one tool, its subcommands, its report writer and its worker helper."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


@pytest.fixture
def scripts_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))


def test_help_lists_every_subcommand_with_a_line(scripts_path: None) -> None:
    import bench

    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    names = ["full", "build", "search", *(name for name, _ in bench.COMMANDS)]
    for name in names:
        assert re.search(rf"^    {re.escape(name)}\b", out, re.MULTILINE), name
    actions = bench.build_parser()._actions
    sub = next(a for a in actions if isinstance(a, argparse._SubParsersAction))
    described = {a.dest: a.help for a in sub._choices_actions}
    assert sorted(described) == sorted(names)
    assert all(text and "\n" not in text for text in described.values()), described


def test_every_subcommand_parses_its_own_options(scripts_path: None) -> None:
    import bench

    parser = bench.build_parser()
    args = parser.parse_args(["codecs", "--variants", "pq", "--reuse", "--out", "x"])
    assert (args.subcommand, args.variants, args.reuse, args.out) == ("codecs", "pq", True, "x")
    with pytest.raises(SystemExit):
        parser.parse_args(["phases", "--variants", "pq"])  # not an option of phases
    with pytest.raises(SystemExit):
        parser.parse_args(["--codecs"])  # the old flag forms are gone


def test_report_writer_says_what_made_it(scripts_path: None, tmp_path: Path) -> None:
    from bench_report import write_report

    write_report(tmp_path, "demo", {"p50_ms": 1.5}, "| a |\n|---|\n", "one run")
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["command"].startswith("python ")
    assert report["cores"] >= 1 and report["date"].endswith("+00:00")
    assert (report["medians"], report["p50_ms"]) == ("one run", 1.5)
    md = (tmp_path / "demo.md").read_text()
    assert md.startswith(f"Command: `{report['command']}`") and "timings: one run" in md
    assert md.endswith("| a |\n|---|\n")


def test_in_child_runs_in_its_own_process(scripts_path: None, tmp_path: Path) -> None:
    import os

    from bench_child import ChildFailed, in_child

    assert in_child(os.getpid) != os.getpid()
    kept = tmp_path / "kept" / "pid.json"
    assert in_child(os.getpid, keep=kept) == json.loads(kept.read_text())
    with pytest.raises(ChildFailed, match="int"):
        in_child(int, "not a number")
