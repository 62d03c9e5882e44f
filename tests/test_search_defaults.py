"""Search settings derived from the index's size (sie_index/search_defaults.py)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sie_index import Index, SearchParams
from sie_index import search_defaults as sd
from sie_index.errors import InvalidInput
from sie_index.search import Searcher
from sie_index.search_defaults import derive_defaults
from storage.token_index import TokenIndex
from tests.conftest import synthetic_corpus, synthetic_queries


def test_the_defaults_hold_at_the_reference_size_and_grow_past_it() -> None:
    small = derive_defaults(100_000, 100_000)
    base = (sd.BASE_K_TOKEN, sd.BASE_NPROBE, sd.BASE_N_RERANK)
    assert (small.k_token, small.nprobe, small.n_rerank) == base
    assert derive_defaults(sd.REFERENCE_TOKENS, sd.REFERENCE_TOKENS) == derive_defaults(
        sd.REFERENCE_TOKENS, sd.REFERENCE_TOKENS
    )
    # the mixed corpus the values were fitted on: 14.4M tokens, three times the reference
    mixed = derive_defaults(14_449_621, 14_449_621)
    # screened: 346 candidates (600 at k=100) down to 62 (150) by centroid interaction
    assert (mixed.k_token, mixed.nprobe, mixed.n_rerank) == (385, 4, 62)
    assert mixed.n_rerank_for(100) == 150 and mixed.n_rerank_for(10) == 62
    assert mixed.n_centroid_for(10) == 346 and mixed.n_centroid_for(100) == 600
    bare = derive_defaults(14_449_621, 14_449_621, screen=False)  # the depth it screens from
    assert (bare.k_token, bare.nprobe, bare.n_rerank, bare.n_centroid) == (385, 6, 187, 0)
    assert bare.n_rerank_for(100) == 324
    reference = derive_defaults(sd.REFERENCE_TOKENS, None)
    assert reference.n_centroid_for(10) == reference.n_centroid_for(100) == 0  # no screen
    below = derive_defaults(int(1.4 * sd.REFERENCE_TOKENS), None)  # below the screen's size
    assert below.n_centroid == 0 and below.nprobe == 5
    grown = derive_defaults(4 * sd.REFERENCE_TOKENS, sd.REFERENCE_TOKENS)
    assert grown.list_growth == 4.0  # lists four times their trained size add no probes,
    fresh = derive_defaults(4 * sd.REFERENCE_TOKENS, None)
    assert grown.nprobe == fresh.nprobe == 4 and grown.k_token == fresh.k_token
    # but twice (4^0.5) the candidates the screen takes; the rerank behind it is the same
    assert grown.n_centroid_for(10) == pytest.approx(2 * fresh.n_centroid_for(10), abs=1)
    assert grown.n_centroid_for(100) == pytest.approx(2 * fresh.n_centroid_for(100), abs=1)
    assert grown.n_rerank_for(10) == fresh.n_rerank_for(10)
    huge = derive_defaults(10**12, None)
    assert huge.k_token == sd.MAX_K_TOKEN and huge.n_rerank == round(32 * sd.MAX_SCALE**0.6)
    assert huge.n_centroid == round(32 * sd.MAX_SCALE**1.6 * sd.MAX_SCALE**0.56)
    # sizes in between never go down as the index grows: k_token, and the candidates
    # the approximate score keeps (screened or reranked)
    sizes = np.geomspace(1e4, 1e9, 60).astype(int)
    ks = [derive_defaults(int(n), None) for n in sizes]

    def kept(d: sd.SearchDefaults, k: int) -> int:
        return max(d.n_centroid_for(k), d.n_rerank_for(k))

    assert all(
        a.k_token <= b.k_token and kept(a, 10) <= kept(b, 10) and kept(a, 100) <= kept(b, 100)
        for a, b in itertools.pairwise(ks)
    )


def test_only_an_inverted_file_outgrows_its_training_and_growth_is_capped(
    tmp_path: Path,
) -> None:
    """Lists grown past their training widen the candidates (at most 4x growth
    counts); an index without lists (hnsw, flat) never outgrows anything."""
    capped = derive_defaults(100 * sd.REFERENCE_TOKENS, sd.REFERENCE_TOKENS)
    at_four = derive_defaults(100 * sd.REFERENCE_TOKENS, 25 * sd.REFERENCE_TOKENS)
    assert capped.n_centroid_for(10) == at_four.n_centroid_for(10)
    unscreened = derive_defaults(sd.REFERENCE_TOKENS, sd.REFERENCE_TOKENS // 100)
    assert unscreened.n_rerank_for(10) == 2 * sd.BASE_N_RERANK  # 4^0.5
    ids, vectors = synthetic_corpus(400, 16, seed=8)
    for kind, grows in (("ivf-flat", True), ("hnsw", False)):
        index = Index.from_vectors(tmp_path / kind, ids[:100], vectors[:100], index_kind=kind)
        index.add_vectors(ids[100:], vectors[100:], retrain="never")
        assert (index.search_defaults.list_growth > 2) == grows, kind


def test_n_rerank_keeps_candidates_beyond_k() -> None:
    d = derive_defaults(1000, None)
    assert d.n_rerank_for(10) == sd.BASE_N_RERANK
    assert d.n_rerank_for(100) == round(sd.RERANK_PER_HIT * 100) > 100
    resolved = SearchParams(k=100).resolved(d)
    want = (sd.BASE_K_TOKEN, sd.BASE_NPROBE, d.n_rerank_for(100))
    assert (resolved.k_token, resolved.nprobe, resolved.n_rerank) == want
    # what a caller sets wins; an explicit n_rerank is still at least k
    own = SearchParams(k=100, k_token=7, nprobe=3, n_rerank=20).resolved(d)
    assert (own.k_token, own.nprobe, own.n_rerank) == (7, 3, 100)


def test_a_filtered_search_visits_twice_the_lists() -> None:
    """A filter (or ids) thins every list to its allowed tokens, so the default
    nprobe doubles; a caller's own nprobe still wins."""
    d = derive_defaults(sd.REFERENCE_TOKENS, None)
    assert SearchParams().resolved(d).nprobe == d.nprobe == sd.BASE_NPROBE
    for restricted in ({"filter": {"section": "libs"}}, {"ids": ["a", "b"]}):
        assert SearchParams(**restricted).resolved(d).nprobe == 2 * d.nprobe
        assert SearchParams(nprobe=3, **restricted).resolved(d).nprobe == 3


