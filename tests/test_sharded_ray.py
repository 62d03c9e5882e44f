"""Sharded indexes on a real local Ray runtime: one actor a shard, the exact merge,
a killed actor restarting, and a build encoded by a Ray Data actor pool."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sie_index import ShardedIndex
from tests.conftest import synthetic_corpus
from tests.test_sharded import _normalized, _union_oracle

ray = pytest.importorskip("ray")

DIM = 16


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    """One local Ray runtime for these tests, shut down at the end."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[np.ndarray]]:
    ids, vectors = synthetic_corpus(600, DIM, seed=21)
    vectors = _normalized(vectors)
    path = tmp_path_factory.mktemp("ray") / "idx"
    ShardedIndex.from_vectors(
        path,
        ids,
        vectors,
        shards=3,
        metadata=[{"g": i % 4} for i in range(len(ids))],
        index_kind="ivf-flat",
        index_options={"nlist": 16},
    ).close()
    return path, ids, vectors


def test_ray_actors_answer_as_the_local_executor(
    built: tuple[Path, list[str], list[np.ndarray]],
) -> None:
    path, _, vectors = built
    qs = [vectors[i][:4] for i in (0, 10, 200, 599)]
    with ShardedIndex.open(path) as local, ShardedIndex.open(path, ray=True) as remote:
        for flt in (None, {"g": 2}):
            a = local.search_batch(qs, k=8, filter=flt, exact_threshold=0, nprobe=16)
            b = remote.search_batch(qs, k=8, filter=flt, exact_threshold=0, nprobe=16)
            for x, y in zip(a, b, strict=True):
                assert [(h.external_id, h.score, h.shard) for h in x] == [
                    (h.external_id, h.score, h.shard) for h in y
                ]
        assert len(remote) == len(local) == 600


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(n_docs=st.integers(1, 30), shards=st.integers(1, 4), seed=st.integers(0, 999))
def test_the_merge_on_ray_equals_exhaustive_maxsim(
    tmp_path_factory: pytest.TempPathFactory, n_docs: int, shards: int, seed: int
) -> None:
    ids, vectors = synthetic_corpus(n_docs, DIM, seed=seed, max_tokens=8)
    vectors = _normalized(vectors)
    path = tmp_path_factory.mktemp("raymerge") / "idx"
    ShardedIndex.from_vectors(path, ids, vectors, shards=shards, index_kind="flat").close()
    q = _normalized(synthetic_corpus(1, DIM, seed=seed + 7, max_tokens=4)[1])[0]
    with ShardedIndex.open(path, ray=True) as index:
        hits = index.search(q, k=6, exact_threshold=0, n_rerank=40)
    want_ids, want_scores = _union_oracle(ids, vectors, set(ids), q, 6)
    assert [h.external_id for h in hits] == want_ids
    np.testing.assert_allclose([h.score for h in hits], want_scores, rtol=1e-5, atol=1e-5)


def test_a_killed_shard_actor_restarts_and_answers_the_same(
    built: tuple[Path, list[str], list[np.ndarray]],
) -> None:
    path, _, vectors = built
    q = vectors[42][:4]
    with ShardedIndex.open(path, ray=True) as index:
        before = index.search(q, k=10)
        executor = index._executor
        actor = executor.actors[1]  # type: ignore[union-attr]
        old_pid = ray.get(actor.pid.remote())
        ray.kill(actor, no_restart=False)
        after = index.search(q, k=10)  # retried on the restarted actor
        assert [(h.external_id, h.score) for h in after] == [
            (h.external_id, h.score) for h in before
        ]
        deadline = time.monotonic() + 60
        new_pid = ray.get(actor.pid.remote(), timeout=60)
        assert new_pid != old_pid and time.monotonic() < deadline


def test_a_build_encoded_by_ray_data_equals_a_local_build(tmp_path: Path) -> None:
    """The embedded default encoder, loaded once in each Ray Data actor."""
    ray_built = ShardedIndex.build(
        tmp_path / "ray",
        "debian-pkgs",
        shards=2,
        limit=60,
        ray=True,
        encode_actors=1,
        progress=False,
    )
    local = ShardedIndex.build(
        tmp_path / "local", "debian-pkgs", shards=2, limit=60, progress=False
    )
    with ray_built, local:
        assert len(ray_built) == len(local) == 60
        for query in ("image editor", "python library for testing"):
            a, b = ray_built.search(query, k=5), local.search(query, k=5)
            assert [(h.external_id, h.score) for h in a] == [(h.external_id, h.score) for h in b]
