"""The door: what a caller hands a writer or a search is checked before anything is
written or read, and a refusal is InvalidInput naming the document, with the index as
it was.

A NUL or a lone surrogate in an id, a text or metadata would make one stored value
read as another (SQLite's JSON functions end a string at a NUL: ``"a\\x00b"`` was
deleted as ``"a"``); they are refused in every writer and in every query value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sie_index import Index, InvalidInput
from storage.snapshot import StoreSnapshot
from storage.verify import verify_index
from tests.conftest import synthetic_corpus

DIM = 8
BAD_CHARS = [pytest.param("\x00", id="nul"), pytest.param("\ud800", id="surrogate")]


def _base(tmp_path: Path) -> tuple[Path, list[str], list[np.ndarray]]:
    ids, vectors = synthetic_corpus(4, DIM, seed=3)
    path = tmp_path / "idx"
    Index.from_vectors(
        path,
        ids,
        vectors,
        texts=[f"text {e}" for e in ids],
        metadata=[{"n": i, "k": "x"} for i in range(len(ids))],
        index_kind="flat",
    ).close()
    return path, ids, vectors


def _state(path: Path) -> tuple[int, dict[str, tuple[str | None, Any]]]:
    """The committed generation and every live document's text and metadata."""
    assert verify_index(path).ok
    with StoreSnapshot.open(path) as snap:
        live = np.flatnonzero(~snap.spans.deleted).tolist()
        docs = snap.docs.fetch(live, text=True, metadata=True)
        return snap.manifest.generation, {
            d.external_id: (d.text, d.metadata) for d in docs.values()
        }


# -- NUL and lone surrogates -----------------------------------------------------------


def _with_bad(char: str, place: str) -> tuple[str, str | None, dict[str, Any] | None]:
    """The id, text and metadata of a new document with ``char`` at ``place``."""
    ext, text, meta = "new", "a text", {"k": "v", "deep": {"list": ["ok"]}}
    if place == "id":
        ext = f"a{char}b"
    elif place == "text":
        text = f"te{char}xt"
    elif place == "key":
        meta = {f"k{char}": "v"}
    elif place == "value":
        meta = {"k": f"x{char}y"}
    else:  # nested
        meta = {"deep": {"list": ["ok", f"{char}"]}}
    return ext, text, meta


PLACES = ["id", "text", "key", "value", "nested"]


@pytest.mark.parametrize("char", BAD_CHARS)
@pytest.mark.parametrize("place", PLACES)
def test_a_build_refuses_nul_and_lone_surrogates_naming_the_document(
    tmp_path: Path, char: str, place: str
) -> None:
    ids, vectors = synthetic_corpus(3, DIM)
    ext, text, meta = _with_bad(char, place)
    with pytest.raises(InvalidInput) as info:
        Index.from_vectors(
            tmp_path / "idx",
            [ids[0], ext, ids[2]],
            vectors,
            texts=[ids[0], text, ids[2]],
            metadata=[None, meta, None],
            index_kind="flat",
        )
    assert info.value.doc_id == ext
    assert "NUL" in str(info.value) or "surrogate" in str(info.value)
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("writer", ["add", "upsert"])
@pytest.mark.parametrize("char", BAD_CHARS)
@pytest.mark.parametrize("place", PLACES)
def test_add_and_upsert_refuse_nul_and_lone_surrogates_leaving_the_index_as_it_was(
    tmp_path: Path, char: str, place: str, writer: str
) -> None:
    path, ids, vectors = _base(tmp_path)
    before = _state(path)
    ext, text, meta = _with_bad(char, place)
    if place != "id" and writer == "upsert":
        ext = ids[1]  # a replacement: the old document must survive the refusal
    with Index.open(path) as index, index.writer() as w:
        change = w.upsert_vectors if writer == "upsert" else w.add_vectors
        with pytest.raises(InvalidInput) as info:
            change(["fine", ext], [vectors[0], vectors[1]], texts=["ok", text], metadata=[{}, meta])
    assert info.value.doc_id == ext
    assert _state(path) == before


# -- the query side ---------------------------------------------------------------------


QUERY_VALUES: list[Any] = [
    pytest.param({"ids": ["a\x00b"]}, id="ids-nul"),
    pytest.param({"ids": ["\ud800"]}, id="ids-surrogate"),
    pytest.param({"filter": {"k": "x\x00y"}}, id="value-nul"),
    pytest.param({"filter": {"k": {"$in": ["ok", "\udfff"]}}}, id="in-surrogate"),
    pytest.param({"filter": {"k\x00": "x"}}, id="field-nul"),
    pytest.param({"filter": {"$ids": ["doc-00000\x00"]}}, id="filter-ids-nul"),
]


