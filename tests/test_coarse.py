"""The coarse step of an IVF search through a graph over the centroids (storage/coarse.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from sie_index import Index
from storage import coarse
from storage.coarse import PARALLEL_OVER_QUERIES, CoarseGraph, coarse_ef
from storage.snapshot import StoreSnapshot
from tests.conftest import synthetic_corpus, synthetic_queries


def _count_graph_searches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets an item for each graph search: proof the path ran."""
    calls: list[int] = []
    original = CoarseGraph.search

    def spy(self: CoarseGraph, *args: Any, **kw: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kw)

    monkeypatch.setattr(CoarseGraph, "search", spy)
    return calls


@pytest.fixture
def graph_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every index takes the graph path (threshold 1 list), each search counted."""
    monkeypatch.setattr(coarse, "COARSE_GRAPH_MIN_LISTS", 1)
    yield _count_graph_searches(monkeypatch)


def _faiss_own(part: Any, Q: np.ndarray, k: int, nprobe: int, sel: Any = None) -> Any:
    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    if sel is not None:
        params.sel = sel
    return part.search(Q, k, params=params)


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-sq8", "ivf-pq"])
def test_the_graph_path_equals_faiss_own_search_when_it_finds_the_same_lists(
    tmp_path: Path, graph_calls: list[int], kind: str
) -> None:
    """With a breadth (64+) above the lists (at most 32 here), the graph finds exactly
    FAISS's nprobe best lists; the scan over them, its codes and distances are then
    FAISS's own, so rows and similarities equal its plain search, deleted rows
    masked out alike."""
    ids, vectors = synthetic_corpus(1000, 32, seed=5)
    index = Index.from_vectors(
        tmp_path / "idx", ids, vectors, index_kind=kind, index_options={"nlist": 32}
    )
    index.delete(ids[:40])  # a selector on the search: deleted rows never come back
    snap = StoreSnapshot.open(index.path)
    token_index = snap.token_index
    part = token_index.parts[0][0]
    nlist = faiss.extract_index_ivf(part).nlist
    assert 1 < nlist <= coarse_ef(1)
    Q = np.ascontiguousarray(np.concatenate(synthetic_queries(vectors, 6, seed=9)), np.float32)
    for nprobe in (1, 3, nlist):
        graph_calls.clear()
        sims, rows = token_index.search(Q, 20, nprobe=nprobe)
        assert graph_calls == [1]
        live = token_index._live
        assert live is not None and live.selectors[0] is not None
        want_sims, want_rows = _faiss_own(part, Q, 20, nprobe, live.selectors[0])
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(sims, want_sims)
        deleted_rows = set(range(int(snap.spans.token_start[40])))
        assert not deleted_rows & set(rows.ravel().tolist())
    # the scan of the lists the graph found shares the query tokens among the threads
    # (FAISS's default mode scans a search_preassigned call on one thread)
    assert faiss.extract_index_ivf(part).parallel_mode == PARALLEL_OVER_QUERIES


def test_the_graph_is_the_same_in_every_build(tmp_path: Path) -> None:
    """Built on one thread, two graphs over the same centroids answer alike (a search
    returns the same rows in every process); many lists, a narrow breadth: the
    graph is approximate here, and still the same."""
    rng = np.random.default_rng(3)
    centroids = rng.standard_normal((3000, 16)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    quantizer = faiss.IndexFlatIP(16)
    ivf = faiss.IndexIVFFlat(quantizer, 16, 3000, faiss.METRIC_INNER_PRODUCT)
    ivf.train(centroids)  # 3000 points, 3000 lists: the centroids are the points
    data = rng.standard_normal((20_000, 16)).astype(np.float32)
    ivf.add(data)
    Q = rng.standard_normal((50, 16)).astype(np.float32)
    answers = []
    for _ in range(2):
        params = faiss.SearchParametersIVF()
        answers.append(CoarseGraph(ivf).search(Q, 10, 8, params))
    np.testing.assert_array_equal(answers[0][1], answers[1][1])
    np.testing.assert_array_equal(answers[0][0], answers[1][0])
    # and it finds most of what the full scan of the centroids finds
    want = _faiss_own(ivf, Q, 10, 8)[1]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(answers[0][1], want, strict=True)])
    assert overlap >= 0.9


def test_searches_of_a_large_index_take_the_graph_and_small_ones_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default threshold: an index of fewer lists scans every centroid (exact);
    one at or above it asks the graph."""
    calls = _count_graph_searches(monkeypatch)
    ids, vectors = synthetic_corpus(600, 32, seed=5)
    index = Index.from_vectors(tmp_path / "idx", ids, vectors, index_kind="ivf-flat")
    Q = synthetic_queries(vectors, 1, seed=2)[0]
    index.search(Q, k=5, exact_threshold=0)
    assert calls == []
    monkeypatch.setattr(coarse, "COARSE_GRAPH_MIN_LISTS", 2)
    reopened = Index.open(index.path)
    hits = reopened.search(Q, k=5, exact_threshold=0)
    assert calls == [1]
    assert [h.doc_id for h in hits] == [h.doc_id for h in index.search(Q, k=5, exact_threshold=0)]
