"""A query's candidates by approximate score: the compiled kernel against NumPy's path."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sie_index import candidate_scores, compiled
from tests.conftest import synthetic_queries
from tests.test_fused_maxsim import _spy, needs_numba
from tests.test_search import MakeIndex


def _kernel() -> candidate_scores.Kernel:
    run = candidate_scores.KERNEL.get()
    assert run is not None
    return run


def _ann_answer(seed: int, nq: int, k: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """An ANN answer as FAISS gives it: similarities best first, -1 rows where fewer
    than ``k`` were found, and similarities repeated (ties) on purpose."""
    rng = np.random.default_rng(seed)
    sims = np.round(rng.standard_normal((nq, k)), 1).astype(np.float32)  # many ties
    sims = -np.sort(-sims, axis=1)
    rows = rng.integers(0, n_rows, size=(nq, k)).astype(np.int64)
    rows[rng.random((nq, k)) < 0.1] = -1
    return sims, rows


@needs_numba
@pytest.mark.parametrize(("nq", "k"), [(1, 1), (3, 7), (10, 64), (32, 385)])
def test_the_kernel_gives_numpys_documents_and_scores_bit_for_bit(nq: int, k: int) -> None:
    rng = np.random.default_rng(nq * 1000 + k)
    n_docs, n_rows = 500, 4000
    token_doc = np.sort(rng.integers(0, n_docs, size=n_rows)).astype(np.int32)
    token_doc[rng.random(n_rows) < 0.05] = -1  # rows of no document
    allowed = rng.random(n_docs) < 0.7  # deleted or filtered out: the rest
    for seed in range(5):
        sims, rows = _ann_answer(seed, nq, k, n_rows)
        docs, approx = candidate_scores.approximate(sims, rows, token_doc, allowed)
        got_docs, got_approx = _kernel()(
            sims,
            rows,
            compiled.read_only(token_doc, np.int32),
            compiled.read_only(allowed, np.bool_),
        )
        order = np.argsort(got_docs)
        np.testing.assert_array_equal(got_docs[order], docs)
        np.testing.assert_array_equal(got_approx[order], approx)
        assert allowed[docs].all() and len(docs) == len(set(docs.tolist()))
        for n in (1, 5, 50, 10_000):
            np.testing.assert_array_equal(
                candidate_scores.cut(got_docs, got_approx, n), candidate_scores.cut(docs, approx, n)
            )


def test_the_approximate_score_credits_a_missed_token_with_its_lowest_similarity() -> None:
    """Query token 0 returned documents 1 (0.9) and 2 (0.5); token 1 returned only
    document 2 (0.8) and a row of no document (0.1): document 1 is credited 0.1
    for token 1, the lowest similarity token 1 returned among allowed rows."""
    token_doc = np.array([1, 2, 2, -1, 3], np.int32)
    sims = np.array([[0.9, 0.5], [0.8, 0.1]], np.float32)
    rows = np.array([[0, 1], [2, 3]], np.int64)
    allowed = np.ones(4, bool)
    docs, approx = candidate_scores.approximate(sims, rows, token_doc, allowed)
    assert docs.tolist() == [1, 2]
    np.testing.assert_allclose(approx, [0.9 + 0.8, 0.5 + 0.8])  # row 3 has no document
    rows[1, 1] = 4  # a row of document 3, filtered out: it sets no floor either
    allowed[3] = False
    docs, approx = candidate_scores.approximate(sims, rows, token_doc, allowed)
    assert docs.tolist() == [1, 2]
    np.testing.assert_allclose(approx, [0.9 + 0.8, 0.5 + 0.8])
    allowed[:] = False
    docs, approx = candidate_scores.approximate(sims, rows, token_doc, allowed)
    assert len(docs) == 0 and len(approx) == 0


def test_the_cut_keeps_the_best_and_breaks_ties_by_the_smaller_id() -> None:
    docs = np.array([40, 7, 12, 3, 90, 5], np.int64)
    approx = np.array([1.0, 2.0, 1.0, 1.0, 3.0, 0.5], np.float32)
    assert candidate_scores.cut(docs, approx, 2).tolist() == [7, 90]
    assert candidate_scores.cut(docs, approx, 3).tolist() == [3, 7, 90]  # 3 of 3, 12, 40
    assert candidate_scores.cut(docs, approx, 4).tolist() == [3, 7, 12, 90]
    assert candidate_scores.cut(docs, approx, 6).tolist() == [3, 5, 7, 12, 40, 90]
    assert candidate_scores.cut(docs, approx, 0).tolist() == []


@needs_numba
def test_a_search_picks_its_candidates_with_the_kernel_or_without_numba(
    make_index: MakeIndex,
    ann_calls: list[int],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    index, ids, vectors = make_index(600, dim=32, index_kind="ivf-flat")
    index.delete([ids[i] for i in range(0, 600, 7)])
    queries = synthetic_queries(vectors, 10, seed=5)
    numpy_calls = _spy(monkeypatch, candidate_scores, "approximate")
    compiled = [index.search(Q, k=10, n_rerank=24, exact_threshold=0) for Q in queries]
    assert len(ann_calls) == len(queries) and not numpy_calls
    candidate_scores.KERNEL.forget()
    request.addfinalizer(candidate_scores.KERNEL.forget)  # numba back: compiled again after
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now fails
    plain = [index.search(Q, k=10, n_rerank=24, exact_threshold=0) for Q in queries]
    assert len(numpy_calls) == len(queries) and len(ann_calls) == 2 * len(queries)
    for a, b in zip(compiled, plain, strict=True):
        assert [(h.doc_id, h.score) for h in a] == [(h.doc_id, h.score) for h in b]
        assert all(ids.index(h.external_id) % 7 for h in a)  # deleted: never found