@pytest.mark.parametrize("query", QUERY_VALUES)
def test_query_values_with_nul_or_lone_surrogates_are_refused(
    tmp_path: Path, query: dict[str, Any]
) -> None:
    path, _, vectors = _base(tmp_path)
    before = _state(path)
    with Index.open(path) as index:
        with pytest.raises(InvalidInput, match=r"NUL|surrogate"):
            index.search(vectors[0], **query)
        with pytest.raises(InvalidInput, match=r"NUL|surrogate"):
            index.delete_where(query.get("filter"), ids=query.get("ids"))
    assert _state(path) == before


# -- vectors, texts, metadata and lists of them ----------------------------------------


def _ragged() -> list[list[float]]:
    return [[1.0] * DIM, [1.0] * (DIM - 1)]


BAD_ADDS: list[Any] = [
    pytest.param({"texts": ["ok", 5]}, "text must be a string", id="text-int"),
    pytest.param({"vectors": "ragged"}, "not an array", id="ragged-rows"),
    pytest.param({"metadata": [None, 5]}, "metadata must be a mapping", id="metadata-int"),
    pytest.param({"metadata": [None, ["a"]]}, "metadata must be a mapping", id="metadata-list"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ADDS)
def test_add_vectors_names_the_document_a_bad_value_belongs_to(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path, _, vectors = _base(tmp_path)
    before = _state(path)
    kw: dict[str, Any] = {"vectors": [vectors[0], vectors[1]], **change}
    if kw["vectors"] == "ragged":
        kw["vectors"] = [vectors[0], _ragged()]
    with Index.open(path) as index, pytest.raises(InvalidInput, match=message) as info:
        index.add_vectors(["n0", "n1"], **kw)
    assert info.value.doc_id == "n1"
    assert _state(path) == before


@pytest.mark.parametrize(("change", "message"), BAD_ADDS)
def test_from_vectors_names_the_document_a_bad_value_belongs_to(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    _, vectors = synthetic_corpus(2, DIM)
    kw: dict[str, Any] = {"vectors": vectors, **change}
    if kw["vectors"] == "ragged":
        kw["vectors"] = [vectors[0], _ragged()]
    with pytest.raises(InvalidInput, match=message) as info:
        Index.from_vectors(tmp_path / "idx", ["n0", "n1"], index_kind="flat", **kw)
    assert info.value.doc_id == "n1"
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"texts": ["one"]}, "2 ids but 1 texts", id="short-texts"),
        pytest.param({"metadata": [{}, {}, {}]}, "2 ids but 3 metadata", id="long-metadata"),
        pytest.param({"ids": "n0"}, "not one str", id="one-string"),
        pytest.param({"metadata": {"n0": {}}}, "not one dict", id="metadata-mapping"),
        pytest.param({"ids": 7}, "not a int", id="not-iterable"),
        pytest.param({"ids": ["n0", "n0"]}, "duplicate", id="duplicate"),
    ],
)
@pytest.mark.parametrize("writer", ["from_vectors", "add_vectors"])
def test_lists_of_the_wrong_length_or_kind_are_refused(
    tmp_path: Path, change: dict[str, Any], message: str, writer: str
) -> None:
    path, _, vectors = _base(tmp_path)
    before = _state(path)
    kw: dict[str, Any] = {"ids": ["n0", "n1"], "vectors": vectors[:2], **change}
    with pytest.raises(InvalidInput, match=message):
        if writer == "from_vectors":
            Index.from_vectors(tmp_path / "other", index_kind="flat", **kw)
        else:
            with Index.open(path) as index:
                index.add_vectors(kw.pop("ids"), kw.pop("vectors"), **kw)
    assert _state(path) == before
    assert not (tmp_path / "other").exists()


def test_ids_vectors_and_texts_may_be_any_iterable(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(6, DIM)
    index = Index.from_vectors(
        tmp_path / "idx",
        (e for e in ids[:4]),
        iter(vectors[:4]),
        texts=(f"t{e}" for e in ids[:4]),
        index_kind="flat",
    )
    report = index.add_vectors(
        (e for e in ids[4:]), (v for v in vectors[4:]), metadata=iter([{"a": 1}, None])
    )
    assert report.added == 2 and len(index) == 6
    hit = index.search(vectors[4], k=1, metadata=True)[0]
    assert (hit.external_id, hit.metadata) == (ids[4], {"a": 1})
    assert index.search(vectors[0], k=1, text=True)[0].text == f"t{ids[0]}"


# -- search keywords ----------------------------------------------------------------------


def test_an_unknown_search_keyword_lists_the_valid_ones(
    make_index: Callable[..., tuple[Index, list[str], list[np.ndarray]]],
) -> None:
    index, _, vectors = make_index(20, dim=DIM)
    with pytest.raises(InvalidInput, match=r"'kk'.*valid: k, k_token, n_rerank"):
        index.search(vectors[0], kk=3)
    assert len(index.search(vectors[0], k=3)) == 3
