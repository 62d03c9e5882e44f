"""MaxSim: the SDK-compatible helpers and the segment kernels.

The reference below is a plain loop with the SIE SDK's reading of its inputs
(``sie_sdk.scoring`` 0.10.1): a 2-D ndarray is one document, anything else is
iterated, every matrix is cast to float32 before the product.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sie_index.errors import InvalidInput
from sie_index.scoring import (
    maxsim,
    maxsim_batch,
    segment_maxsim,
    segment_maxsim_explain,
    segment_maxsim_torch,
)

# The module itself (``sie_index.maxsim`` the attribute may be the function).
maxsim_module = importlib.import_module("sie_index.scoring")

# Hand-worked example, dim 3.
Q = np.array([[1, 2, 0], [0, 1, -1]], dtype=np.float32)
A = np.array([[1, 0, 0], [0, 2, 1], [-1, -1, 3]], dtype=np.float32)
# q0·A = [1, 4, -3] -> 4 (row 1); q1·A = [0, 1, -4] -> 1 (row 1); MaxSim 5
B = np.array([[2, 1, 1]], dtype=np.float32)
# q0·B = 4; q1·B = 0; MaxSim 4
C = np.array([[0, 0, -2], [3, 0, 0]], dtype=np.float32)
# q0·C = [0, 3] -> 3 (row 1); q1·C = [2, 0] -> 2 (row 0); MaxSim 5
Q2 = np.array([[1, 1, 1]], dtype=np.float32)
# Q2·A = [1, 3, 1] -> 3; Q2·B = 4; Q2·C = [-2, 3] -> 3


def sdk_maxsim(query: Any, documents: Any) -> list[float]:
    """The SDK's loop, one document at a time."""
    if isinstance(documents, np.ndarray) and documents.ndim == 2:
        docs = [documents]
    elif isinstance(documents, np.ndarray):
        docs = list(documents)
    else:
        docs = documents
    q = np.asarray(query, dtype=np.float32)
    return [float(np.sum(np.max(q @ np.asarray(d, dtype=np.float32).T, axis=-1))) for d in docs]


def sdk_maxsim_batch(queries: list[Any], documents: list[Any]) -> np.ndarray:
    scores = np.zeros((len(queries), len(documents)), dtype=np.float32)
    for i, query in enumerate(queries):
        scores[i] = sdk_maxsim(query, documents) if documents else []
    return scores


def test_hand_computed_scores() -> None:
    assert maxsim(Q, [A, B, C]) == [5.0, 4.0, 5.0]
    np.testing.assert_array_equal(maxsim_batch([Q, Q2], [A, B, C]), [[5, 4, 5], [3, 4, 3]])


def test_return_types() -> None:
    scores = maxsim(Q, [A, B])
    assert isinstance(scores, list)
    assert all(type(s) is float for s in scores)
    batch = maxsim_batch([Q], [A, B])
    assert batch.dtype == np.float32
    assert batch.shape == (1, 2)


def test_two_dimensional_array_is_one_document() -> None:
    assert maxsim(Q, A) == [5.0]
    assert maxsim(Q, C.astype(np.float16)) == [5.0]


def test_three_dimensional_array_is_a_stack_of_documents() -> None:
    stack = np.stack([A[:2], C, -C])
    assert maxsim(Q, stack) == sdk_maxsim(Q, stack)
    assert len(maxsim(Q, stack)) == 3


def test_plain_python_lists() -> None:
    assert maxsim(Q.tolist(), [A.tolist(), B.tolist(), C.tolist()]) == [5.0, 4.0, 5.0]
    assert maxsim(Q.tolist(), (A, B)) == [5.0, 4.0]
    np.testing.assert_array_equal(maxsim_batch([Q2.tolist()], [C.tolist()]), [[3.0]])


def test_nested_list_of_vectors_is_a_list_of_documents_as_in_the_sdk() -> None:
    # Only an ndarray is read as one document; a plain 2-D list is a list of 1-D "documents".
    with pytest.raises(InvalidInput, match=r"documents\[0\] must be a 2-D array"):
        maxsim(Q, A.tolist())


