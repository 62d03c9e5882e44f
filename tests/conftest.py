"""Shared fixtures: seeded synthetic multivector corpora and small indexes built from them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

from sie_index.index import Index
from storage.token_index import TokenIndex

# Tests write nothing into the working tree: no hypothesis example database.
settings.register_profile("sie-index", database=None)
settings.load_profile("sie-index")


def synthetic_corpus(
    n_docs: int, dim: int = 32, *, seed: int = 0, min_tokens: int = 3, max_tokens: int = 24
) -> tuple[list[str], list[np.ndarray]]:
    """Documents whose tokens cluster around a few topic centres, so MaxSim has structure."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n_docs // 20), dim)).astype(np.float32)
    ids, vectors = [], []
    for i in range(n_docs):
        n = int(rng.integers(min_tokens, max_tokens + 1))
        topics = rng.choice(len(centres), size=3)
        base = centres[rng.choice(topics, size=n)]
        v = base + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids.append(f"doc-{i:05d}")
        vectors.append(v.astype(np.float32))
    return ids, vectors


def synthetic_queries(
    vectors: list[np.ndarray], n: int, *, seed: int = 1, n_tokens: int = 6
) -> list[np.ndarray]:
    """Queries made of noisy copies of tokens of random documents."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        doc = vectors[int(rng.integers(len(vectors)))]
        rows = doc[rng.integers(len(doc), size=n_tokens)]
        q = rows + 0.3 * rng.standard_normal(rows.shape).astype(np.float32)
        out.append((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return out


@pytest.fixture
def make_index(tmp_path: Path) -> Callable[..., tuple[Index, list[str], list[np.ndarray]]]:
    """Build an index of a synthetic corpus: make_index(n_docs, index_kind=..., **kw)."""
    counter = iter(range(1_000_000))

    def make(
        n_docs: int = 300, *, dim: int = 32, seed: int = 0, index_kind: str = "flat", **kw: object
    ) -> tuple[Index, list[str], list[np.ndarray]]:
        ids, vectors = synthetic_corpus(n_docs, dim, seed=seed)
        path = tmp_path / f"index-{next(counter)}"
        index = Index.from_vectors(path, ids, vectors, index_kind=index_kind, **kw)  # type: ignore[arg-type]
        return index, ids, vectors

    return make


@pytest.fixture
def ann_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts token-index searches: proof that a search ran the ANN path (every
    search, with or without the near lists, goes through ``search_with_lists``)."""
    calls: list[int] = []
    original = TokenIndex.search_with_lists

    def spy(self: TokenIndex, *args: Any, **kw: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kw)

    monkeypatch.setattr(TokenIndex, "search_with_lists", spy)
    yield calls
