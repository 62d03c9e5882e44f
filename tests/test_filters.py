"""The filter language: typed, parameterized, read-only; checked against a Python model
of its meaning, and filtered search against exhaustive MaxSim over the allowed subset."""

from __future__ import annotations

import hashlib
import json
import operator
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sie_index import Index, InvalidInput, SearchParams
from sie_index.cli import main as cli_main
from sie_index.errors import UnknownFilterField
from sie_index.filters import compile_filter, parse_where
from storage.docstore import DOCS_NAME
from storage.predicate import Predicate
from storage.snapshot import read_manifest
from storage.store_writer import StoreWriter
from storage.verify import verify_index
from tests.conftest import synthetic_corpus, synthetic_queries

# Keys a user's metadata may hold, hostile ones included: quotes, SQL and JSON-path syntax.
KEYS = ["a", 'k"q', "')--;", "ünï code", "back\\slash", "[0]", "*", "b"]
SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    2,
    -1,
    1.0,
    0.5,
    -1.5,
    "x",
    "1",
    "é",
    "O'Reilly",
    "--;",
]
MISSING = object()


def _metadata(rng: np.random.Generator) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in KEYS:
        roll = rng.random()
        if roll < 0.2:
            continue
        if key == "b" and roll < 0.6:
            meta[key] = {"c": SCALARS[int(rng.integers(len(SCALARS)))], 'q"': "deep"}
        elif roll > 0.95:
            meta[key] = [1, "x"]
        else:
            meta[key] = SCALARS[int(rng.integers(len(SCALARS)))]
    return meta


# -- a Python model of what a filter means -------------------------------------------


def _get(meta: dict[str, Any] | None, field: str) -> Any:
    value: Any = meta if meta is not None else MISSING
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "num"
    if isinstance(v, str):
        return "str"
    return "other"


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _eq(v: Any, x: Any) -> bool:
    x = _plain(x)
    return v is not MISSING and _kind(v) == _kind(x) and v == x


_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _holds(flt: dict[str, Any], ext: str, meta: dict[str, Any] | None) -> bool:
    for key, cond in flt.items():
        if key == "$and":
            ok = all(_holds(f, ext, meta) for f in cond)
        elif key == "$or":
            ok = any(_holds(f, ext, meta) for f in cond)
        elif key == "$not":
            ok = not _holds(cond, ext, meta)
        elif key == "$ids":
            ok = ext in cond
        else:
            v = _get(meta, key)
            if not isinstance(cond, dict):
                cond = {"$eq": cond}
            ok = True
            for op, x in cond.items():
                if op == "$eq":
                    ok &= _eq(v, x)
                elif op == "$ne":
                    ok &= not _eq(v, x)
                elif op == "$in":
                    ok &= any(_eq(v, y) for y in x)
                elif op == "$nin":
                    ok &= not any(_eq(v, y) for y in x)
                elif op == "$exists":
                    ok &= (v is not MISSING) == x
                else:
                    x = _plain(x)
                    ok &= _kind(v) == _kind(x) and bool(_ORDER[op](v, x))
        if not ok:
            return False
    return True


def _fields(flt: dict[str, Any]) -> list[str]:
    """The fields a filter names, in the order it names them first."""
    named: dict[str, None] = {}
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            for sub in cond:
                named.update(dict.fromkeys(_fields(sub)))
        elif key == "$not":
            named.update(dict.fromkeys(_fields(cond)))
        elif not key.startswith("$"):
            named[key] = None
    return list(named)


def _unstorable(flt: Any) -> bool:
    """Whether a NUL or a lone surrogate is anywhere in a filter, key or value."""
    if isinstance(flt, str):
        return any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in flt)
    if isinstance(flt, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in flt.items())
    if isinstance(flt, list | tuple):
        return any(_unstorable(v) for v in flt)
    return False


# -- strategies --------------------------------------------------------------------------

