"""Corpus and BEIR readers: record shapes, every bad-line error, skip mode, streaming."""

from __future__ import annotations

import gzip
import json
import logging
from itertools import count, islice
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sie_index.corpus import (
    BadLine,
    BeirDataset,
    CorpusStats,
    Document,
    batched,
    load_qrels,
    load_queries,
    packaged_dataset,
    read_documents,
    validate_corpus,
)
from sie_index.corpus_items import documents_of
from sie_index.encoders.precomputed import PrecomputedEncoder
from sie_index.errors import InvalidInput
from sie_index.index import Index
from tests.conftest import synthetic_corpus

GOOD = b'{"_id": "a", "text": "alpha"}'


def write(path: Path, lines: list[bytes], *, gz: bool = False, eol: bytes = b"\n") -> Path:
    data = b"".join(line + eol for line in lines)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def jline(record: Any) -> bytes:
    return json.dumps(record).encode()


def assert_names(err: InvalidInput, path: Path, line: int | None, doc_id: str | None) -> None:
    assert err.source == str(path)
    assert err.line == line
    assert err.doc_id == doc_id
    where = f"{path}:{line}" if line is not None else str(path)
    assert where in str(err)
    if doc_id is not None:
        assert repr(doc_id) in str(err)


# --- record shapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(
            {"_id": "d1", "title": "", "text": "body"},
            Document(id="d1", text="body"),
            id="beir-empty-title",
        ),
        pytest.param(
            {"_id": "d1", "title": "Head", "text": "body"},
            Document(id="d1", text="Head\nbody", metadata={"title": "Head"}),
            id="beir-title",
        ),
        pytest.param(
            {"_id": "d1", "title": "Head", "text": ""},
            Document(id="d1", text="Head\n", metadata={"title": "Head"}),
            id="title-only",
        ),
        pytest.param(
            {"id": "d1", "text": "body", "metadata": {"lang": "en"}},
            Document(id="d1", text="body", metadata={"lang": "en"}),
            id="plain-metadata",
        ),
        pytest.param(
            {"id": "d1", "text": "body", "metadata": None},
            Document(id="d1", text="body"),
            id="null-metadata",
        ),
        pytest.param(
            {"id": "d1", "text": "body", "url": "u", "metadata": {"lang": "en"}},
            Document(id="d1", text="body", metadata={"lang": "en", "url": "u"}),
            id="extra-fields-merge",
        ),
        pytest.param({"id": 42, "text": "body"}, Document(id="42", text="body"), id="int-id"),
        pytest.param(
            {"id": "d1", "contents": "body", "lang": "en"},
            Document(id="d1", text="body", metadata={"lang": "en"}),
            id="pyserini-contents",
        ),
        pytest.param({"_id": -7, "text": "x"}, Document(id="-7", text="x"), id="negative-int-id"),
        pytest.param(
            {"_id": "ü", "text": "naïve ☃ text"},
            Document(id="ü", text="naïve ☃ text"),
            id="unicode",
        ),
    ],
)
def test_record_shapes(tmp_path: Path, record: dict[str, Any], expected: Document) -> None:
    path = write(tmp_path / "c.jsonl", [jline(record)])
    [doc] = read_documents(path)
    assert (doc.id, doc.text, doc.metadata) == (expected.id, expected.text, expected.metadata)
    assert (doc.source, doc.line) == (str(path), 1)


def test_document_repr_is_short() -> None:
    doc = Document(id="x", text="y" * 10_000)
    assert len(repr(doc)) < 200


# --- every bad line -------------------------------------------------------------------