def test_float16_accumulates_in_float32() -> None:
    rng = np.random.default_rng(7)
    query = rng.standard_normal((32, 128)).astype(np.float16)
    docs = [rng.standard_normal((n, 128)).astype(np.float16) for n in (96, 1, 40)]
    expected = maxsim(query.astype(np.float32), [d.astype(np.float32) for d in docs])
    assert maxsim(query, docs) == expected
    np.testing.assert_allclose(expected, sdk_maxsim(query, docs), rtol=1e-6)
    # A float16 sum of 32 maxima of ~30 would be off by far more than this.
    half = [float(np.sum(np.max(query @ d.T, axis=-1))) for d in docs]
    assert any(abs(h - e) > 1e-3 for h, e in zip(half, expected, strict=True))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("form", ["list", "single", "stack"])
def test_random_against_sdk_loop(dtype: type, form: str) -> None:
    rng = np.random.default_rng(3)
    query = rng.standard_normal((9, 48)).astype(dtype)
    if form == "list":
        documents: Any = [rng.standard_normal((n, 48)).astype(dtype) for n in (1, 5, 300, 2, 17)]
    elif form == "single":
        documents = rng.standard_normal((23, 48)).astype(dtype)
    else:
        documents = rng.standard_normal((6, 11, 48)).astype(dtype)
    np.testing.assert_allclose(maxsim(query, documents), sdk_maxsim(query, documents), rtol=1e-5)


small_ints = st.integers(min_value=-4, max_value=4)


@st.composite
def integer_case(draw: st.DrawFn) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    dim = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.float16, np.float32]))

    def matrix(rows: int) -> np.ndarray:
        values = draw(st.lists(small_ints, min_size=rows * dim, max_size=rows * dim))
        return np.array(values, dtype=dtype).reshape(rows, dim)

    queries = [matrix(draw(st.integers(1, 6))) for _ in range(draw(st.integers(1, 3)))]
    docs = [matrix(draw(st.integers(1, 7))) for _ in range(draw(st.integers(0, 6)))]
    return queries[0], queries, docs


@settings(max_examples=60, deadline=None, database=None)
@given(integer_case())
def test_integer_vectors_match_sdk_loop_exactly(
    case: tuple[np.ndarray, list[np.ndarray], list[np.ndarray]],
) -> None:
    # Small integers make every product and sum exact, so any order of work agrees.
    query, queries, docs = case
    assert maxsim(query, docs) == sdk_maxsim(query, docs)
    np.testing.assert_array_equal(maxsim_batch(queries, docs), sdk_maxsim_batch(queries, docs))


def test_batch_random_against_sdk_loop() -> None:
    rng = np.random.default_rng(11)
    queries = [rng.standard_normal((n, 64)).astype(np.float16) for n in (8, 17, 1)]
    docs = [rng.standard_normal((n, 64)).astype(np.float32) for n in (13, 29, 51, 1)]
    np.testing.assert_allclose(
        maxsim_batch(queries, docs), sdk_maxsim_batch(queries, docs), rtol=1e-5, atol=1e-5
    )


def test_many_blocks_give_the_same_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    queries = [rng.standard_normal((n, 16)).astype(np.float32) for n in (3, 4)]
    docs = [rng.standard_normal((n, 16)).astype(np.float32) for n in rng.integers(1, 30, 40)]
    whole = maxsim_batch(queries, docs)
    single = maxsim(queries[0], docs)
    monkeypatch.setattr(maxsim_module, "_BLOCK_ELEMS", 50)  # a few documents per block
    counts = np.array([len(d) for d in docs])
    assert len(maxsim_module._groups(counts, rows=7, dim=16)) > 10
    np.testing.assert_allclose(maxsim_batch(queries, docs), whole, rtol=1e-6)
    np.testing.assert_allclose(maxsim(queries[0], docs), single, rtol=1e-6)


