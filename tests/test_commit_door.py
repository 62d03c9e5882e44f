"""The door: whatever a writer commits, its own reader opens and verify passes.

Random index options, encoder records and SQL predicates go through every writer
(a build over an existing index, an add, a delete by predicate, a compaction).
Each call ends in a typed error with the previous index intact, or in a commit
that opens and verifies. Nothing here may end in a raw exception or a signal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sie_index import Index, SieIndexError
from storage.verify import verify_index
from tests.conftest import synthetic_corpus

DIM = 8
IDS, VECTORS = synthetic_corpus(30, DIM, seed=7)

_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 128, 129, 2**31, -1]),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
_options = st.dictionaries(
    st.sampled_from(["nlist", "pq_m", "hnsw_m", "seed", "bogus", "train_sample"]),
    _values,
    max_size=3,
)
_models = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["\ud800", "a\x00b", "", "precomputed"]),
    st.integers(),
    st.none(),
    st.floats(),
)
_predicates = st.one_of(
    st.sampled_from(
        [
            "0)) UNION SELECT 999999 --",
            "1) OR (1",
            "doc_id > 5",
            "doc_id = -3 OR 1",
            "external_id LIKE 'doc-0001%'",
            "json_extract(metadata, '$.x') = 1",
            "1; DROP TABLE documents",
            "doc_id IN (SELECT doc_id + 1000 FROM documents)",
            "text",
            "'x'",
            "",
            ")",
            "length(zeroblob(10)) > 0",
        ]
    ),
    st.text(max_size=20),
)


def _state(path: Path) -> tuple[int, list[str]]:
    with Index.open(path) as index:
        hits = index.search_batch([VECTORS[0]], k=100, exact_threshold=10**6)[0]
        return index.info()["generation"], sorted(h.external_id for h in hits)


def _assert_door(path: Path, before: tuple[int, list[str]], call: Any) -> None:
    """``call`` commits something that opens and verifies, or fails typed leaving ``before``."""
    try:
        call()
    except SieIndexError:
        assert _state(path) == before, "a refused change altered the index"
        return
    report = verify_index(path)
    assert report.ok, report
    with Index.open(path) as index:
        assert len(index) >= 0


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("door") / "idx"
    Index.from_vectors(path, IDS, VECTORS, index_kind="flat", normalize=True).close()
    return path


def _copy(base: Path, tmp: Path) -> Path:
    import shutil

    dest = tmp / "idx"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest)
    return dest


_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(options=_options, kind=st.sampled_from(["flat", "hnsw", "ivf-flat", "auto"]))
def test_a_rebuild_with_random_options_commits_only_what_opens(
    base: Path, tmp_path: Path, options: dict[str, Any], kind: str
) -> None:
    path = _copy(base, tmp_path)
    before = _state(path)
    _assert_door(
        path,
        before,
        lambda: Index.from_vectors(
            path, IDS, VECTORS, index_kind=kind, index_options=options, overwrite=True
        ).close(),
    )


@_SETTINGS
@given(model=_models)
def test_a_rebuild_with_a_random_model_name_commits_only_what_opens(
    base: Path, tmp_path: Path, model: Any
) -> None:
    path = _copy(base, tmp_path)
    before = _state(path)
    _assert_door(
        path,
        before,
        lambda: Index.from_vectors(
            path, IDS, VECTORS, index_kind="flat", model=model, overwrite=True
        ).close(),
    )


@_SETTINGS
@given(predicate=_predicates)
def test_delete_where_with_a_random_predicate_commits_only_what_opens(
    base: Path, tmp_path: Path, predicate: str
) -> None:
    path = _copy(base, tmp_path)
    before = _state(path)

    def call() -> None:
        with Index.open(path) as index:
            index.delete_where(filter_sql=predicate)
            index.compact()

    _assert_door(path, before, call)


def test_the_reported_bricking_calls_leave_the_old_index(base: Path, tmp_path: Path) -> None:
    """The calls of the issue, one by one: each is refused and the index still opens."""
    path = _copy(base, tmp_path)
    before = _state(path)
    calls = [
        lambda: Index.from_vectors(path, IDS, VECTORS, index_options={"seed": -1}, overwrite=True),
        lambda: Index.from_vectors(
            path, IDS, VECTORS, index_options={"seed": True}, overwrite=True
        ),
        lambda: Index.from_vectors(path, IDS, VECTORS, model=5, overwrite=True),  # type: ignore[arg-type]
        lambda: Index.from_vectors(
            path, IDS[:2], [np.ones((2, 70_000), np.float32)] * 2, overwrite=True
        ),
        lambda: Index.open(path).delete_where(filter_sql="0)) UNION SELECT 999999 --"),
        lambda: Index.from_vectors(
            path, IDS, VECTORS, index_kind="hnsw", index_options={"hnsw_m": 1}, overwrite=True
        ),
    ]
    for call in calls:
        with pytest.raises(SieIndexError):
            call()
        assert _state(path) == before
        assert verify_index(path).ok