BAD_LINES = [
    pytest.param(b'{"_id": "b", "text": ', None, "not valid JSON", id="bad-json"),
    pytest.param(b'["b", "text"]', None, "got array", id="not-object"),
    pytest.param(b'"just a string"', None, "got string", id="not-object-string"),
    pytest.param(b'{"text": "t"}', None, "missing id", id="missing-id"),
    pytest.param(b'{"_id": 1.5, "text": "t"}', None, "got float", id="id-float"),
    pytest.param(b'{"_id": true, "text": "t"}', None, "got boolean", id="id-bool"),
    pytest.param(b'{"_id": null, "text": "t"}', None, "got null", id="id-null"),
    pytest.param(b'{"_id": ["b"], "text": "t"}', None, "got array", id="id-list"),
    pytest.param(b'{"_id": "  ", "text": "t"}', None, "is empty", id="id-blank"),
    pytest.param(b'{"_id": "b", "id": "b", "text": "t"}', None, "both", id="both-ids"),
    pytest.param(b'{"_id": "b"}', "b", "missing 'text'", id="missing-text"),
    pytest.param(b'{"_id": "b", "text": 5}', "b", "must be a string", id="text-int"),
    pytest.param(b'{"_id": "b", "text": null}', "b", "got null", id="text-null"),
    pytest.param(b'{"_id": "b", "text": ["t"]}', "b", "got array", id="text-list"),
    pytest.param(b'{"_id": "b", "text": ""}', "b", "text is empty", id="text-empty"),
    pytest.param(b'{"_id": "b", "text": " \\n\\t "}', "b", "text is empty", id="text-blank"),
    pytest.param(b'{"_id": "b", "text": "t", "title": 3}', "b", "'title'", id="title-int"),
    pytest.param(
        b'{"_id": "b", "text": "t", "contents": "c"}', "b", "'contents'", id="text-and-contents"
    ),
    pytest.param(b'{"_id": "b", "contents": 5}', "b", "'contents'", id="contents-int"),
    pytest.param(b'{"_id": "b", "text": "t", "metadata": [1]}', "b", "JSON object", id="meta-list"),
    pytest.param(b'{"_id": "b", "text": "t", "metadata": "m"}', "b", "JSON object", id="meta-str"),
    pytest.param(
        b'{"_id": "b", "text": "t", "k": 1, "metadata": {"k": 2}}', "b", "'k'", id="meta-clash"
    ),
    pytest.param(b'{"_id": "b", "text": "t", "v": NaN}', None, "NaN", id="nan-constant"),
    pytest.param(b'{"_id": "b", "text": "\\ud800"}', "b", "surrogate", id="lone-surrogate"),
    pytest.param(b'{"_id": "b", "text": "t", "v": 1e400}', None, "1e400", id="huge-number"),
    pytest.param(
        b'{"_id": "b", "text": "t", "metadata": {"v": [-2E+999]}}', None, "2E+999", id="huge-neg"
    ),
    pytest.param(b'{"_id": "b", "text": "t\\u0000u"}', "b", "NUL", id="text-nul"),
    pytest.param(b'{"_id": "b\\u0000", "text": "t"}', None, "NUL", id="id-nul"),
    pytest.param(b'{"_id": "b", "text": "t", "k\\u0000": 1}', "b", "NUL", id="key-nul"),
    pytest.param(
        b'{"_id": "b", "text": "t", "metadata": {"k": "\\udc00"}}',
        "b",
        "surrogate",
        id="meta-surrogate",
    ),
    pytest.param(b'{"_id": "b", "text": "caf\xe9"}', None, "UTF-8", id="bad-utf8"),
    pytest.param(b'{"_id": "b", "text": "\xff\xfe"}', None, "UTF-8", id="bad-utf8-bytes"),
    pytest.param(b"\xef\xbb\xbf" + GOOD, None, "BOM", id="bom-not-at-start"),
]


@pytest.mark.parametrize(("line", "doc_id", "reason"), BAD_LINES)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_bad_line_raises_naming_it(
    tmp_path: Path, line: bytes, doc_id: str | None, reason: str, gz: bool
) -> None:
    path = write(tmp_path / "c.jsonl", [GOOD, line, b'{"_id": "z", "text": "last"}'], gz=gz)
    docs = read_documents(path)
    assert next(docs).id == "a"
    with pytest.raises(InvalidInput) as info:
        next(docs)
    assert_names(info.value, path, 2, doc_id)
    assert reason in str(info.value)


