"""The rerank's compiled float16 MaxSim kernel and the parts it runs in."""

from __future__ import annotations

import importlib.util
import itertools
import os
import select
import signal
import sys
import threading
from typing import Any

import numpy as np
import pytest

from sie_index import core_parts, fused_maxsim, search
from sie_index.errors import InvalidInput
from sie_index.scoring import segment_maxsim
from tests.conftest import synthetic_corpus, synthetic_queries
from tests.test_search import MakeIndex, oracle

needs_numba = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba (the fast extra) not installed"
)


def _kernel() -> fused_maxsim.Kernel:
    run = fused_maxsim.kernel()
    assert run is not None
    return run


@needs_numba
@pytest.mark.parametrize("nq", [4, 7])  # the four-token blocks, and the tokens left over
def test_every_finite_float16_is_widened_exactly(nq: int) -> None:
    """One-dimensional rows: each similarity is one product, so the kernel must give
    the float32 product of the widened value bit for bit, subnormals and -0 included."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    rows = bits.view(np.float16)
    rows = rows[np.isfinite(rows)][:, None]
    Q = np.array([1.0, -0.37, 3e-3, 7.5, -1.0, 0.25, 1e-2][:nq], np.float32)[:, None]
    got = fused_maxsim.maxima(Q, rows, np.ones(len(rows), np.int64), _kernel())
    want = rows.astype(np.float32) * Q[:, 0]  # [n, nq]: one document a row
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@needs_numba
@pytest.mark.parametrize("dim", [1, 7, 64, 384])
@pytest.mark.parametrize("nq", [1, 3, 4, 5, 9, 32])
def test_maxsim_equals_numpys_within_float32_rounding(dim: int, nq: int) -> None:
    rng = np.random.default_rng(dim * 100 + nq)
    counts = rng.integers(1, 40, size=25).astype(np.int64)
    rows = rng.standard_normal((int(counts.sum()), dim)).astype(np.float16)
    Q = rng.standard_normal((nq, dim)).astype(np.float32)
    got = fused_maxsim.maxima(Q, rows, counts, _kernel())
    assert got.shape == (len(counts), nq)
    want = segment_maxsim(Q, rows.astype(np.float32), counts)
    np.testing.assert_allclose(got.sum(axis=1), want, rtol=1e-5, atol=1e-5 * dim)
    # each maximum is a similarity of that document's own rows
    first = fused_maxsim.maxima(Q, rows[: counts[0]], counts[:1], _kernel())
    np.testing.assert_allclose(first, got[:1], rtol=0, atol=0)


@needs_numba
def test_rows_that_do_not_fit_are_refused() -> None:
    Q = np.ones((2, 4), np.float32)
    run = _kernel()
    with pytest.raises(InvalidInput, match="do not fit"):
        fused_maxsim.maxima(Q, np.ones((3, 4), np.float32), np.array([3]), run)
    with pytest.raises(InvalidInput, match="do not fit"):
        fused_maxsim.maxima(Q, np.ones((3, 5), np.float16), np.array([3]), run)
    with pytest.raises(InvalidInput, match="add up to 4"):
        fused_maxsim.maxima(Q, np.ones((3, 4), np.float16), np.array([2, 2]), run)


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(module, name)

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(module, name, spy)
    return calls


@needs_numba
def test_the_search_scores_float16_rows_with_the_kernel(
    make_index: MakeIndex, ann_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, ids, vectors = make_index(400, dim=48, index_kind="ivf-flat")
    queries = synthetic_queries(vectors, 12, seed=3)
    fused_calls = _spy(monkeypatch, fused_maxsim, "maxima")
    torch_calls = _spy(monkeypatch, search, "segment_maxsim_torch")
    fused = [index.search(Q, k=10, n_rerank=120, exact_threshold=0) for Q in queries]
    assert len(ann_calls) == len(queries) and fused_calls and not torch_calls
    fused_maxsim.set_enabled(False)
    try:
        widened = [index.search(Q, k=10, n_rerank=120, exact_threshold=0) for Q in queries]
    finally:
        fused_maxsim.set_enabled(True)
    assert torch_calls
    for Q, a, b in zip(queries, fused, widened, strict=True):
        assert [h.doc_id for h in a] == [h.doc_id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
        exact = oracle(Q, vectors)
        assert all(h.score == pytest.approx(float(exact[h.doc_id]), abs=1e-4) for h in a)
        assert all(h.external_id == ids[h.doc_id] for h in a)
    # a batch splits its candidates differently in time, never in value
    batch = index.search_batch(queries, k=10, n_rerank=120, exact_threshold=0)
    assert [[(h.doc_id, h.score) for h in hits] for hits in batch] == [
        [(h.doc_id, h.score) for h in hits] for hits in fused
    ]


@needs_numba
def test_a_search_over_several_segments_scores_each_segments_rows(
    make_index: MakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, ids, vectors = make_index(300, dim=32, index_kind="ivf-flat")
    new_ids, new_vectors = synthetic_corpus(200, 32, seed=9)
    new_ids = [f"new-{i}" for i in new_ids]
    index.add_vectors(new_ids, new_vectors)
    assert index.info()["segments"] == 2
    fused_calls = _spy(monkeypatch, fused_maxsim, "maxima")
    everything, all_ids = vectors + new_vectors, ids + new_ids
    queries = synthetic_queries(everything, 8, seed=2)
    fused = [index.search(Q, k=10, n_rerank=150, exact_threshold=0) for Q in queries]
    assert fused_calls
    found = {h.external_id[:4] for hits in fused for h in hits}
    assert found == {"doc-", "new-"}  # hits from both segments
    fused_maxsim.set_enabled(False)
    try:
        widened = [index.search(Q, k=10, n_rerank=150, exact_threshold=0) for Q in queries]
    finally:
        fused_maxsim.set_enabled(True)
    for Q, a, b in zip(queries, fused, widened, strict=True):
        assert [h.external_id for h in a] == [h.external_id for h in b]
        exact = oracle(Q, everything)
        for h in a:
            assert h.score == pytest.approx(float(exact[all_ids.index(h.external_id)]), abs=1e-4)


def test_decoded_rows_and_a_missing_numba_take_torchs_path(
    make_index: MakeIndex, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    sq8, _, vectors = make_index(200, index_kind="flat", codec="sq8")
    Q = synthetic_queries(vectors, 1, seed=4)[0]
    fused_calls = _spy(monkeypatch, fused_maxsim, "maxima")
    torch_calls = _spy(monkeypatch, search, "segment_maxsim_torch")
    assert sq8.search(Q, k=5, exact_threshold=0)
    assert torch_calls and not fused_calls  # sq8 rows are decoded to float32 first
    f16, _, vectors = make_index(200, index_kind="flat")
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now fails
    fused_maxsim.KERNEL.forget()  # compiled again (and now without numba) on next use
    request.addfinalizer(fused_maxsim.KERNEL.forget)  # numba back: compiled again after
    assert fused_maxsim.kernel() is None
    hits = f16.search(Q, k=5, exact_threshold=0)
    exact = oracle(Q, vectors)
    assert all(h.score == pytest.approx(float(exact[h.doc_id]), abs=1e-4) for h in hits)
    assert not fused_calls and len(torch_calls) == 2


@needs_numba
def test_a_query_too_large_to_scale_takes_torchs_path(
    make_index: MakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """|q| >= 2^16 would overflow once scaled by 2^112 (inf, and inf x 0 = NaN, lost
    by the maximum): such a query is scored by torch, exactly."""
    index, _, vectors = make_index(200, index_kind="flat")
    Q = synthetic_queries(vectors, 1, seed=8)[0]
    Q *= np.float32(1e5) / np.abs(Q).max()  # the largest |q| is 1e5, half of it fits
    assert not fused_maxsim.fits(Q) and fused_maxsim.fits(Q / np.float32(2))
    rows, counts = vectors[0].astype(np.float16), np.array([len(vectors[0])])
    with pytest.raises(InvalidInput, match="2\\^16"):
        fused_maxsim.maxima(Q, rows, counts, _kernel())
    fused_calls = _spy(monkeypatch, fused_maxsim, "maxima")
    hits = index.search(Q, k=5, exact_threshold=0)
    exact = oracle(Q, vectors)
    assert not fused_calls
    assert all(h.score == pytest.approx(float(exact[h.doc_id]), rel=1e-5) for h in hits)
    half = index.search(Q / np.float32(2), k=5, exact_threshold=0)  # fits: the kernel
    assert fused_calls and [h.doc_id for h in half] == [h.doc_id for h in hits]


def test_parts_cover_the_candidates_in_order_with_enough_tokens_each() -> None:
    cores = core_parts.cores()
    counts = np.full(300, 50)  # 15,000 tokens
    parts = core_parts.split(counts)
    assert parts[0][0] == 0 and parts[-1][1] == 300
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert len(parts) >= min(cores, 14)
    assert all(counts[a:b].sum() >= core_parts.MIN_PART_TOKENS for a, b in parts[:-1])
    assert core_parts.split(np.full(10, 50)) == [(0, 10)]  # 500 tokens: one part
    assert core_parts.split(np.array([5000])) == [(0, 1)]


def test_on_cores_keeps_order_and_runs_parts_on_the_pool() -> None:
    names: list[str] = []

    def work(item: int) -> int:
        names.append(threading.current_thread().name)
        return item * item

    assert core_parts.on_cores(work, [1, 2, 3, 4]) == [1, 4, 9, 16]
    assert names.count(threading.current_thread().name) >= 1
    if core_parts.cores() > 1:
        assert any(name.startswith("sie-part") for name in names)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_makes_its_own_pool() -> None:
    core_parts.on_cores(lambda item: item, [1, 2])  # the parent's pool exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool has no threads here
        try:
            ok = core_parts._pool is None and core_parts.on_cores(lambda x: x + 1, [1, 2]) == [2, 3]
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 60)  # bounded: a hung child is killed
    answer = os.read(read, 1) if ready else b""
    os.close(read)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert answer == b"1"