def test_empty_document_lists() -> None:
    assert maxsim(Q, []) == []
    assert maxsim(Q, np.zeros((0, 4, 3), dtype=np.float32)) == []
    empty = maxsim_batch([Q, Q2], [])
    assert empty.shape == (2, 0)
    assert empty.dtype == np.float32
    assert maxsim_batch([], [A, B]).shape == (0, 2)


def test_document_without_tokens_is_named() -> None:
    with pytest.raises(InvalidInput, match=r"documents\[1\] has 0 tokens") as info:
        maxsim(Q, [A, np.zeros((0, 3), dtype=np.float32), B])
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match=r"documents\[0\] has 0 tokens"):
        maxsim_batch([Q], [np.zeros((0, 3), dtype=np.float32)])


def test_dim_mismatch_is_named() -> None:
    wide = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(InvalidInput, match=r"query has dim 3 but documents\[2\] has dim 4"):
        maxsim(Q, [A, B, wide])
    with pytest.raises(InvalidInput, match=r"dim mismatch: query has dim 3 but documents\[1\]"):
        maxsim_batch([Q, Q2], [A, wide])
    # Queries of different widths cannot share any document.
    with pytest.raises(InvalidInput, match=r"query has dim 4 but documents\[0\] has dim 3"):
        maxsim_batch([Q, wide], [A])


def test_shape_errors() -> None:
    with pytest.raises(InvalidInput, match=r"query must be a 2-D array"):
        maxsim(np.ones(3, dtype=np.float32), [A])
    with pytest.raises(InvalidInput, match=r"query has 0 tokens"):
        maxsim(np.zeros((0, 3), dtype=np.float32), [A])
    with pytest.raises(InvalidInput, match=r"documents\[0\] must be a 2-D array"):
        maxsim(Q, np.ones(3, dtype=np.float32))  # one vector passed unwrapped
    with pytest.raises(InvalidInput, match=r"queries\[1\] has 0 tokens"):
        maxsim_batch([Q, np.zeros((0, 3))], [A])


def concatenated(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(d) for d in docs], dtype=np.int64)
    return np.concatenate(docs).astype(np.float32), counts


def test_segment_maxsim_hand_computed() -> None:
    D, counts = concatenated([A, B, C])
    np.testing.assert_array_equal(segment_maxsim(Q, D, counts), [5, 4, 5])
    scores, best_row, best_sim = segment_maxsim_explain(Q, D, counts)
    np.testing.assert_array_equal(scores, [5, 4, 5])
    # Rows of D: A is 0-2, B is 3, C is 4-5.
    np.testing.assert_array_equal(best_row, [[1, 1], [3, 3], [5, 4]])
    np.testing.assert_array_equal(best_sim, [[4, 1], [4, 0], [3, 2]])
    assert best_row.dtype == np.int64
    assert best_sim.dtype == np.float32


def test_segment_kernels_against_reference() -> None:
    import torch

    from sie_index.scoring import _segment_maxsim_scatter

    rng = np.random.default_rng(9)
    query = rng.standard_normal((7, 32)).astype(np.float32)
    docs = [rng.standard_normal((n, 32)).astype(np.float32) for n in (1, 4, 100, 3, 1, 9)]
    D, counts = concatenated(docs)
    expected = sdk_maxsim(query, docs)
    np.testing.assert_allclose(segment_maxsim(query, D, counts), expected, rtol=1e-5)
    scores, best_row, best_sim = segment_maxsim_explain(query, D, counts)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    ends = np.cumsum(counts)
    starts = ends - counts
    assert np.all((best_row >= starts[:, None]) & (best_row < ends[:, None]))
    sims = query @ D.T  # [nq, T]
    np.testing.assert_array_equal(best_sim, sims[np.arange(7)[None, :], best_row])
    torch_scores = segment_maxsim_torch(query, D, counts, device="cpu")
    assert torch_scores.dtype == np.float32
    np.testing.assert_allclose(torch_scores, segment_maxsim(query, D, counts), rtol=1e-5, atol=1e-5)
    # the GPU's segment maximum (scatter_reduce), run here on CPU tensors
    scattered = _segment_maxsim_scatter(torch.from_numpy(query), torch.from_numpy(D), counts)
    assert scattered.dtype == np.float32
    np.testing.assert_allclose(scattered, segment_maxsim(query, D, counts), rtol=1e-5, atol=1e-5)


