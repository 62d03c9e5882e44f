"""The command line end to end on a slice of debian-pkgs with the real default model."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sie_index.cli import build_parser, main
from sie_index.corpus import packaged_dataset

SLICE = 300


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pkgs"
    assert main(["-q", "build", "debian-pkgs", str(out), "--limit", str(SLICE)]) == 0
    return out


def test_build_reports_counts(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(built), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == SLICE
    assert info["dim"] == 384
    assert info["encoder"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["token_index"]["kind"] == "flat"
    assert info["bytes_per_token"] > 768  # float16 vectors + FAISS + maps


def test_search_table_and_json(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(built), "ASCII art stereogram generator", "-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and "aa3d" in table
    assert main(["search", str(built), "ASCII art stereogram generator", "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    hits = result[0]["hits"]
    assert len(hits) == 3 and hits[0]["id"] == "aa3d"
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_evaluate_writes_report_and_run(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "debian-pkgs", "--index", str(built), "--exhaustive", "--out", str(out)]
    args += ["--exact-threshold", "0"]  # the token ANN, measured against exhaustive MaxSim
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "MRR@10" in printed and "ratio" in printed
    report = json.loads((out / "report.json").read_text())
    # only queries whose judged package is in the slice are run
    assert 0 < report["queries"] < 2000
    assert report["queries_without_indexed_answer"] == 2000 - report["queries"]
    for name in ("nDCG@10", "MRR@10", "R@1", "R@10", "R@100"):
        assert 0.0 <= report["metrics"][name] <= 1.0
    assert report["metrics"]["MRR@10"] > 0.5  # the slice is easy for MaxSim
    assert report["ratio_to_exhaustive"]["MRR@10"] == pytest.approx(1.0, abs=0.05)
    assert report["latency_ms"]["search_p50"] > 0
    assert report["latency_ms"]["with_encoding_p50"] > report["latency_ms"]["search_p50"]
    lines = (out / "run.trec").read_text().splitlines()
    qid, q0, _doc, rank, _score, name = lines[0].split()
    assert q0 == "Q0" and rank == "1" and name == "sie-index" and qid.startswith("q-")


def test_evaluate_sweep_writes_a_table_and_a_plot(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    args = ["evaluate", "debian-pkgs", "--index", str(built), "--sweep", "--out", str(out)]
    args += ["--sweep-k-token", "2,64", "--sweep-nprobe", "1,16", "--sweep-n-rerank", "4"]
    args += ["--exact-threshold", "0", "--max-queries", "40"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "exhaustive" in printed and "p50 ms" in printed
    report = json.loads((out / "sweep.json").read_text())
    assert 0 < report["queries"] <= 40
    points = {(p["k_token"], p["nprobe"]): p for p in report["points"]}
    assert sorted(points) == [(2, 1), (2, 16), (64, 1), (64, 16)]
    assert all(p["n_rerank"] == 4 for p in points.values())
    # each point measures what evaluate measures at its settings
    one = tmp_path / "one"
    settings = ["--k-token", "2", "--nprobe", "1", "--n-rerank", "4", "--exact-threshold", "0"]
    assert main([*args[:4], "--max-queries", "40", "--out", str(one), *settings]) == 0
    alone = json.loads((one / "report.json").read_text())["metrics"]
    assert points[(2, 1)]["metrics"] == pytest.approx(alone)
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    bad = ["evaluate", "debian-pkgs", "--index", str(built), "--sweep", "--sweep-k-token", "a,b"]
    assert main([*bad, "--out", str(out)]) == 2
    assert "k_token grid" in capsys.readouterr().err


def test_a_bad_corpus_line_is_named_and_nothing_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt") as fh:
        fh.write('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    assert main(["-q", "build", str(corpus), str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert "InvalidInput" in err and f"{corpus}:2" in err
    assert not (tmp_path / "idx").exists()
    assert main(["info", str(tmp_path)]) == 2
    assert "NotAnIndex" in capsys.readouterr().err


def test_every_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        assert p.format_help().strip(), name
        assert p.description or sub._name_parser_map[name] is not None


@pytest.mark.parametrize("script", ["build_index.py", "evaluate.py"])
def test_scripts_are_the_cli(script: str) -> None:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "scripts" / script), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "usage: sie-index" in out


def test_packaged_dataset_is_in_the_package() -> None:
    folder = packaged_dataset()
    assert (folder / "corpus.jsonl.gz").is_file() and (folder / "qrels" / "dev.tsv").is_file()