@pytest.mark.parametrize(("line", "doc_id", "reason"), BAD_LINES)
def test_bad_line_skipped(tmp_path: Path, line: bytes, doc_id: str | None, reason: str) -> None:
    path = write(tmp_path / "c.jsonl", [GOOD, line, b'{"_id": "z", "text": "last"}'])
    bad: list[BadLine] = []
    assert [d.id for d in read_documents(path, on_error="skip", bad_lines=bad)] == ["a", "z"]
    [one] = bad
    assert (one.source, one.line, one.doc_id) == (str(path), 2, doc_id)
    assert reason in one.reason


def test_duplicate_id_names_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [GOOD, b'{"_id": "b", "text": "t"}', b"", GOOD])
    with pytest.raises(InvalidInput) as info:
        list(read_documents(path))
    assert_names(info.value, path, 4, "a")
    assert "duplicate" in str(info.value)
    assert "first seen at line 1" in str(info.value)


def test_duplicate_after_many_lines_and_int_vs_str(tmp_path: Path) -> None:
    lines = [jline({"_id": i, "text": "t"}) for i in range(2000)]
    path = write(tmp_path / "c.jsonl", [*lines, jline({"_id": "7", "text": "again"})])
    bad: list[BadLine] = []
    assert sum(1 for _ in read_documents(path, on_error="skip", bad_lines=bad)) == 2000
    assert bad == [
        BadLine(
            source=str(path), line=2001, doc_id="7", reason="duplicate id, first seen at line 8"
        )
    ]


def test_bad_record_does_not_claim_its_id(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [b'{"_id": "a", "text": ""}', GOOD])
    bad: list[BadLine] = []
    assert [d.line for d in read_documents(path, on_error="skip", bad_lines=bad)] == [2]
    assert [b.line for b in bad] == [1]


def test_skip_collects_every_bad_line(tmp_path: Path) -> None:
    lines = [
        GOOD,
        b"{nope",
        b'{"_id": "b", "text": "beta"}',
        b'{"_id": "c", "text": 3}',
        b"",
        b'{"_id": "a", "text": "dup"}',
        b"\xc3\x28",
        b'{"_id": "d", "text": "delta"}',
        b'{"text": "no id"}',
    ]
    path = write(tmp_path / "c.jsonl", lines)
    bad: list[BadLine] = []
    docs = list(read_documents(path, on_error="skip", bad_lines=bad))
    assert [(d.id, d.line) for d in docs] == [("a", 1), ("b", 3), ("d", 8)]
    assert [(b.line, b.doc_id) for b in bad] == [
        (2, None),
        (4, "c"),
        (6, "a"),
        (7, None),
        (9, None),
    ]
    assert all(b.source == str(path) for b in bad)
    stats = validate_corpus(path)
    assert stats == CorpusStats(documents=3, bad_lines=bad)