def test_unset_settings_stay_checked() -> None:
    with pytest.raises(InvalidInput, match="k_token"):
        SearchParams(k_token=0)
    with pytest.raises(InvalidInput, match="k"):
        SearchParams(k=None)  # type: ignore[arg-type]


def test_a_search_runs_with_the_index_own_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ANN gets the derived k_token and nprobe, the screen the derived
    n_centroid, the rerank the derived n_rerank, and a value the caller passes
    replaces each."""
    monkeypatch.setattr(sd, "REFERENCE_TOKENS", 1000)  # this small index is 'large'
    ids, vectors = synthetic_corpus(1000, 32, seed=4)
    index = Index.from_vectors(tmp_path / "idx", ids, vectors, index_kind="ivf-flat")
    defaults = index.search_defaults
    assert defaults.k_token > 64 and defaults.n_rerank > 64
    assert defaults.n_centroid > defaults.n_rerank
    assert index.info()["search_defaults"] == defaults.to_dict()
    seen: list[tuple[Any, ...]] = []
    ann, cands, screen = TokenIndex.search_with_lists, Searcher.candidates, Searcher.screened

    def ann_spy(self: TokenIndex, Q: Any, k_token: int, **kw: Any) -> Any:
        seen.append(("ann", k_token, kw["nprobe"], kw["lists"]))
        return ann(self, Q, k_token, **kw)

    def cand_spy(self: Searcher, sims: Any, rows: Any, allowed: Any, n: int) -> Any:
        seen.append(("candidates", n))
        return cands(self, sims, rows, allowed, n)

    def screen_spy(self: Searcher, cand: Any, near: Any, n: int) -> Any:
        seen.append(("rerank", n))
        return screen(self, cand, near, n)

    monkeypatch.setattr(TokenIndex, "search_with_lists", ann_spy)
    monkeypatch.setattr(Searcher, "candidates", cand_spy)
    monkeypatch.setattr(Searcher, "screened", screen_spy)
    Q = synthetic_queries(vectors, 1, seed=1)[0]
    index.search(Q, k=100, exact_threshold=0)
    assert seen == [
        ("ann", defaults.k_token, defaults.nprobe, 64),
        ("candidates", defaults.n_centroid_for(100)),
        ("rerank", defaults.n_rerank_for(100)),
    ]
    seen.clear()
    index.search(Q, k=10, k_token=9, nprobe=2, n_rerank=11, n_centroid=30, exact_threshold=0)
    assert seen == [("ann", 9, 2, 64), ("candidates", 30), ("rerank", 11)]
    seen.clear()
    index.search(Q, k=10, k_token=9, nprobe=2, n_rerank=11, n_centroid=0, exact_threshold=0)
    assert seen == [("ann", 9, 2, 0), ("candidates", 11)]  # no screen, no lists asked


def test_an_index_grown_past_its_training_reports_its_list_growth(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(1200, 32, seed=8)
    index = Index.from_vectors(tmp_path / "idx", ids[:300], vectors[:300], index_kind="ivf-flat")
    before = index.search_defaults
    assert before.nprobe == sd.BASE_NPROBE and before.list_growth == 1.0
    index.add_vectors(ids[300:], vectors[300:], retrain="never")
    after = index.search_defaults
    assert after.list_growth == pytest.approx(after.tokens / before.tokens)
    assert after.list_growth > 3
    assert after.nprobe == sd.BASE_NPROBE  # more lists gained nothing measured
