"""The README's commands and examples, run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sie_index.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def test_first_screen_gives_the_two_commands() -> None:
    first_two = [code.strip() for lang, code in BLOCKS[:2]]
    assert first_two == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert README.index("bash scripts/test.sh") < 1500  # on the first screen
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/setup.sh"):
        assert (ROOT / script).is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_cli_examples_parse() -> None:
    lines = [
        line.split("#")[0].strip()
        for lang, code in BLOCKS
        if lang == "bash"
        for line in code.splitlines()
        if line.startswith(".venv/bin/sie-index ")
    ]
    assert len(lines) >= 4
    parser = build_parser()
    for line in lines:
        args = parser.parse_args(shlex.split(line)[1:])
        assert callable(args.func)


def test_python_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, filters, hybrid, changes, codecs, rerank, _serve, sharded = (
        code for lang, code in BLOCKS if lang == "python"
    )
    monkeypatch.chdir(tmp_path)
    names: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), names)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4  # three hits, then the batch's ids
    assert (tmp_path / "pkgs-index" / "CURRENT").is_file()
    exec(compile(filters, "README.md", "exec"), names)  # the filter examples run as written
    assert isinstance(names["hits"], list)
    exec(compile(hybrid, "README.md", "exec"), names)  # hybrid search, on that index
    assert capsys.readouterr().out.split() == ["emacs", "True", "True"]
    exec(compile(changes, "README.md", "exec"), {})  # the changes in place, on that index
    live, segments = map(int, capsys.readouterr().out.split())
    assert segments == 1 and 0 < live < 300
    exec(compile(codecs, "README.md", "exec"), {"Index": names["Index"]})  # a pq build
    assert capsys.readouterr().out.split() == ["pq", "128", "33"]  # list id: 1 byte (256 lists)
    exec(compile(rerank, "README.md", "exec"), {})  # maxsim over given documents
    assert capsys.readouterr().out.strip() == "resize and crop photos from the shell"
    exec(compile(sharded, "README.md", "exec"), {})  # shards, on the first example's index
    documents, resharded, shards = map(int, capsys.readouterr().out.split())
    assert documents == 200 and shards == 4 and 0 < resharded < 300


def test_demo_main_job_on_a_small_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "demo", "--limit", "300", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "300 documents" in out
    assert out.count("query:") == 6
    assert "* " in out  # a judged answer is in a top 3


def test_every_file_and_flag_the_readme_names_exists() -> None:
    for name in set(re.findall(r"[\w./-]+\.(?:py|sh|md|toml)\b", README)):
        if name.startswith("runs/"):  # what a run writes
            continue
        if "/" in name:
            assert (ROOT / name).exists(), name
        else:  # a bare name: some file of the project has it
            assert next(ROOT.glob(f"[!.]*/**/{name}"), None) or (ROOT / name).exists(), name
    options: set[str] = set()
    parser = build_parser()
    for action in parser._actions:
        for sub in getattr(action, "choices", None) or {}:
            options.update(opt for a in action.choices[sub]._actions for opt in a.option_strings)
    options.update(opt for a in parser._actions for opt in a.option_strings)
    for script in (ROOT / "scripts").glob("*.py"):  # the benchmark scripts' own flags
        options.update(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", script.read_text()))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README))
    assert named - options <= {"--no-deps", "--index-url"}, named - options  # pip's


def test_the_slow_tier_selects_tests() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "slow", "--collect-only", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"(\d+)/\d+ tests collected", out) and "test_kill_9" in out


def test_every_bench_command_the_readme_names_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench

    parser = bench.build_parser()
    commands = re.findall(r"`python scripts/bench\.py ([^`]*)`", README)
    assert len(commands) >= 8
    for command in commands:
        if command == "--help":
            continue
        args = parser.parse_args(shlex.split(command))
        assert callable(args.run), command