def test_skip_without_list_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "c.jsonl", [GOOD, b"{bad", b'{"id": "b"}'])
    with caplog.at_level(logging.WARNING, logger="sie_index.corpus"):
        assert [d.id for d in read_documents(path, on_error="skip")] == ["a"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert f"{path}:2" in messages[0]
    assert f"{path}:3" in messages[1]
    assert "'b'" in messages[1]


def test_validate_corpus_raise_mode(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [GOOD, b"[]"])
    with pytest.raises(InvalidInput) as info:
        validate_corpus(path, on_error="raise")
    assert_names(info.value, path, 2, None)
    assert validate_corpus(path, on_error="raise", limit=1) == CorpusStats(documents=1)


# --- file forms -----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "corpus.txt"])
def test_gzip_told_by_magic_not_suffix(tmp_path: Path, gz: bool, name: str) -> None:
    path = write(tmp_path / name, [GOOD, b'{"_id": "b", "text": "beta"}'], gz=gz)
    assert [d.id for d in read_documents(path)] == ["a", "b"]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_bom_crlf_and_blank_lines(tmp_path: Path, gz: bool) -> None:
    lines = [b"\xef\xbb\xbf" + GOOD, b"", b"   ", b'{"_id": "b", "text": "x\\r\\ny"}', b"\t"]
    path = write(tmp_path / "c.jsonl", lines, gz=gz, eol=b"\r\n")
    docs = list(read_documents(path))
    assert [(d.id, d.line) for d in docs] == [("a", 1), ("b", 4)]
    assert docs[1].text == "x\r\ny"


def test_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(GOOD + b"\n" + b'{"_id": "b", "text": "beta"}')
    assert [d.id for d in read_documents(path)] == ["a", "b"]


def test_utf16_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes((GOOD.decode() + "\n").encode("utf-16"))
    with pytest.raises(InvalidInput, match="UTF-16") as info:
        list(read_documents(path, on_error="skip"))
    assert_names(info.value, path, 1, None)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_ten_megabyte_line(tmp_path: Path, gz: bool) -> None:
    big = "word " * (2 * 1024 * 1024)
    path = write(tmp_path / "c.jsonl", [GOOD, jline({"_id": "big", "text": big})], gz=gz)
    docs = list(read_documents(path))
    assert docs[1].id == "big"
    assert docs[1].text == big


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_line_length_bound(tmp_path: Path, eol: bytes, gz: bool) -> None:
    limit = 100
    exact = b'{"_id": "e", "text": "' + b"x" * (limit - 24) + b'"}'
    assert len(exact) == limit
    long = b'{"_id": "l", "text": "' + b"y" * 5000 + b'"}'
    path = write(
        tmp_path / "c.jsonl", [GOOD, long, exact, long, GOOD[:-1] + b', "z": 1}'], eol=eol, gz=gz
    )
    bad: list[BadLine] = []
    docs = read_documents(path, on_error="skip", bad_lines=bad, max_line_bytes=limit)
    assert [d.line for d in docs] == [1, 3]
    assert [b.line for b in bad] == [2, 4, 5]
    assert "longer than 100 bytes" in bad[0].reason
    assert "duplicate" in bad[2].reason
    with pytest.raises(InvalidInput, match="longer than") as info:
        list(read_documents(path, max_line_bytes=limit))
    assert_names(info.value, path, 2, None)


def test_truncated_gzip_raises_even_when_skipping(tmp_path: Path) -> None:
    lines = [jline({"_id": str(i), "text": f"text {i} " * 20}) for i in range(2000)]
    data = gzip.compress(b"\n".join(lines) + b"\n")
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    docs = read_documents(path, on_error="skip", bad_lines=[])
    first = next(docs)  # streamed: documents arrive before the damage is reached
    assert first.id == "0"
    with pytest.raises(InvalidInput, match="damaged gzip") as info:
        list(docs)
    assert info.value.source == str(path)
    assert info.value.line is not None and info.value.line > 1


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        read_documents(tmp_path / "nope.jsonl")
    assert_names(info.value, tmp_path / "nope.jsonl", None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_error": "ignore"}, "on_error"),
        ({"limit": -1}, "limit"),
        ({"max_line_bytes": 0}, "max_line_bytes"),
    ],
)
def test_bad_arguments_fail_at_call(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    path = write(tmp_path / "c.jsonl", [GOOD])
    with pytest.raises(InvalidInput, match=message):
        read_documents(path, **kwargs)


@pytest.mark.parametrize(("limit", "ids"), [(0, []), (1, ["a"]), (2, ["a", "b"]), (9, ["a", "b"])])
def test_limit_counts_good_documents(tmp_path: Path, limit: int, ids: list[str]) -> None:
    path = write(tmp_path / "c.jsonl", [GOOD, b"{bad", b'{"_id": "b", "text": "beta"}'])
    docs = read_documents(path, on_error="skip", limit=limit, bad_lines=[])
    assert [d.id for d in docs] == ids


def test_limit_stops_before_later_bad_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", [GOOD, b'{"_id": "b", "text": "beta"}', b"{bad"])
    assert [d.id for d in read_documents(path, limit=2)] == ["a", "b"]


# --- BEIR folders ---------------------------------------------------------------------


def make_beir(root: Path, *, gz: bool = False) -> Path:
    root.mkdir()
    docs = [jline({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) for i in range(3)]
    write(root / ("corpus.jsonl.gz" if gz else "corpus.jsonl"), docs, gz=gz)
    queries = [jline({"_id": f"q{i}", "text": f"query {i}"}) for i in range(3)]
    write(root / "queries.jsonl", queries)
    (root / "qrels").mkdir()
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td2\t2\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td1\t1\n")
    return root


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_beir_folder(tmp_path: Path, gz: bool) -> None:
    root = make_beir(tmp_path / "beir", gz=gz)
    assert [d.id for d in read_documents(root)] == ["d0", "d1", "d2"]
    ds = BeirDataset.load(root)
    assert ds.corpus_path.name == ("corpus.jsonl.gz" if gz else "corpus.jsonl")
    assert ds.queries == {"q0": "query 0", "q1": "query 1"}
    assert ds.qrels == {"q0": {"d0": 1}, "q1": {"d2": 2}}
    assert [d.id for d in ds.documents(limit=1)] == ["d0"]
    assert BeirDataset.load(root, split="test").queries == {"q2": "query 2"}


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("corpus.jsonl", "corpus.jsonl"),
        ("queries.jsonl", "queries.jsonl"),
        ("qrels/dev.tsv", "qrels/dev.tsv"),
    ],
)
def test_beir_missing_file_is_named(tmp_path: Path, remove: str, named: str) -> None:
    root = make_beir(tmp_path / "beir")
    (root / remove).unlink()
    with pytest.raises(InvalidInput) as info:
        BeirDataset.load(root)
    assert info.value.source == str(root / named)
    assert str(root / named) in str(info.value)


def test_beir_both_corpus_files_is_ambiguous(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "beir")
    write(root / "corpus.jsonl.gz", [GOOD], gz=True)
    with pytest.raises(InvalidInput, match="keep one"):
        read_documents(root)


def test_beir_judged_query_missing(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "beir")
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq9\td0\t1\n")
    with pytest.raises(InvalidInput, match="'q9'"):
        BeirDataset.load(root)


@pytest.mark.parametrize("split", ["", "../dev", ".hidden", "a/b"])
def test_beir_bad_split(tmp_path: Path, split: str) -> None:
    with pytest.raises(InvalidInput, match="split"):
        BeirDataset.load(make_beir(tmp_path / "beir"), split=split)


def test_beir_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such BEIR folder"):
        BeirDataset.load(tmp_path / "nope")


# --- queries and qrels ----------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_load_queries(tmp_path: Path, gz: bool) -> None:
    lines = [
        b'\xef\xbb\xbf{"_id": "q1", "text": "one", "metadata": {}}',
        b"",
        b'{"id": 2, "text": "two"}',
    ]
    path = write(tmp_path / "q.jsonl", lines, gz=gz, eol=b"\r\n")
    assert load_queries(path) == {"q1": "one", "2": "two"}


@pytest.mark.parametrize(
    ("line", "qid", "reason"),
    [
        (b"{oops", None, "not valid JSON"),
        (b'{"text": "t"}', None, "missing id"),
        (b'{"_id": "q2", "text": " "}', "q2", "empty"),
        (b'{"_id": "q2", "text": 1}', "q2", "must be a string"),
        (b'{"_id": "q1", "text": "again"}', "q1", "first seen at line 1"),
        (b'{"_id": "q2", "text": "\xff"}', None, "UTF-8"),
    ],
)
def test_load_queries_errors(tmp_path: Path, line: bytes, qid: str | None, reason: str) -> None:
    path = write(tmp_path / "q.jsonl", [b'{"_id": "q1", "text": "one"}', line])
    with pytest.raises(InvalidInput, match=reason) as info:
        load_queries(path)
    assert_names(info.value, path, 2, qid)


def test_load_qrels(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n\r\nq1\td2\t0\r\nq2\td1\t-1\r\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": -1}}


def test_load_qrels_without_header(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text("q1\td1\t1\n")
    assert load_qrels(path) == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    ("line", "doc_id", "reason"),
    [
        ("q1\td1", None, "3 tab-separated fields"),
        ("q1\td1\t1\t0", None, "3 tab-separated fields"),
        ("q1 d1 1", None, "3 tab-separated fields"),
        ("q1\td2\thigh", "d2", "not an integer"),
        ("q1\td2\t1.0", "d2", "not an integer"),
        ("\td2\t1", None, "empty query or document id"),
        ("q1\td1\t0", "d1", "duplicate judgement, first seen at line 2"),
    ],
)
def test_load_qrels_errors(tmp_path: Path, line: str, doc_id: str | None, reason: str) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t1\n{line}\n")
    with pytest.raises(InvalidInput, match=reason) as info:
        load_qrels(path)
    assert_names(info.value, path, 3, doc_id)


@pytest.mark.parametrize("loader", [load_queries, load_qrels])
def test_loaders_missing_file(tmp_path: Path, loader: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        loader(tmp_path / "missing")
    assert_names(info.value, tmp_path / "missing", None, None)


# --- the packaged dataset -------------------------------------------------------------


def test_packaged_dataset_files() -> None:
    root = packaged_dataset()
    assert root == packaged_dataset("debian-pkgs")
    assert root.is_dir()
    assert sum(1 for _ in (root / "queries.jsonl").open("rb")) == 2000
    assert len(load_queries(root / "queries.jsonl")) == 2000
    docs = list(read_documents(root, limit=500))
    assert len(docs) == 500
    assert docs[0].id == "0ad"
    assert docs[0].source == str(root / "corpus.jsonl.gz")
    assert all(d.text.strip() for d in docs)


def test_packaged_beir_dataset() -> None:
    ds = BeirDataset.load(packaged_dataset())
    assert len(ds.queries) == 2000
    assert all(len(judged) == 1 for judged in ds.qrels.values())


def test_packaged_corpus_repeated_ids_are_reported_and_unjudged() -> None:
    # The shipped corpus repeats 14 package names on 50 lines (see its README):
    # skip mode keeps the first line of each id and reports every other one.
    stats = validate_corpus(packaged_dataset())
    assert stats.documents == 60_581
    assert len(stats.bad_lines) == 50
    assert all("duplicate" in b.reason for b in stats.bad_lines)
    first = stats.bad_lines[0]
    assert (first.doc_id, first.line) == ("default-jdk", 3803)
    judged = {d for q in load_qrels(packaged_dataset() / "qrels" / "dev.tsv").values() for d in q}
    assert not judged & {b.doc_id for b in stats.bad_lines}
    with pytest.raises(InvalidInput, match="default-jdk"):
        validate_corpus(packaged_dataset(), on_error="raise")


@pytest.mark.parametrize("name", ["nope", "../data", "", "debian-pkgs/qrels"])
def test_packaged_dataset_unknown(name: str) -> None:
    with pytest.raises(InvalidInput, match="available: debian-pkgs"):
        packaged_dataset(name)


# --- batched --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "n", "expected"),
    [
        ([], 3, []),
        ([1, 2, 3], 1, [[1], [2], [3]]),
        ([1, 2, 3, 4, 5], 2, [[1, 2], [3, 4], [5]]),
        ([1, 2, 3], 3, [[1, 2, 3]]),
        ([1, 2], 10, [[1, 2]]),
    ],
)
def test_batched(items: list[int], n: int, expected: list[list[int]]) -> None:
    assert list(batched(items, n)) == expected


def test_batched_is_lazy() -> None:
    assert list(islice(batched(count(), 2), 2)) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("n", [0, -1])
def test_batched_rejects_bad_size(n: int) -> None:
    with pytest.raises(InvalidInput):
        list(batched([1], n))


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=7))
def test_batched_property(items: list[int], n: int) -> None:
    batches = list(batched(items, n))
    assert [x for b in batches for x in b] == items
    assert all(len(b) == n for b in batches[:-1])
    assert all(0 < len(b) <= n for b in batches)