# values and fields no document can hold (storage.values): a filter with one is refused
UNSTORABLE = ["x\x00", "\x00", "\ud800", "a\udfffb"]
FIELDS = [*KEYS, "b.c", 'b.q"', "b.c.d", "missing", "a\x00", "b.\ud800"]
values = st.one_of(
    st.sampled_from(SCALARS),
    st.sampled_from([np.int64(1), np.float32(0.5), np.bool_(True), np.float64(-1.5)]),
    st.sampled_from(UNSTORABLE),
)
orderable = st.sampled_from([v for v in SCALARS if _kind(v) in ("num", "str")])
conditions = st.one_of(
    values,
    st.fixed_dictionaries({"$eq": values}),
    st.fixed_dictionaries({"$ne": values}),
    st.fixed_dictionaries({"$in": st.lists(values, max_size=4)}),
    st.fixed_dictionaries({"$nin": st.lists(values, max_size=4)}),
    st.fixed_dictionaries({"$exists": st.booleans()}),
    st.dictionaries(st.sampled_from(sorted(_ORDER)), orderable, min_size=1, max_size=2),
)
leaves = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), conditions, min_size=1, max_size=2),
    st.fixed_dictionaries(
        {"$ids": st.lists(st.sampled_from([f"d{i}" for i in range(80)] + UNSTORABLE), max_size=6)}
    ),
)
filters = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.fixed_dictionaries({"$and": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"$or": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"$not": inner}),
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def meta_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Index, list[dict[str, Any]]]:
    rng = np.random.default_rng(11)
    ids, vectors = synthetic_corpus(60, 16, seed=4)
    ids = [f"d{i}" for i in range(len(ids))]
    metas = [_metadata(rng) for _ in ids]
    metas[0] = {}  # a document whose metadata is empty
    path = tmp_path_factory.mktemp("meta") / "idx"
    index = Index.from_vectors(path, ids, vectors, metadata=metas, index_kind="flat")
    return index, metas


def _matched(index: Index, **flt: Any) -> set[str]:
    Q = np.ones((1, index.info()["dim"]), np.float32) / 4.0
    return {h.external_id for h in index.search(Q, k=len(index), **flt)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flt=filters)
def test_a_filter_selects_exactly_what_the_model_says(
    meta_index: tuple[Index, list[dict[str, Any]]], flt: dict[str, Any]
) -> None:
    index, metas = meta_index
    if _unstorable(flt):
        with pytest.raises(InvalidInput, match=r"NUL|surrogate"):
            _matched(index, filter=flt)
        return
    expected = {f"d{i}" for i, m in enumerate(metas) if _holds(flt, f"d{i}", m)}
    unknown = [f for f in _fields(flt) if all(_get(m, f) is MISSING for m in metas)]
    if not expected and unknown:  # matches nothing and names a field no document has
        with pytest.raises(UnknownFilterField) as error:
            _matched(index, filter=flt)
        assert error.value.fields == tuple(unknown)
        return
    assert _matched(index, filter=flt) == expected


@pytest.mark.parametrize("key", KEYS)
def test_hostile_keys_and_values_are_inert_and_match(
    meta_index: tuple[Index, list[dict[str, Any]]], key: str
) -> None:
    index, metas = meta_index
    db = index.path / read_manifest(index.path).segments[0].name / DOCS_NAME
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for value in ["O'Reilly", "--;", "é", "'); DROP TABLE documents; --", 1]:
        expected = {f"d{i}" for i, m in enumerate(metas) if _eq(m.get(key, MISSING), value)}
        assert _matched(index, filter={key: value}) == expected
        assert _matched(index, filter={key: {"$in": [value]}}) == expected
    assert _matched(index, filter={key: {"$exists": True}}) == {
        f"d{i}" for i, m in enumerate(metas) if key in m
    }
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert _matched(index) == {f"d{i}" for i in range(len(metas))}


