"""The command line end to end on a slice of debian-pkgs with the real default model."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import inspect
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import sie_index
from sie_index import Index, SieEncoder, TokenStatesEncoder
from sie_index.cli import as_flags, build_parser, main
from sie_index.cli.options import SIE_BATCH_SIZE, SIE_CONCURRENCY, SIE_DEADLINE
from sie_index.corpus import default_split, packaged_dataset
from sie_index.errors import InvalidInput
from storage.token_index import AUTO_FLAT_MAX_TOKENS, auto_nlist
from tests.sie_server import Fault, LoopbackSie

ROOT = Path(__file__).resolve().parents[1]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"

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
    # auto: past AUTO_FLAT_MAX_TOKENS an ivf-pq index, its lists scaled to the corpus
    assert info["tokens"] > AUTO_FLAT_MAX_TOKENS
    assert info["token_index"]["kind"] == "ivf-pq"
    assert info["token_index"]["nlist"] == auto_nlist(info["tokens"])
    assert info["bytes_per_token"] > 768  # float16 vectors + FAISS + maps


def test_search_table_and_json(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(built), "ASCII art stereogram generator", "-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and "aa3d" in table
    assert main(["search", str(built), "ASCII art stereogram generator", "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    hits = result[0]["hits"]
    assert len(hits) == 3 and hits[0]["id"] == "aa3d"
    assert hits[0]["rank"] == 1 and isinstance(hits[0]["doc_id"], int)  # Hit.to_dict, ranked
    assert "stereogram" in hits[0]["text"] and "metadata" in hits[0]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_search_reads_many_queries_and_writes_a_trec_run(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    batch = Index.search_batch

    def counted(self: Index, queries: list[str], *args: object, **kwargs: object) -> object:
        calls.append(len(queries))
        return batch(self, queries, *args, **kwargs)

    monkeypatch.setattr(Index, "search_batch", counted)
    lines = tmp_path / "queries.txt"
    lines.write_text("ASCII art stereogram generator\n\nweb browser\n", encoding="utf-8")
    args = ["search", str(built), "--queries", str(lines), "-k", "3", "--format", "trec"]
    assert main([*args, "--run-name", "mine"]) == 0
    assert calls == [2]  # one batch for every query: the model is loaded once
    run = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [(r[0], r[1], r[3], r[5]) for r in run[:3]] == [
        ("1", "Q0", "1", "mine"),
        ("1", "Q0", "2", "mine"),
        ("1", "Q0", "3", "mine"),
    ]
    assert run[0][2] == "aa3d" and {r[0] for r in run[3:]} == {"3"} and len(run) == 6
    assert float(run[0][4]) >= float(run[1][4])


def test_search_reads_beir_queries_from_stdin_as_json_lines(
    built: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [
        {"_id": "q-art", "text": "ASCII art stereogram generator"},
        {"_id": "q-2", "text": "x"},
    ]
    stdin = "\n".join(json.dumps(r) for r in records) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["search", str(built), "--queries", "-", "-k", "2", "--format", "jsonl"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["qid"] for o in out] == ["q-art", "q-2"]
    assert out[0]["hits"][0]["id"] == "aa3d" and len(out[1]["hits"]) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin + '{"_id": "q-3"}\n'))
    assert main(["search", str(built), "--queries", "-"]) == 2
    assert "<stdin>:3" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # texts and a file: which one?
        main(["search", str(built), "q", "--queries", "-"])


def test_the_search_table_follows_the_terminal_width(
    built: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    widths = {}
    for columns in (60, 200):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert main(["search", str(built), "ASCII art stereogram generator", "-k", "5"]) == 0
        widths[columns] = max(len(line) for line in capsys.readouterr().out.splitlines())
    assert widths[60] <= 60 < 100 < widths[200] <= 200
    assert main(["search", str(built), "ASCII art", "--ids", "no-such-package"]) == 0
    out = capsys.readouterr().out
    assert "no results" in out and "rank" not in out


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("year=2021", "UnknownFilterField: no document has the metadata field 'year'"),
        ("year==2021", "InvalidInput: --where 'year==2021': '==' is not an operator"),
    ],
)
def test_a_where_on_no_field_or_with_bad_syntax_is_an_error_not_no_results(
    built: Path, where: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", str(built), "ASCII art", "--where", where]) == 2
    done = capsys.readouterr()
    assert error in done.err and "no results" not in done.out


def test_info_fits_an_80_column_terminal(
    built: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["info", str(built)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not any("{" in line for line in lines)  # nested values are rows, not JSON
    assert "token_index" in [line.strip() for line in lines]
    assert any(line.startswith("  kind ") and line.split()[-1] == "ivf-pq" for line in lines)
    (per_token,) = [line for line in lines if line.startswith("bytes_per_token")]
    assert len(per_token.split()[-1].rpartition(".")[2]) <= 2  # rounded


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


def test_evaluate_keeps_an_earlier_report_and_warns_of_an_index_of_a_slice(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "debian-pkgs", "--index", str(built), "--out", str(out)]
    args += ["--max-queries", "5"]
    assert main(args) == 0
    done = capsys.readouterr()
    header = next(line for line in done.out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "pipeline"]  # no empty exhaustive columns
    assert "(dev)" in done.out  # the split the folder has
    # 300 documents of 60,631: most judged answers are not in the index
    assert "warning: the index holds" in done.err and "slice" in done.err
    report = (out / "report.json").read_bytes()
    assert main([*args, "--max-queries", "3"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--overwrite" in err and "report.json" in err
    assert (out / "report.json").read_bytes() == report
    assert main([*args, "--max-queries", "3", "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["queries"] == 3


def _beir(folder: Path, splits: list[str]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a document"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    for split in splits:
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


def test_evaluate_scores_the_split_the_folder_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert default_split(_beir(tmp_path / "one", ["test"])) == "test"
    assert default_split(_beir(tmp_path / "dev", ["test", "dev", "train"])) == "dev"
    several = _beir(tmp_path / "two", ["train", "test"])
    with pytest.raises(InvalidInput, match="test, train"):
        default_split(several)
    assert main(["evaluate", str(several), "--index", str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert "test, train" in err and "--split" in err and "split=" not in err
    assert not (tmp_path / "idx").exists()  # refused before building anything


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
    # the index's own defaults at the run depth (k=100): n_rerank 1.2 k, no screen
    assert report["base_settings"] == {
        "k_token": 128,
        "nprobe": 4,
        "n_rerank": 120,
        "n_centroid": 0,
    }
    assert all(p["n_centroid"] == 0 for p in points.values())
    assert report["exhaustive_latency_ms"]["p50"] > 0  # the plot's oracle point
    # each point measures what evaluate measures at its settings
    one = tmp_path / "one"
    settings = ["--k-token", "2", "--nprobe", "1", "--n-rerank", "4", "--exact-threshold", "0"]
    assert main([*args[:4], "--max-queries", "40", "--out", str(one), *settings]) == 0
    alone = json.loads((one / "report.json").read_text())["metrics"]
    assert points[(2, 1)]["metrics"] == pytest.approx(alone)
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    bad = ["evaluate", "debian-pkgs", "--index", str(built), "--sweep", "--sweep-k-token", "a,b"]
    assert main([*bad, "--out", str(tmp_path / "bad")]) == 2
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


def test_every_command_and_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {choice.dest: choice.help for choice in sub._choices_actions}
    assert sorted(listed) == sorted(sub.choices)  # every subcommand is in the list, with ...
    missing = [name for name, text in listed.items() if not (text or "").strip()]  # ... a help
    for name, p in [("sie-index", parser), *sub.choices.items()]:
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_shows_defaults_and_no_markup() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = {"sie-index": parser.format_help()}
    texts.update({name: p.format_help() for name, p in sub.choices.items()})
    for name, text in texts.items():
        for markup in ("``", ":class:", ":func:", ":meth:", ":mod:"):
            assert markup not in text, (name, markup)
    flat = {name: " ".join(text.split()) for name, text in texts.items()}
    assert "hits per query (default: 10)" in flat["search"]
    assert "documents per encode/commit batch (default: 256)" in flat["build"]
    assert "(default: None)" not in " ".join(flat.values())
    for name, p in sub.choices.items():  # every default worth showing is shown
        for action in p._actions:
            if action.default not in (None, False, argparse.SUPPRESS) and action.help:
                assert "%(default)" in p._get_formatter()._get_help_string(action), (name, action)


def test_version_and_quiet_or_verbose_after_the_subcommand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"sie-index {sie_index.__version__}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for module in ("sie_index", "sie_index.cli"):  # python -m works as the script does
        done = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.stdout.strip() == f"sie-index {sie_index.__version__}", module
    parse = build_parser().parse_args
    after = parse(["info", "idx", "-q", "-v"])
    assert after.quiet is True and after.verbose is True
    before = parse(["-q", "info", "idx"])
    assert before.quiet is True and before.verbose is False  # not reset by the subcommand
    assert parse(["info", "idx"]).quiet is False


def test_errors_name_flags_not_keywords(
    small_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "fine"}\n', encoding="utf-8")
    assert main(["-q", "build", str(corpus), str(small_index)]) == 2
    err = capsys.readouterr().err
    assert "rebuild it with --overwrite" in err and "overwrite=True" not in err
    for message, flags in [
        (
            "compact(retrain=True) would ...: rebuild it (ShardedIndex.build, overwrite)",
            "compact --retrain would ...: rebuild it (sie-index build --shards N --overwrite)",
        ),
        ("a raw SQL predicate goes in filter_sql=", "a raw SQL predicate goes in --filter-sql"),
        ("dim=999: a projection keeps between", "--dim 999: a projection keeps between"),
        ("open the index with encoder=..., or", "name its encoder with --encoder, or"),
        ("2 qrels splits; name one (split=)", "2 qrels splits; name one (--split)"),
    ]:
        assert as_flags(message) == flags
    assert main(["-q", "build", str(corpus), str(tmp_path / "idx"), "--dim", "999"]) == 2
    err = capsys.readouterr().err
    assert "--dim 999: a projection keeps" in err and "dim=" not in err


def test_demo_twice_reuses_its_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--limit", "60"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("building an index of debian-pkgs (60 documents)")
    current = (out / "CURRENT").read_bytes()
    assert main(["demo", "--out", str(out), "--limit", "60", "-q"]) == 0
    second = capsys.readouterr().out
    assert second.startswith(f"reusing the index at {out} (built earlier, ")
    assert "delete it" in second.splitlines()[0] and "building" not in second
    assert (out / "CURRENT").read_bytes() == current  # nothing was committed
    # the same searches, the same answers
    assert first.split("\nquery: ", 1)[1] == second.split("\nquery: ", 1)[1]


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


# -- SIE options and errors -------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_model() -> TokenStatesEncoder:
    return TokenStatesEncoder(bf16=False)


@pytest.fixture
def sie_server(local_model: TokenStatesEncoder) -> Iterator[LoopbackSie]:
    with LoopbackSie(local_model, model=MODEL) as server:
        yield server


@pytest.fixture
def small_index(tmp_path: Path) -> Path:
    """An index of query-vector-searchable documents (no model needed)."""
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(4)]
    Index.from_vectors(tmp_path / "small", ["a", "b", "c", "d"], vectors, index_kind="flat")
    return tmp_path / "small"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sie_index.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_the_sie_options_have_the_encoders_defaults_and_show_them() -> None:
    defaults = inspect.signature(SieEncoder).parameters
    assert defaults["deadline"].default == SIE_DEADLINE
    assert defaults["batch_size"].default == SIE_BATCH_SIZE
    assert defaults["max_in_flight"].default == SIE_CONCURRENCY
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("build", "add", "upsert", "search", "evaluate"):
        text = " ".join(sub.choices[name].format_help().split())
        assert "--sie-deadline SECONDS wall time one SIE request may take" in text, name
        assert f"(default: {SIE_DEADLINE:g})" in text and f"(default: {SIE_BATCH_SIZE})" in text
        assert f"(default: {SIE_CONCURRENCY})" in text


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--sie-deadline", "0"),
        ("--sie-deadline", "-1"),
        ("--sie-deadline", "nan"),
        ("--sie-deadline", "inf"),
        ("--sie-deadline", "soon"),
        ("--sie-batch-size", "0"),
        ("--sie-batch-size", "1.5"),
        ("--sie-concurrency", "-2"),
    ],
)
def test_sie_options_must_be_positive(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["search", "idx", "q", "--encoder", "sie", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: {value!r} is not a" in capsys.readouterr().err


def test_sie_batch_size_and_concurrency_reach_the_encoder(
    sie_server: LoopbackSie, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": f"package {i} does things"}) for i in range(12)]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sie = ["--encoder", "sie", "--sie-url", sie_server.url, "--model", MODEL]
    build = ["-q", "build", str(corpus), str(tmp_path / "idx"), *sie, "--sie-batch-size", "1"]
    assert main([*build, "--sie-concurrency", "1"]) == 0
    assert {s.n_items for s in sie_server.stats.seen} == {1}
    assert sie_server.stats.max_in_flight == 1


def test_sie_deadline_reaches_the_encoder(
    sie_server: LoopbackSie, small_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sie_server.faults.append(Fault(trickle=0.2))
    sie = ["--encoder", "sie", "--sie-url", sie_server.url, "--model", MODEL]
    started = time.monotonic()
    assert main(["search", str(small_index), "q", *sie, "--sie-deadline", "1.5"]) == 2
    assert time.monotonic() - started < 1.5 + 3  # a bound on correctness, not a timing
    assert "deadline of 1.5s exceeded" in capsys.readouterr().err


def test_a_typed_error_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    done = cli("info", str(tmp_path))  # a folder, but not an index
    assert done.returncode == 2
    assert done.stderr.startswith("error: sie-index info: NotAnIndex: ")
    assert len(done.stderr.splitlines()) == 1 and str(tmp_path) in done.stderr


def interruptible() -> None:
    """In the child before it runs: SIGINT back to its default, so Python turns it
    into KeyboardInterrupt even when these tests run where it is ignored (a shell
    starts background jobs that way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupt_is_one_line_and_status_130(
    sie_server: LoopbackSie, small_index: Path
) -> None:
    sie_server.always = Fault(trickle=0.2)  # the search waits on the server
    sie = ["--encoder", "sie", "--sie-url", sie_server.url, "--model", MODEL]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "sie_index.cli", "search", str(small_index), "q", *sie]
    with subprocess.Popen(
        args, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=interruptible
    ) as child:
        try:
            assert sie_server.arrived.wait(60), "the search never reached the server"
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=30)
        finally:
            sie_server.always = None
            child.kill()
    assert child.returncode == 130
    assert err == "error: sie-index search: interrupted\n"