def test_explain_ties_pick_the_first_row() -> None:
    doc = np.array([[0, 1, 0], [1, 2, 0], [1, 2, 0]], dtype=np.float32)
    D, counts = concatenated([B, doc])
    _, best_row, _ = segment_maxsim_explain(Q, D, counts)
    np.testing.assert_array_equal(best_row[1], [2, 2])  # rows 2 and 3 tie; 1 is first


def test_segment_maxsim_torch_takes_read_only_arrays_without_a_warning() -> None:
    import warnings

    D, counts = concatenated([A, B, C])
    Q_ro, D_ro = Q.copy(), D.copy()
    Q_ro.flags.writeable = False
    D_ro.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's warning on non-writable arrays fails this
        result = segment_maxsim_torch(Q_ro, D_ro, counts)
    np.testing.assert_allclose(result, segment_maxsim(Q, D, counts), atol=1e-6)


def test_segment_maxsim_torch_accepts_tensors() -> None:
    import torch

    D, counts = concatenated([A, B, C])
    result = segment_maxsim_torch(torch.from_numpy(Q), torch.from_numpy(D), counts)
    np.testing.assert_allclose(result, [5, 4, 5], atol=1e-6)


@pytest.mark.parametrize(
    "kernel", [segment_maxsim, segment_maxsim_torch, lambda *a: segment_maxsim_explain(*a)[0]]
)
def test_segment_kernels_edge_cases(kernel: Any) -> None:
    empty = kernel(Q, np.zeros((0, 3), dtype=np.float32), np.zeros(0, dtype=np.int64))
    assert empty.shape == (0,)
    D, _ = concatenated([A, B])
    with pytest.raises(InvalidInput, match="positive"):
        kernel(Q, D, np.array([4, 0]))
    with pytest.raises(InvalidInput, match="add up to"):
        kernel(Q, D, np.array([2, 1]))
    with pytest.raises(InvalidInput, match="same dim"):
        kernel(Q, D[:, :2], np.array([3, 1]))


def test_a_huge_document_is_scored_in_bounded_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few rows give the float64 oracle's scores, documents split across
    blocks included."""
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((7, 16)).astype(np.float32)
    counts = np.array([3, 50, 1, 200, 9, 1])
    D = rng.standard_normal((int(counts.sum()), 16)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    want = [
        (Q.astype(np.float64) @ D[o : o + c].astype(np.float64).T).max(axis=1).sum()
        for o, c in zip(offsets, counts, strict=True)
    ]
    for elems in (7, 14, 70, 7 * 33):
        monkeypatch.setattr(maxsim_module, "MAX_PRODUCT_ELEMS", elems)
        np.testing.assert_allclose(segment_maxsim_torch(Q, D, counts), want, rtol=1e-5)


def test_a_long_query_against_a_huge_document_stays_small() -> None:
    """4,096 query tokens against a 200,000-token document: one product would hold
    3.3 GB; the peak of the whole process stays far below that."""
    code = (
        "import os, resource, numpy as np, torch\n"
        "from sie_index.scoring import segment_maxsim_torch\n"
        "rng = np.random.default_rng(0)\n"
        "Q = rng.standard_normal((4096, 8)).astype(np.float32)\n"
        "D = rng.standard_normal((200_000, 8)).astype(np.float32)\n"
        "segment_maxsim_torch(Q, D[:1000], np.array([1000]))  # torch's pools started\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "segment_maxsim_torch(Q, D, np.array([200_000]))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(before, after, torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split()[:2])
    # KiB: the call's own peak, well under the 3.3 GB of one product (the process's
    # start, torch's libraries and pools, is not the kernel's)
    assert after - before < 1_000_000, out.stdout