def test_types_are_json_types(meta_index: tuple[Index, list[dict[str, Any]]]) -> None:
    index, metas = meta_index
    ones = {f"d{i}" for i, m in enumerate(metas) if _kind(m.get("a")) == "num" and m["a"] == 1}
    trues = {f"d{i}" for i, m in enumerate(metas) if m.get("a") is True}
    assert ones and trues  # the corpus holds both, so the test can tell them apart
    assert _matched(index, filter={"a": 1}) == ones  # 1 is not true
    assert _matched(index, filter={"a": np.int64(1)}) == ones  # a NumPy scalar is its value
    assert _matched(index, filter={"a": True}) == trues
    assert _matched(index, filter={"a": "1"}).isdisjoint(ones)


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ("json_extract(metadata, '$.a') = 1", "filter_sql"),
        ({"a": [1, 2]}, r"\$in"),
        ({"a": {"$regex": "x"}}, "not an operator"),
        ({"$xor": []}, "not an operator"),
        ({"a": float("nan")}, "finite"),
        ({"a": {"$gt": None}}, "numbers or strings"),
        ({"a": {"$gt": [1]}}, "scalar"),
        ({"a..b": 1}, "empty part"),
        ({"a": {"$exists": "yes"}}, "true or false"),
        ({"a": 2**70}, "64 bits"),
        ({"a": b"bytes"}, "not a JSON type"),
        ({"$and": "a"}, "list of filters"),
        ({"$ids": "vim"}, "not one string"),
    ],
)
def test_bad_filters_raise_a_typed_error(flt: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        SearchParams(filter=flt)


def test_deep_or_huge_filters_are_refused() -> None:
    deep: dict[str, Any] = {"a": 1}
    for _ in range(40):
        deep = {"$not": deep}
    with pytest.raises(InvalidInput, match="nested"):
        compile_filter(deep)
    with pytest.raises(InvalidInput, match="conditions"):
        compile_filter({"$or": [{"a": i} for i in range(20_000)]})


def test_large_id_sets_bind_one_parameter(meta_index: tuple[Index, list[dict[str, Any]]]) -> None:
    index, _ = meta_index
    ids = [f"d{i}" for i in range(0, 60, 3)] + [f"nope-{i}" for i in range(50_000)]
    compiled = compile_filter(ids=ids)
    assert compiled is not None and len(compiled.predicate.params) == 1
    assert _matched(index, ids=ids) == {f"d{i}" for i in range(0, 60, 3)}
    assert _matched(index, ids=ids, filter={"a": {"$exists": True}}) <= set(ids)


def test_filter_sql_is_read_only(meta_index: tuple[Index, list[dict[str, Any]]]) -> None:
    index, _ = meta_index
    for hostile in ("1); DELETE FROM documents; --", "(SELECT load_extension('x'))"):
        with pytest.raises(InvalidInput):
            _matched(index, filter_sql=hostile)
    assert len(_matched(index, filter_sql="doc_id < 5")) == 5


# -- filter_sql: only the documents table, a condition, one budget ---------------------

RUNAWAY = (  # a subquery that never ends: only the budget stops it
    "doc_id IN (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT x FROM c WHERE x < 0)"
)


def _small_index(path: Path, n: int = 12) -> tuple[list[str], list[np.ndarray]]:
    ids, vectors = synthetic_corpus(n, 8, seed=5)
    metas = [{"n": i, "flag": i % 2 == 0} for i in range(n)]
    texts = [f"text number {i}" + "!" * i for i in range(n)]
    Index.from_vectors(path, ids, vectors, texts=texts, metadata=metas, index_kind="flat").close()
    return ids, vectors


@pytest.mark.parametrize(
    "sql",
    [
        "0)) UNION SELECT 999999 --",  # closes the wrapper, adds a row, hides the rest
        # the same, shaped to close storage's own CASE wrapper
        "0)), 0) WHEN 0 THEN 0 ELSE 1 END UNION SELECT 999999 --",
        "1) UNION SELECT 999999 /*",
        "1; DELETE FROM documents",
        "doc_id = 1 -- and the rest",
        "(doc_id = 1",
        "'unclosed = 1",
        "(SELECT count(*) FROM meta) > 0",
        "(SELECT count(*) FROM sqlite_master) > 0",
        "doc_id IN (SELECT cid FROM pragma_table_info('documents'))",
        "(SELECT load_extension('x')) IS NULL",
    ],
)
def test_filter_sql_can_only_select_the_documents_of_the_index(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "idx"
    _, vectors = _small_index(path)
    with Index.open(path) as index:
        generation = index.info()["generation"]
        with pytest.raises(InvalidInput):
            index.delete_where(filter_sql=sql)
        with pytest.raises(InvalidInput):
            index.search(vectors[0], filter_sql=sql)
    assert verify_index(path).ok
    with Index.open(path) as index:
        assert index.info()["generation"] == generation and len(index) == 12


@pytest.mark.parametrize(
    "sql", ["text", "external_id", "doc_id", "0.5", "json_extract(metadata, '$.n')", "x'01'"]
)
def test_filter_sql_must_give_each_row_true_false_or_null(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "idx"
    _, vectors = _small_index(path)
    with Index.open(path) as index:
        for flt in (None, {"n": {"$gte": 3}}):  # alone, and after a filter that holds
            with pytest.raises(InvalidInput, match="not a condition") as info:
                index.search(vectors[0], filter=flt, filter_sql=sql)
            assert info.value.doc_id is not None  # the document it failed on
        with pytest.raises(InvalidInput, match="not a condition"):
            index.delete_where(filter_sql=sql)
        assert len(index) == 12


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("length(text) > 16", set(range(4, 12))),
        ("json_extract(metadata, '$.flag')", set(range(0, 12, 2))),  # JSON true is 1
        ("json_extract(metadata, '$.missing') = 1", set()),  # NULL matches nothing
        ("NOT json_extract(metadata, '$.flag') AND doc_id < 6", {1, 3, 5}),
    ],
)
def test_filter_sql_conditions_select_their_documents(
    tmp_path: Path, sql: str, expected: set[int]
) -> None:
    path = tmp_path / "idx"
    ids, _ = _small_index(path)
    with Index.open(path) as index:
        assert _matched(index, filter_sql=sql) == {ids[i] for i in expected}
        assert index.delete_where(filter_sql=sql).deleted == len(expected)
        assert len(index) == 12 - len(expected)


def _counting(n: int) -> str:
    """A condition whose subquery counts to ``n`` on every segment, then matches nothing."""
    return (
        "doc_id IN (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        f"WHERE x < {n}) SELECT x FROM c WHERE x < 0)"
    )