# --- round trip -----------------------------------------------------------------------

# storable text: no NUL, no lone surrogate (each makes a line bad)
chars = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
records = st.dictionaries(
    st.text(chars, min_size=1, max_size=8).filter(str.strip),
    st.fixed_dictionaries(
        {"text": st.text(chars, min_size=1).filter(str.strip)},
        optional={
            "metadata": st.dictionaries(st.text(chars, max_size=5), st.integers(), max_size=3)
        },
    ),
    max_size=8,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records, st.booleans(), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_round_trip(
    tmp_path: Path, corpus: dict[str, dict[str, Any]], gz: bool, eol: bytes, bom: bool
) -> None:
    lines = [json.dumps({"id": k, **v}, ensure_ascii=False).encode() for k, v in corpus.items()]
    if bom and lines:
        lines[0] = b"\xef\xbb\xbf" + lines[0]
    path = write(tmp_path / "c.jsonl", lines, gz=gz, eol=eol)
    docs = list(read_documents(path))
    assert {d.id: (d.text, d.metadata) for d in docs} == {
        k: (v["text"], v.get("metadata") or None) for k, v in corpus.items()
    }
    assert [d.line for d in docs] == list(range(1, len(corpus) + 1))


# --- values no index can hold -----------------------------------------------------------


def test_a_skip_mode_build_leaves_out_and_reports_what_no_index_can_hold(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(3, 8)
    lines = [
        jline({"_id": ids[0], "text": "first"}),
        b'{"_id": "huge", "text": "t", "v": 1e400}',
        b'{"_id": "nul", "text": "t", "metadata": {"k": "x\\u0000y"}}',
        jline({"_id": ids[2], "text": "last"}),
    ]
    path = write(tmp_path / "c.jsonl", lines)
    encoder = PrecomputedEncoder(dict(zip(ids, vectors, strict=True)), dim=8)
    index = Index.build(
        tmp_path / "idx", path, encoder=encoder, index_kind="flat", on_error="skip", progress=False
    )
    assert len(index) == 2
    assert index.build_report is not None
    assert [(b.line, b.doc_id) for b in index.build_report.bad_lines] == [(2, None), (3, "nul")]
    with pytest.raises(InvalidInput, match="1e400") as info:
        Index.build(tmp_path / "strict", path, encoder=encoder, index_kind="flat", progress=False)
    assert (info.value.source, info.value.line) == (str(path), 2)
    assert not (tmp_path / "strict").exists()


# --- TSV collections (ColBERT's collection.tsv) ------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_tsv_collection(tmp_path: Path, gz: bool) -> None:
    lines = [
        b"id\ttext",
        b"0\tfirst passage",
        b"",
        b"7\tsecond\tA Title",
        b"x y\tthird, with spaces",
    ]
    path = write(tmp_path / ("collection.tsv.gz" if gz else "collection.tsv"), lines, eol=b"\r\n")
    docs = list(read_documents(path))
    assert [(d.id, d.text, d.metadata, d.line) for d in docs] == [
        ("0", "first passage", None, 2),
        ("7", "A Title\nsecond", {"title": "A Title"}, 4),
        ("x y", "third, with spaces", None, 5),
    ]


def test_tsv_without_header_keeps_its_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.tsv", [b"0\tid", b"id\tan id named id is a document"])
    assert [d.id for d in read_documents(path)] == ["0", "id"]


@pytest.mark.parametrize(
    ("line", "doc_id", "reason"),
    [
        (b"just one field", None, "got 1 tab-separated field"),
        (b"b\tt\ttitle\textra", None, "got 4 tab-separated field"),
        (b"b\t   ", "b", "text is empty"),
        (b"\ttext without id", None, "'id' is empty"),
        (b"0\tagain", "0", "duplicate id, first seen at line 1"),
        (b"b\tcaf\xe9", None, "UTF-8"),
    ],
)
def test_bad_tsv_line_names_file_and_line(
    tmp_path: Path, line: bytes, doc_id: str | None, reason: str
) -> None:
    path = write(tmp_path / "c.tsv", [b"0\tzero", line, b"z\tlast"])
    with pytest.raises(InvalidInput) as info:
        list(read_documents(path))
    assert_names(info.value, path, 2, doc_id)
    assert reason in str(info.value)
    bad: list[BadLine] = []
    assert [d.id for d in read_documents(path, on_error="skip", bad_lines=bad)] == ["0", "z"]
    assert [(b.line, b.doc_id) for b in bad] == [(2, doc_id)]


# --- corpora given in memory ------------------------------------------------------------


def test_texts_dicts_and_documents_in_memory() -> None:
    items: list[Any] = [
        "plain text",
        {"id": "d", "text": "a dict", "metadata": {"lang": "en"}},
        {"_id": "p", "contents": "Pyserini's field", "url": "u"},
        Document(id="doc", text="a Document"),
        "another text",
    ]
    docs = list(documents_of(items))
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("0", "plain text", None),
        ("d", "a dict", {"lang": "en"}),
        ("p", "Pyserini's field", {"url": "u"}),
        ("doc", "a Document", None),
        ("4", "another text", None),  # ids of texts are their positions
    ]
    assert docs[1].source == "corpus[1]"


@pytest.mark.parametrize(
    ("items", "where", "doc_id", "reason"),
    [
        (["ok", {"id": "b"}], "corpus[1]", "b", "missing 'text'"),
        (["ok", "ok", {"text": "no id"}], "corpus[2]", None, "missing id"),
        (["ok", {"id": "b", "text": "t", "contents": "c"}], "corpus[1]", "b", "'contents'"),
        (["ok", 42], "corpus[1]", None, "is a int"),
        (["ok", None], "corpus[1]", None, "is a NoneType"),
    ],
)
def test_a_bad_item_in_memory_names_its_position(
    items: list[Any], where: str, doc_id: str | None, reason: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        list(documents_of(items))
    assert (info.value.source, info.value.doc_id) == (where, doc_id)
    assert where in str(info.value) and reason in str(info.value)


def test_one_dict_is_not_a_corpus() -> None:
    with pytest.raises(InvalidInput, match="wrap it in a list"):
        list(documents_of({"id": "a", "text": "t"}))  # type: ignore[arg-type]


def test_build_and_add_take_texts_dicts_and_tsv_files(tmp_path: Path) -> None:
    _, vectors = synthetic_corpus(6, 8)
    by_id = dict(zip(["0", "1", "d2", "d3", "t4", "t5"], vectors, strict=True))
    encoder = PrecomputedEncoder(by_id, dim=8)
    index = Index.build(
        tmp_path / "idx", ["zero", "one"], encoder=encoder, index_kind="flat", progress=False
    )
    assert index.external_ids() == ["0", "1"]
    index = Index.open(index.path, encoder=encoder)  # the writes below encode with it
    index.add([{"id": "d2", "text": "two", "metadata": {"n": 2}}, {"id": "d3", "contents": "3"}])
    tsv = write(tmp_path / "more.tsv", [b"t4\tfour", b"t5\tfive"])
    index.add(tsv)
    assert sorted(index.external_ids()) == ["0", "1", "d2", "d3", "t4", "t5"]
    hit = index.search(vectors[2], k=1, text=True, metadata=True)[0]
    assert (hit.id, hit.text, hit.metadata) == ("d2", "two", {"n": 2})
    with pytest.raises(InvalidInput) as info:
        index.upsert(["fine", {"id": "d2"}])
    assert info.value.source == "corpus[1]"
    bad = write(tmp_path / "bad.tsv", [b"t4\tfour", b"only-an-id"])
    with pytest.raises(InvalidInput) as info:
        index.add(bad)
    assert (info.value.source, info.value.line) == (str(bad), 2)


def test_a_sharded_build_takes_texts_and_dicts_too(tmp_path: Path) -> None:
    from sie_index import ShardedIndex

    _, vectors = synthetic_corpus(4, 8)
    encoder = PrecomputedEncoder(dict(zip(["0", "1", "a", "b"], vectors, strict=True)), dim=8)
    corpus: list[Any] = ["zero", "one", {"id": "a", "text": "A"}, {"_id": "b", "contents": "B"}]
    with ShardedIndex.build(
        tmp_path / "s", corpus, shards=2, encoder=encoder, index_kind="flat", progress=False
    ) as index:
        assert len(index) == 4
        assert index.search(vectors[3], k=1, text=True)[0].to_dict()["text"] == "B"
