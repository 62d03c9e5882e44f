"""One snapshot for an opened index's whole life, one writer at a time, and a target
that holds the old index or the new one at every instant, kill -9 included."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sie_index import Index
from sie_index.errors import IndexLocked, NotAnIndex
from storage.builder import StoreBuilder
from storage.failpoints import ENV
from storage.generations import CURRENT_NAME
from storage.lock import LOCK_NAME
from storage.snapshot import StoreSnapshot
from tests.conftest import synthetic_corpus, synthetic_queries
from tests.crash_child import build, corpus
from tests.storage_helpers import rest_of_output

ROOT = Path(__file__).resolve().parents[1]
N_DOCS = 600  # above the exact-path threshold (8 x 64): searches run the ANN

Result = tuple[tuple[tuple[str, float], ...], ...]


def _build_seed(path: Path, seed: int) -> None:
    ids, vectors = synthetic_corpus(N_DOCS, 16, seed=seed)
    Index.from_vectors(
        path, [f"s{seed}-{i}" for i in ids], vectors, overwrite=True, index_kind="ivf-flat"
    ).close()


def _search(index: Index, queries: list[np.ndarray]) -> Result:
    return tuple(
        tuple((h.external_id, round(h.score, 5)) for h in hits)
        for hits in index.search_batch(queries, k=5, threads=1)
    )


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, Result], list]:
    """What each of three corpora answers, searched from an index of its own."""
    base = tmp_path_factory.mktemp("expected")
    queries = synthetic_queries(synthetic_corpus(N_DOCS, 16, seed=0)[1], 3, seed=9)
    out = {}
    for seed in range(3):
        _build_seed(base / str(seed), seed)
        with Index.open(base / str(seed)) as index:
            out[seed] = _search(index, queries)
    return out, queries


def test_an_open_index_is_one_snapshot_whatever_happens_on_disk(
    tmp_path: Path, expected: tuple[dict[int, Result], list]
) -> None:
    answers, queries = expected
    path = tmp_path / "idx"
    _build_seed(path, 0)
    index = Index.open(path)
    assert _search(index, queries) == answers[0]
    _build_seed(path, 1)  # rebuilt under the open index
    with ThreadPoolExecutor(1) as pool:  # a thread that has never touched the index
        assert pool.submit(_search, index, queries).result() == answers[0]
    assert _search(index, queries) == answers[0]
    with Index.open(path) as fresh:
        assert _search(fresh, queries) == answers[1]
    shutil.rmtree(path)  # the folder gone altogether
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(_search, index, queries).result() == answers[0]
    index.close()


def _readers_through_rebuilds(
    tmp_path: Path, expected: tuple[dict[int, Result], list], rebuilds: int
) -> dict[str, int]:
    answers, queries = expected
    path = tmp_path / "idx"
    _build_seed(path, 0)
    held = Index.open(path)  # opened before every rebuild, searched during them
    stop = threading.Event()
    counts = {"opens": 0, "held_searches": 0}
    failures: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                with Index.open(path, verify=counts["opens"] % 2 == 0) as index:
                    got = _search(index, queries)
                    if got not in answers.values():
                        failures.append(f"a mixed or wrong result: {got[0][:2]}")
                    # the same snapshot again, from a new thread: the same answer
                    with ThreadPoolExecutor(1) as pool:
                        if pool.submit(_search, index, queries).result() != got:
                            failures.append("one open index answered twice differently")
                counts["opens"] += 1
            except Exception as exc:  # every error is a failure here, typed or not
                failures.append(f"{type(exc).__name__}: {exc}")

    def held_reader() -> None:
        while not stop.is_set():
            if _search(held, queries) != answers[0]:
                failures.append("the index opened first changed its answers")
            counts["held_searches"] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    threads.append(threading.Thread(target=held_reader))
    for t in threads:
        t.start()
    try:
        for i in range(rebuilds):
            _build_seed(path, (i + 1) % 3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    held.close()
    assert failures == []
    assert counts["opens"] > 0 and counts["held_searches"] > 0
    # every reader let go of what it held: the next writer leaves one generation
    _build_seed(path, 0)
    assert sorted(p.name for p in path.iterdir()) == [
        CURRENT_NAME,
        f"gen-{rebuilds + 2:06d}",
        f"seg-{rebuilds + 2:06d}",
        LOCK_NAME,
    ]
    return counts


def test_readers_through_rebuilds(tmp_path: Path, expected: tuple[dict[int, Result], list]) -> None:
    _readers_through_rebuilds(tmp_path, expected, rebuilds=12)


@pytest.mark.slow
def test_readers_through_a_hundred_rebuilds(
    tmp_path: Path, expected: tuple[dict[int, Result], list]
) -> None:
    counts = _readers_through_rebuilds(tmp_path, expected, rebuilds=120)
    print(f"120 rebuilds: {counts}")


# -- one writer at a time ----------------------------------------------------------


def test_a_second_writer_thread_gets_index_locked(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    first_holds, second_done = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        with StoreBuilder(path, 16, overwrite=True) as builder:
            builder.add(corpus(1)[:10])
            first_holds.set()
            second_done.wait(10)
            builder.finish(encoder_spec={"kind": "t", "model": "t", "dim": 16, "options": {}})
        outcome["first"] = "built"

    def second() -> None:
        first_holds.wait(10)
        started = time.monotonic()
        try:
            StoreBuilder(path, 16, overwrite=True)
            outcome["second"] = "built"
        except IndexLocked:
            outcome["second"] = "locked"
        outcome["waited"] = time.monotonic() - started
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcome["first"] == "built" and outcome["second"] == "locked"
    with StoreSnapshot.open(path) as snap:
        assert snap.manifest.documents == 10


def _child(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_child", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_a_second_writer_process_gets_index_locked(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    first = _child("--hold", "3", str(path), "1")
    assert first.stdout is not None
    assert [first.stdout.readline().strip() for _ in range(2)] == ["ready", "holding"]
    second = _child(str(path), "2")
    assert second.communicate(timeout=120)[0].split() == ["ready", "locked"]
    assert second.returncode == 3
    assert first.communicate(timeout=120)[0].split() == ["built", "1"]
    assert first.returncode == 0
    assert _which_seed(path) == 1


# -- kill -9 -------------------------------------------------------------------------


def _which_seed(path: Path) -> int | None:
    """The seed of the corpus the index at ``path`` holds, checked whole; None if none."""
    try:
        snap = StoreSnapshot.open(path)
    except NotAnIndex:
        return None  # a first build killed before its commit
    with snap:
        ids = snap.docs.external_ids()
        seed = int(ids[0][1:].split("-")[0])
        docs = corpus(seed)
        assert ids == [d.external_id for d in docs]
        got = snap.tokens.spans(snap.spans.token_start, snap.spans.token_count)
        want = np.concatenate([d.vectors for d in docs]).astype(np.float16)
        np.testing.assert_array_equal(got, want.astype(np.float32))
        return seed


def _assert_no_debris(path: Path) -> None:
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    names = sorted(p.name for p in path.iterdir())
    assert len(names) == 4 and names[0] == CURRENT_NAME and names[3] == LOCK_NAME, names
    assert names[1][4:] == names[2][4:] and names[2].startswith("seg-"), names


@pytest.mark.parametrize(
    ("failpoint", "survivor"),
    [
        ("commit:before-pointer", "old"),
        ("commit:before-rename", "old"),
        ("commit:after-rename", "new"),
        ("commit:before-sweep", "new"),
    ],
)
def test_killed_at_each_commit_point_the_target_is_old_or_new(
    tmp_path: Path, failpoint: str, survivor: str
) -> None:
    path = tmp_path / "idx"
    build(path, 1)
    child = _child(str(path), "2", env={ENV: failpoint})
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert _which_seed(path) == (1 if survivor == "old" else 2)
    build(path, 3)  # the next writer sweeps what the killed one left
    _assert_no_debris(path)
    assert _which_seed(path) == 3


def _kill_loop(tmp_path: Path, kills: int) -> dict[str, int]:
    """Kill a process rebuilding the index over and over at random instants; after each
    kill the index is the last acknowledged build or the one being committed."""
    path = tmp_path / "idx"
    rng = np.random.default_rng(5)
    seen = {"acknowledged": 0, "in flight": 0}
    previous: int | None = None
    for i in range(kills):
        seeds = list(range(10 * i + 1, 10 * i + 6))
        child = _child(str(path), *map(str, seeds))
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 1.2)))
        child.send_signal(signal.SIGKILL)
        built = [int(s) for s in rest_of_output(child)[0].split()[1::2]]
        acknowledged = built[-1] if built else previous
        in_flight = seeds[len(built)] if len(built) < len(seeds) else None
        seed = _which_seed(path)
        assert seed in (acknowledged, in_flight), (seed, acknowledged, in_flight)
        seen["acknowledged" if seed == acknowledged else "in flight"] += 1
        previous = seed
    build(path, 999)
    _assert_no_debris(path)
    return seen


def test_kill_9_at_random_instants_of_rebuilds(tmp_path: Path) -> None:
    _kill_loop(tmp_path, kills=3)


@pytest.mark.slow
def test_kill_9_at_a_hundred_random_instants(tmp_path: Path) -> None:
    seen = _kill_loop(tmp_path, kills=110)
    print(f"110 kills: {seen}")