def test_one_filter_budget_covers_every_segment(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    ids, vectors = synthetic_corpus(40, 8, seed=7)
    index = Index.from_vectors(path, ids[:5], vectors[:5], index_kind="flat")
    for lo in range(5, 40, 5):  # each add is a segment
        index.add_vectors(ids[lo : lo + 5], vectors[lo : lo + 5])
    assert index.info()["segments"] == 8
    budget = 1.0
    # a count that takes each segment about half the budget on this machine, so
    # that the budget holds only if it is one for all segments together
    start = time.monotonic()
    index.search(vectors[0], filter_sql=_counting(200_000), filter_budget_s=60.0)
    per_step = (time.monotonic() - start) / (8 * 200_000)
    slow = _counting(int(0.5 * budget / per_step))
    start = time.monotonic()
    with pytest.raises(InvalidInput, match="time budget"):
        index.search(vectors[0], filter_sql=slow, filter_budget_s=budget)
    assert time.monotonic() - start < budget + 2.0  # a bound, not a timing
    for sql in (slow, RUNAWAY):
        start = time.monotonic()
        with StoreWriter(path) as writer, pytest.raises(InvalidInput, match="time budget"):
            writer.delete_where(Predicate(sql), budget_s=budget)
        assert time.monotonic() - start < budget + 2.0
    index.refresh()
    assert len(index) == 40 and verify_index(path).ok


def test_a_giant_value_in_a_filter_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _, vectors = _small_index(path, n=120)
    with Index.open(path) as index:
        start = time.monotonic()
        with pytest.raises(InvalidInput, match="longer than"):
            index.search(vectors[0], filter_sql="length(randomblob(100000000)) > 0")
        assert time.monotonic() - start < 2.0  # not the 10 s budget, nor 120 blobs


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("section=devel", {"section": {"$eq": "devel"}}),
        ("year>=2020", {"year": {"$gte": 2020}}),
        ("n<3.5", {"n": {"$lt": 3.5}}),
        ('code="007"', {"code": {"$eq": "007"}}),
        ("flag!=true", {"flag": {"$ne": True}}),
        ("a.b=x=y", {"a.b": {"$eq": "x=y"}}),
        ("tags=[1]", {"tags": {"$eq": "[1]"}}),
    ],
)
def test_where_clauses(clause: str, expected: dict[str, Any]) -> None:
    assert parse_where(clause) == expected


def test_a_where_clause_without_an_operator_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="FIELD=VALUE"):
        parse_where("section")


