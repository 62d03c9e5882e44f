"""The screen by centroid interaction (sie_index/centroid_scores.py) and the lists it
reads (storage.TokenIndex.row_lists, search_with_lists)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sie_index import Index, SearchParams, centroid_scores, compiled
from sie_index.candidate_scores import cut
from sie_index.errors import InvalidInput
from storage import NearLists, coarse
from storage.coarse import ivf_of
from tests.conftest import synthetic_corpus, synthetic_queries
from tests.test_fused_maxsim import _spy, needs_numba
from tests.test_search import MakeIndex, oracle


def _args(
    seed: int, nq: int, width: int, n_docs: int = 200, n_lists: int = 50
) -> tuple[np.ndarray, ...]:
    """Documents with 0 to 9 tokens each (a few with none), rows in random lists,
    and near lists as the coarse step gives them: best first, -1 where none,
    similarities repeated (ties) on purpose."""
    rng = np.random.default_rng(seed)
    n_lists = max(n_lists, width)
    counts = rng.integers(0, 10, size=n_docs).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    row_lists = rng.integers(0, n_lists, size=int(counts.sum())).astype(np.int32)
    lists = np.stack([rng.permutation(n_lists)[:width] for _ in range(nq)]).astype(np.int64)
    lists[rng.random((nq, width)) < 0.1] = -1
    sims = -np.sort(-np.round(rng.standard_normal((nq, width)), 1), axis=1).astype(np.float32)
    docs = rng.permutation(n_docs)[: n_docs // 2].astype(np.int64)
    return docs, starts, counts, row_lists, lists, sims


def _ro(array: np.ndarray, dtype: Any) -> np.ndarray:
    return compiled.read_only(array, dtype)


@needs_numba
@pytest.mark.parametrize(("nq", "width"), [(1, 1), (3, 7), (10, 64), (32, 40)])
def test_the_kernel_gives_numpys_scores_bit_for_bit(nq: int, width: int) -> None:
    run = centroid_scores.KERNEL.get()
    assert run is not None
    n_lists = max(50, width)
    for seed in range(5):
        docs, starts, counts, row_lists, lists, sims = _args(seed, nq, width)
        args = (docs, starts, counts, row_lists, lists, sims, n_lists)
        want = centroid_scores.centroid_scores(*args)
        got = run(
            docs, _ro(starts, np.int64), _ro(counts, np.int64), _ro(row_lists, np.int32),
            lists, sims, n_lists,
        )  # fmt: skip
        np.testing.assert_array_equal(got, want)
        assert (counts[docs] == 0).any()  # documents without tokens were scored too


def test_a_token_is_credited_with_its_lists_similarity_or_the_least_near_one() -> None:
    """Two query tokens, lists 0..4. Token 0 has lists 3 (0.9) and 1 (0.4) near,
    token 1 list 1 (0.7) only. Document 0 has tokens in lists 1 and 4: token 0
    takes list 1's 0.4 (list 4 is not near it: 0.4, its least near one), token 1
    list 1's 0.7. Document 1 (a token in list 2, near neither) gets each token's
    least: 0.4 + 0.7. Document 2 (lists 3 and 0): 0.9 + 0.7."""
    row_lists = np.array([1, 4, 2, 3, 0], np.int32)
    starts = np.array([0, 2, 3], np.int64)
    counts = np.array([2, 1, 2], np.int64)
    lists = np.array([[3, 1], [1, -1]], np.int64)
    sims = np.array([[0.9, 0.4], [0.7, 0.0]], np.float32)
    docs = np.array([0, 1, 2], np.int64)
    got = centroid_scores.centroid_scores(docs, starts, counts, row_lists, lists, sims, 5)
    np.testing.assert_allclose(got, [0.4 + 0.7, 0.4 + 0.7, 0.9 + 0.7], rtol=1e-6)
    lists[1, 1] = 2  # list 2 near token 1 now, at 0.2: the least near one, for lists 0 and 3 too
    sims[1, 1] = 0.2
    got = centroid_scores.centroid_scores(docs, starts, counts, row_lists, lists, sims, 5)
    np.testing.assert_allclose(got, [0.4 + 0.7, 0.4 + 0.2, 0.9 + 0.2], rtol=1e-6)
    with pytest.raises(IndexError, match="near list"):
        centroid_scores.centroid_scores(docs, starts, counts, row_lists, lists, sims, 2)


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-sq8", "ivf-pq"])
def test_row_lists_are_the_lists_faiss_put_each_row_in(tmp_path: Path, kind: str) -> None:
    ids, vectors = synthetic_corpus(1500, 16, seed=2)
    index = Index.from_vectors(
        tmp_path / "i", ids[:1200], vectors[:1200], index_kind=kind, index_options={"nlist": 16}
    )
    index.add_vectors(ids[1200:], vectors[1200:], retrain="never")  # a second segment
    token_index = index._searcher.snapshot.token_index
    row_lists = token_index.row_lists()
    assert row_lists is not None and not row_lists.flags.writeable
    ivf = ivf_of(token_index.parts[0][0])
    stored = np.concatenate([v.astype(np.float16).astype(np.float32) for v in vectors])
    assert len(row_lists) == len(stored) == token_index.ntotal
    # FAISS assigns a row to its best centroid; compare where the best is clear
    sims = stored @ ivf.quantizer.reconstruct_n(0, ivf.nlist).T
    top2 = -np.sort(-sims, axis=1)[:, :2]
    clear = top2[:, 0] - top2[:, 1] > 1e-3
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(row_lists[clear], sims.argmax(axis=1)[clear])
    assert token_index.row_lists() is row_lists  # read once, then kept


def test_a_kind_without_lists_has_none(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(50, 16, seed=2)
    index = Index.from_vectors(tmp_path / "i", ids, vectors, index_kind="hnsw")
    token_index = index._searcher.snapshot.token_index
    assert token_index.row_lists() is None
    Q = synthetic_queries(vectors, 1, seed=1)[0]
    _, rows, near = token_index.search_with_lists(Q, 5, lists=8)
    assert near is None
    np.testing.assert_array_equal(rows, token_index.search(Q, 5)[1])


@pytest.mark.parametrize("graph", [False, True])
def test_the_near_lists_leave_the_rows_found_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, graph: bool
) -> None:
    """Asking for the 12 nearest lists returns the rows and similarities a plain
    search returns (its nprobe lists are the first of them), through FAISS's own
    coarse scan or through the graph; the lists are the quantizer's best, best first."""
    if graph:
        monkeypatch.setattr(coarse, "COARSE_GRAPH_MIN_LISTS", 1)
    ids, vectors = synthetic_corpus(1300, 16, seed=3)
    index = Index.from_vectors(
        tmp_path / "i", ids, vectors, index_kind="ivf-pq", index_options={"nlist": 32}
    )
    token_index = index._searcher.snapshot.token_index
    ivf = ivf_of(token_index.parts[0][0])
    for Q in synthetic_queries(vectors, 5, seed=4):
        sims, rows, near = token_index.search_with_lists(Q, 20, lists=12, nprobe=3)
        plain_sims, plain_rows = token_index.search(Q, 20, nprobe=3)
        np.testing.assert_array_equal(rows, plain_rows)
        np.testing.assert_array_equal(sims, plain_sims)
        assert isinstance(near, NearLists) and near.n_lists == ivf.nlist == 32
        assert near.lists.shape == near.sims.shape == (len(Q), 12)
        assert (np.diff(near.sims, axis=1) <= 0).all()  # best first
        want_sims, want_lists = ivf.quantizer.search(np.ascontiguousarray(Q, np.float32), 12)
        np.testing.assert_allclose(near.sims, want_sims, rtol=1e-5, atol=1e-6)
        if not graph:  # the graph is approximate; FAISS's scan is the quantizer's
            np.testing.assert_array_equal(near.lists, want_lists)
        # fewer lists asked than the scan visits: the scan still visits nprobe
        sims, rows, near = token_index.search_with_lists(Q, 20, lists=2, nprobe=3)
        np.testing.assert_array_equal(rows, plain_rows)
        assert near is not None and near.lists.shape == (len(Q), 2)
    with pytest.raises(InvalidInput, match="lists"):
        token_index.search_with_lists(Q, 20, lists=-1)


