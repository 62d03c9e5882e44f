"""Token pooling: fewer vectors a document, merged where its tokens say the same.

A document's token vectors are clustered hierarchically with Ward's linkage (as
PyLate's ``pool_embeddings_hierarchical`` does) into ``ceil(n / pool_factor)``
clusters (at least one; a document of fewer tokens than that keeps them all),
and each cluster is stored as its mean vector, L2-normalized. Queries are never
pooled. Published results (Clavié et al., 2024) find a factor of 2 costs almost
no retrieval quality while halving the stored vectors.

Pooling is deterministic: the clustering runs in float64 on the vectors as given
(scipy's linkage is exact, with no random start), and clusters are numbered by
their first token, so the same vectors always pool to the same bytes in the same
order. With each pooled vector comes its *sources*: the pooled row each original
token went to, which the store keeps for explanations.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from sie_index.errors import InvalidInput
from storage import MAX_POOL_FACTOR

__all__ = [
    "MAX_POOL_FACTOR",
    "MAX_POOL_TOKENS",
    "Pooled",
    "check_pool_factor",
    "pool_encoded",
    "pool_vectors",
]

MAX_POOL_TOKENS = 4096
"""Ward's linkage takes memory and time quadratic in the tokens it clusters (64 MiB
of distances at 4,096): a longer document is pooled in consecutive runs of this
many tokens."""


class Pooled(NamedTuple):
    """A document's pooled vectors and, per original token, the row it went to."""

    vectors: np.ndarray
    sources: np.ndarray


def check_pool_factor(value: Any) -> int:
    """``value`` as a pool factor, or :class:`InvalidInput`: an integer in
    ``1..MAX_POOL_FACTOR`` (1: no pooling)."""
    if type(value) is not int or not 1 <= value <= MAX_POOL_FACTOR:
        raise InvalidInput(
            f"pool_factor must be an integer in 1..{MAX_POOL_FACTOR} (1: no pooling), got {value!r}"
        )
    return value


def _cluster(D: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cluster labels 0.. of the rows of ``D`` (float64), numbered by first row."""
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(D, method="ward")
    raw = fcluster(tree, t=n_clusters, criterion="maxclust")
    # fcluster's own numbering follows the tree; number clusters by their first
    # token instead, so that a pooled document's rows keep its tokens' order
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    labels: np.ndarray = rank[inverse.reshape(-1)]
    return labels


def pool_vectors(D: np.ndarray, pool_factor: int) -> Pooled | None:
    """The pooled vectors of one document ``D [n, dim]`` (rows L2-normalized,
    float32) and their sources; None where pooling would keep every token (a
    factor of 1, or too few tokens)."""
    n = len(D)
    if pool_factor == 1 or math.ceil(n / pool_factor) >= n:
        return None
    X = np.asarray(D, dtype=np.float64)
    labels = np.empty(n, dtype=np.int64)
    next_label = 0
    for lo in range(0, n, MAX_POOL_TOKENS):
        part = X[lo : lo + MAX_POOL_TOKENS]
        k = max(1, math.ceil(len(part) / pool_factor))
        if k == 1:
            local = np.zeros(len(part), np.int64)
        elif k >= len(part):
            local = np.arange(len(part))
        else:
            local = _cluster(part, k)
        labels[lo : lo + len(part)] = local + next_label
        next_label += int(local.max()) + 1
    sums = np.zeros((next_label, X.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, X)
    means = sums / np.bincount(labels, minlength=next_label)[:, None]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    pooled = (means / np.maximum(norms, np.finfo(np.float64).tiny)).astype(np.float32)
    return Pooled(pooled, labels)


def _poolable(arr: Any) -> bool:
    """Whether ``arr`` is vectors the store would take (2-D numbers, finite, no
    all-zero row): anything else goes to the store unpooled, which names the
    document it refuses."""
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind not in "fiu":
        return False
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        return False
    return bool(np.isfinite(arr).all() and np.abs(arr).max(axis=1).all())


def pool_encoded(vectors: list[Any], pool_factor: int) -> list[Any]:
    """Each document's vectors pooled (a :class:`Pooled`), or as they were where
    pooling keeps every token or the store is to refuse them."""
    if pool_factor == 1:
        return vectors
    out: list[Any] = []
    for arr in vectors:
        pooled = pool_vectors(arr, pool_factor) if _poolable(arr) else None
        out.append(arr if pooled is None else pooled)
    return out