# -- metadata at the door --------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"x": float("nan")}, "finite"),
        ({"x": [1.0, float("inf")]}, r"metadata\['x'\]\[1\]"),
        ({"when": __import__("datetime").datetime(2024, 1, 1)}, "datetime"),
        ({"raw": b"\x00"}, "bytes"),
        ({"tags": {"a", "b"}}, "set"),
        ({1: "int key"}, "keys are strings"),
    ],
)
def test_metadata_is_validated_naming_the_document(
    tmp_path: Path, meta: dict[Any, Any], message: str
) -> None:
    ids, vectors = synthetic_corpus(3, 8)
    metas: list[dict[Any, Any] | None] = [None, meta, None]
    with pytest.raises(InvalidInput, match=message) as info:
        Index.from_vectors(tmp_path / "idx", ids, vectors, metadata=metas)
    assert ids[1] in str(info.value)
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_numpy_scalars_in_metadata_are_stored_as_their_values(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(2, 8)
    metas = [{"n": np.int64(3), "f": np.float32(0.5), "ok": np.bool_(True), "l": (1, 2)}, None]
    index = Index.from_vectors(tmp_path / "idx", ids, vectors, metadata=metas)
    hit = index.search(vectors[0], k=1, metadata=True, filter={"n": 3, "ok": True})[0]
    assert hit.external_id == ids[0]
    assert hit.metadata == {"n": 3, "f": 0.5, "ok": True, "l": [1, 2]}
    assert type(hit.metadata["n"]) is int


# -- filtered search against the oracle, on the exact and on the ANN path -----------------


def _oracle_top(Q: np.ndarray, vectors: list[np.ndarray], allowed: list[int], k: int) -> list[int]:
    Q = Q.astype(np.float32)
    scores = [
        float((Q @ vectors[i].astype(np.float16).astype(np.float32).T).max(axis=1).sum())
        for i in allowed
    ]
    order = sorted(range(len(allowed)), key=lambda j: (-scores[j], allowed[j]))
    return [allowed[j] for j in order[:k]]


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    ids, vectors = synthetic_corpus(1200, 32, seed=6)
    # "rare": 7 documents (0.6%), "half": every second one
    metas = [{"rare": i % 171 == 5, "half": i % 2 == 0, "n": i} for i in range(len(ids))]
    built: dict[str, Index] = {}

    def get(kind: str) -> Any:
        if kind not in built:
            path = tmp_path_factory.mktemp(kind) / "idx"
            built[kind] = Index.from_vectors(path, ids, vectors, metadata=metas, index_kind=kind)
        return built[kind], ids, vectors, metas

    return get


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw"])
@pytest.mark.parametrize("field", ["rare", "half"])
@pytest.mark.parametrize("path", ["exact", "ann"])
def test_filtered_search_equals_exhaustive_maxsim_over_the_allowed_subset(
    grouped: Callable[[str], Any], ann_calls: list[int], kind: str, field: str, path: str
) -> None:
    index, ids, vectors, metas = grouped(kind)
    allowed = [i for i, m in enumerate(metas) if m[field]]
    n_tokens = index.info()["tokens"]
    if path == "ann":  # every allowed token reachable, every candidate reranked
        params = SearchParams(
            k=10, k_token=n_tokens, n_rerank=len(ids), nprobe=10_000, ef_search=n_tokens
        ).with_(exact_threshold=0)
    else:
        params = SearchParams(k=10, exact_threshold=len(ids))
    for Q in synthetic_queries(vectors, 3, seed=12):
        ann_calls.clear()
        hits = index.search(Q, params=params, filter={field: True})
        assert (len(ann_calls) == 1) == (path == "ann")
        assert [h.doc_id for h in hits] == _oracle_top(Q, vectors, allowed, 10)


@pytest.mark.parametrize(("kind", "floor"), [("ivf-flat", 0.9), ("hnsw", 0.8)])
def test_a_filtered_ann_search_finds_the_allowed_neighbours_at_default_settings(
    grouped: Callable[[str], Any], ann_calls: list[int], kind: str, floor: float
) -> None:
    """The token ANN itself is filtered (a FAISS selector over allowed rows), so a
    filter that leaves 2% of the documents still fills the candidate list."""
    index, _, vectors, metas = grouped(kind)
    allowed = [i for i, m in enumerate(metas) if m["n"] % 50 == 0]
    flt = {"n": {"$in": [int(i) for i in allowed]}}
    found = 0
    for Q in synthetic_queries(vectors, 10, seed=13):
        ann_calls.clear()
        hits = index.search(Q, k=5, filter=flt, exact_threshold=0)
        assert ann_calls == [1] and len(hits) == 5
        found += len({h.doc_id for h in hits} & set(_oracle_top(Q, vectors, allowed, 5)))
    assert found >= floor * 50


# -- the command line and deletes ------------------------------------------------------


def test_cli_where_ids_and_filter_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids, vectors = synthetic_corpus(40, 8, seed=2)
    metas = [{"section": "devel" if i % 4 == 0 else "libs", "year": 2000 + i} for i in range(40)]
    path = tmp_path / "idx"
    Index.from_vectors(path, ids, vectors, metadata=metas).close()

    def ids_of(*args: str) -> set[str]:
        with Index.open(path) as index:
            from sie_index.cli import build_parser
            from sie_index.cli.options import _filter_args

            ns = build_parser().parse_args(["search", str(path), "q", *args])
            hits = index.search(vectors[0], k=40, **_filter_args(ns))
            return {h.external_id for h in hits}

    assert ids_of("--where", "section=devel") == {ids[i] for i in range(0, 40, 4)}
    assert ids_of("--where", "section=devel", "--where", "year>=2020") == {
        ids[i] for i in range(20, 40, 4)
    }
    assert ids_of("--ids", f"{ids[1]},{ids[2]}") == {ids[1], ids[2]}
    assert ids_of("--filter-json", json.dumps({"$or": [{"year": 2001}, {"year": 2003}]})) == {
        ids[1],
        ids[3],
    }
    assert ids_of("--filter-sql", "doc_id < 3") == set(ids[:3])
    # a bad filter is one line, not a traceback
    capsys.readouterr()
    assert cli_main(["search", str(path), "x", "--filter-json", "{not json"]) != 0
    err = capsys.readouterr().err
    assert "--filter-json" in err and "Traceback" not in err
    # delete by a filter
    assert cli_main(["delete", str(path), "--where", "section=libs", "--where", "year<2010"]) == 0
    with Index.open(path) as index:
        assert len(index) == 40 - len([i for i in range(10) if i % 4 != 0])
        assert (
            index.search(vectors[1], k=40, filter={"year": {"$lt": 2010}, "section": "libs"}) == []
        )


def test_delete_where_takes_the_filter_language(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(30, 8, seed=3)
    metas = [{"g": i % 3, "tag": "keep" if i < 5 else "x"} for i in range(30)]
    index = Index.from_vectors(tmp_path / "idx", ids, vectors, metadata=metas)
    report = index.delete_where({"g": 0, "tag": {"$ne": "keep"}})
    assert report.deleted == len([i for i in range(5, 30) if i % 3 == 0])
    report = index.delete_where(ids=[ids[1], ids[2]])
    assert report.deleted == 2
    with pytest.raises(InvalidInput, match="needs a filter"):
        index.delete_where()
    with pytest.raises(InvalidInput, match="filter_sql"):
        index.delete_where("g = 0")  # type: ignore[arg-type]
    assert len(index) == 30 - 8 - 2


# -- a field no document has ----------------------------------------------------------


def test_a_filter_naming_a_field_no_document_has_is_an_error(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(12, 8, seed=3)
    metas = [{"year": 2020 + i % 3, **({"lang": "en"} if i < 4 else {})} for i in range(12)]
    with Index.from_vectors(tmp_path / "idx", ids, vectors, metadata=metas) as index:
        Q = vectors[0]
        with pytest.raises(UnknownFilterField, match="'yaer'") as error:
            index.search(Q, k=12, filter={"yaer": 2021})
        assert error.value.fields == ("yaer",) and isinstance(error.value, InvalidInput)
        with pytest.raises(UnknownFilterField):  # again, from the filter cache
            index.search(Q, k=12, filter={"yaer": 2021})
        # a field only some documents have is a filter like any other
        assert {h.external_id for h in index.search(Q, k=12, filter={"lang": "en"})} == set(ids[:4])
        assert index.search(Q, k=12, filter={"lang": "de"}) == []
        # a filter that matches documents is no typo, whatever fields it names
        assert len(index.search(Q, k=12, filter={"yaer": {"$ne": 2021}})) == 12
        assert index.search(Q, k=12, filter={"year": 1999}) == []


def test_a_field_one_shard_lacks_is_no_error_in_a_sharded_index(tmp_path: Path) -> None:
    from sie_index.sharded import ShardedIndex
    from storage import shard_of

    ids, vectors = synthetic_corpus(16, 8, seed=4)
    # only the documents of shard 0 have a lang
    metas = [{"lang": "en"} if shard_of(i, 2) == 0 else {} for i in ids]
    assert any(metas) and not all(metas)
    with ShardedIndex.from_vectors(
        tmp_path / "sharded", ids, vectors, shards=2, metadata=metas
    ) as index:
        hits = index.search(vectors[0], k=16, filter={"lang": "en"})
        assert {h.external_id for h in hits} == {i for i, m in zip(ids, metas, strict=True) if m}
        assert index.search(vectors[0], k=16, filter={"lang": "de"}) == []
        with pytest.raises(UnknownFilterField, match="'langs'"):
            index.search(vectors[0], k=16, filter={"langs": "en"})


@pytest.mark.parametrize("clause", ["year==2021", "year=>2021", "year=<3", "year=!3"])
def test_where_refuses_a_doubled_operator(clause: str) -> None:
    with pytest.raises(InvalidInput, match="is not an operator"):
        parse_where(clause)
    assert parse_where('code="=x"') == {"code": {"$eq": "=x"}}  # quoted, it is a value