def _screened_oracle(index: Index, Q: np.ndarray, vectors: list[np.ndarray], p: SearchParams):  # type: ignore[no-untyped-def]
    """The pipeline rebuilt by hand: the ANN's candidates by approximate score, the
    ``n_rerank`` best of them by centroid score (NumPy's path), exact MaxSim of those."""
    searcher = index._searcher
    r = p.resolved(searcher.defaults)
    token_index = searcher.snapshot.token_index
    sims, rows, near = token_index.search_with_lists(
        np.ascontiguousarray(Q, np.float32), r.k_token, lists=64, nprobe=r.nprobe
    )
    assert near is not None
    cand = searcher.candidates(sims, rows, searcher.live, r.screen_depth())
    scores = centroid_scores.centroid_scores(
        cand, searcher.token_start, searcher.token_count, token_index.row_lists(),
        near.lists, near.sims, near.n_lists,
    )  # fmt: skip
    kept = cut(cand, scores, r.rerank_depth())
    exact = oracle(Q, vectors)[kept]
    order = np.lexsort((kept, -exact))[: p.k]
    return kept[order].tolist(), kept


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pq"])
def test_a_screened_search_reranks_the_best_by_centroid_score(
    make_index: MakeIndex, ann_calls: list[int], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """With n_centroid above n_rerank a search keeps the n_rerank best of its
    n_centroid candidates by centroid score and returns their exact top k; the
    screen ran (a spy), and left off (0) the search reranks the approximate best."""
    index, _, vectors = make_index(1300, dim=32, index_kind=kind)
    screens = _spy(monkeypatch, centroid_scores, "best")
    p = SearchParams(k=5, k_token=32, nprobe=4, n_rerank=6, n_centroid=40, exact_threshold=0)
    changed = 0
    for Q in synthetic_queries(vectors, 8, seed=11):
        want, _ = _screened_oracle(index, Q, vectors, p)
        hits = index.search(Q, params=p)
        assert [h.doc_id for h in hits] == want
        for h in hits:
            assert h.score == pytest.approx(float(oracle(Q, vectors)[h.doc_id]), abs=1e-4)
        unscreened = index.search(Q, params=p.with_(n_centroid=0))
        changed += [h.doc_id for h in unscreened] != want
    assert len(screens) == 8 and len(ann_calls) == 3 * 8  # the oracle's ANN, two searches
    assert changed  # the screen chose other candidates than the approximate score would


def test_a_screened_search_over_segments_deletions_and_a_filter(
    make_index: MakeIndex, ann_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows added as another segment are in their lists; deleted documents never
    come back through the screen, nor do documents a filter leaves out."""
    index, ids, vectors = make_index(400, dim=32, index_kind="ivf-flat")
    more_ids, more = synthetic_corpus(200, 32, seed=77)
    more_ids = [f"more-{i}" for i in more_ids]
    index.add_vectors(more_ids, more, retrain="never")
    index.delete(ids[::5])
    everything = vectors + more
    screens = _spy(monkeypatch, centroid_scores, "best")
    p = SearchParams(k=8, k_token=48, nprobe=4, n_rerank=10, n_centroid=80, exact_threshold=0)
    deleted = set(ids[::5])
    some = [i for i in ids[1::3] if i not in deleted][:150] + more_ids[::2]
    for Q in synthetic_queries(everything, 6, seed=3):
        want, _ = _screened_oracle(index, Q, everything, p)
        hits = index.search(Q, params=p)
        assert [h.doc_id for h in hits] == want
        assert not {h.external_id for h in hits} & deleted
        only = index.search(Q, params=p.with_(ids=some))
        assert only and {h.external_id for h in only} <= set(some)
    assert len(screens) == 2 * 6 and ann_calls  # the search's screen, the filtered one's


@needs_numba
def test_the_screen_takes_the_kernel_or_numpys_path_with_the_same_hits(
    make_index: MakeIndex,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    index, _, vectors = make_index(500, dim=32, index_kind="ivf-flat")
    queries = synthetic_queries(vectors, 8, seed=5)
    numpy_calls = _spy(monkeypatch, centroid_scores, "centroid_scores")
    p = SearchParams(k=10, n_rerank=12, n_centroid=60, exact_threshold=0)
    compiled = [index.search(Q, params=p) for Q in queries]
    assert not numpy_calls
    centroid_scores.KERNEL.forget()
    request.addfinalizer(centroid_scores.KERNEL.forget)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now fails
    plain = [index.search(Q, params=p) for Q in queries]
    assert len(numpy_calls) == len(queries)
    for a, b in zip(compiled, plain, strict=True):
        assert [(h.doc_id, h.score) for h in a] == [(h.doc_id, h.score) for h in b]


def test_n_centroid_is_checked_and_resolved() -> None:
    from sie_index.search_defaults import derive_defaults

    with pytest.raises(InvalidInput, match="n_centroid"):
        SearchParams(n_centroid=-1)
    d = derive_defaults(14_449_621, None)
    r = SearchParams(k=10).resolved(d)
    assert (r.n_rerank, r.n_centroid, r.screen_depth(), r.nprobe) == (62, 346, 346, 4)
    # a selective filter is still scored exactly up to 8 x the depth screened from
    assert r.exact_below() == 8 * 187
    # the screen turned off: the index's unscreened depth and lists, not 62 unscreened
    off = SearchParams(k=10, n_centroid=0).resolved(d)
    assert (off.screen_depth(), off.n_rerank, off.nprobe) == (0, 187, 6)
    assert SearchParams(k=100, n_centroid=0).resolved(d).n_rerank == 324
    assert SearchParams(k=10, n_rerank=400).resolved(d).screen_depth() == 0  # not above
    small = derive_defaults(1_000_000, None)
    assert SearchParams(k=100).resolved(small).screen_depth() == 0
    assert small.without_screen() is small


def test_an_index_without_lists_never_screens_however_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hnsw index's tokens have no list to stand in for them: at a size where an
    IVF index screens, it keeps the unscreened depth, not the depth behind a screen."""
    from sie_index import search_defaults as sd

    monkeypatch.setattr(sd, "REFERENCE_TOKENS", 1000)  # these small indexes are 'large'
    ids, vectors = synthetic_corpus(400, 16, seed=6)
    hnsw = Index.from_vectors(tmp_path / "h", ids, vectors, index_kind="hnsw")
    ivf = Index.from_vectors(tmp_path / "i", ids, vectors, index_kind="ivf-flat")
    assert hnsw.search_defaults.n_centroid == 0 and hnsw.search_defaults.unscreened is None
    assert ivf.search_defaults.n_centroid > ivf.search_defaults.n_rerank
    assert hnsw.search_defaults.n_rerank == ivf.search_defaults.without_screen().n_rerank