def _stored_batches(folder: Path) -> int:
    """Batches a journaled build in ``folder`` has committed so far (0: none yet, or
    the store is busy this instant)."""
    for db in folder.glob("seg-*/docs.sqlite"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM build_batches").fetchone()[0])
        except sqlite3.Error:
            return 0
    return 0


def test_an_interrupted_build_says_what_is_kept_and_resumes(
    sie_server: LoopbackSie, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (a real SIGINT) in a CLI build: one line that says to resume, exit
    130; the resume encodes only what was not stored."""
    docs = [{"id": f"d{i}", "text": f"package number {i} for testing"} for i in range(40)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    sie_server.faults.extend([Fault(), Fault()])  # two batches at full speed ...
    sie_server.always = Fault(trickle=0.2)  # ... then the server crawls
    sie = ["--encoder", "sie", "--sie-url", sie_server.url, "--model", MODEL]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    idx = tmp_path / "idx"
    build = ["build", str(corpus), str(idx), "--batch-size", "8", *sie]
    args = [sys.executable, "-m", "sie_index.cli", "-q", *build]
    with subprocess.Popen(
        args, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=interruptible
    ) as child:
        try:
            deadline = time.monotonic() + 60
            # the third request is on its way and a batch is stored (on a loaded machine
            # the store can lag the encoder's requests)
            while not (sie_server.stats.requests >= 3 and _stored_batches(idx)):
                assert time.monotonic() < deadline, "the build never stored a batch"
                time.sleep(0.05)
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=30)
        finally:
            sie_server.always = None
            child.kill()
    assert child.returncode == 130
    assert err == (
        "error: sie-index build: interrupted; what it encoded is kept: "
        "run the same command with --resume\n"
    )
    assert main(["-q", *build, "--resume"]) == 0
    out = capsys.readouterr().out
    kept = int(out.split("resumed: ")[1].split()[0])
    assert 8 <= kept < 40 and kept % 8 == 0
    with Index.open(idx) as index:
        assert sorted(index.external_ids()) == sorted(d["id"] for d in docs)


def test_add_resume_leaves_out_what_is_in_and_commits_in_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = [{"id": f"d{i}", "text": f"package number {i} for testing"} for i in range(30)]
    first, second = tmp_path / "first.jsonl", tmp_path / "all.jsonl"
    first.write_text("".join(json.dumps(d) + "\n" for d in docs[:10]), encoding="utf-8")
    second.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    idx = tmp_path / "idx"
    assert main(["-q", "build", str(first), str(idx), "--index-kind", "flat"]) == 0
    capsys.readouterr()
    assert main(["-q", "add", str(idx), str(second)]) == 2  # d0 is there already
    assert "d0" in capsys.readouterr().err
    resume = ["--resume", "--commit-every", "8", "--batch-size", "4"]
    assert main(["-q", "add", str(idx), str(second), *resume]) == 0
    out = capsys.readouterr().out
    assert "resumed: 10 documents already in the index were left out" in out
    assert "20 added; 30 documents" in out
    with Index.open(idx) as index:
        assert sorted(index.external_ids()) == sorted(d["id"] for d in docs)
        assert index.info()["generation"] >= 4  # the build, then runs of 8 + 8 + 4
