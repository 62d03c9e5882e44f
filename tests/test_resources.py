"""Resources a machine runs out of: a full disk, a read-only folder, file descriptors,
and an index closed under its users. Each is a typed error, and the index is intact.

The full and read-only disks are real: a small tmpfs mounted for the test (root
only; skipped where mounting is not allowed). Descriptor limits are real too: a
child process lowers its own ``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sie_index import (
    Index,
    IndexClosed,
    ReadOnlyIndex,
    SieIndexError,
    StorageFull,
    TooManyOpenFiles,
)
from storage.merging import MergePolicy
from storage.segment import PendingDoc
from storage.store_writer import StoreWriter
from storage.verify import verify_index
from tests.conftest import synthetic_corpus

ROOT = Path(__file__).resolve().parents[1]
DIM = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _ids_of(path: Path) -> list[str]:
    with Index.open(path) as index:
        return sorted(index.external_ids())


def test_a_full_disk_is_storage_full_and_the_index_is_intact(small_disk: Path) -> None:
    ids, vectors = synthetic_corpus(40, DIM, seed=1)
    path = small_disk / "idx"
    Index.from_vectors(path, ids, vectors, index_kind="flat").close()
    before = _ids_of(path)
    big = [
        np.random.default_rng(i).standard_normal((2000, DIM)).astype(np.float32) for i in range(60)
    ]
    with Index.open(path) as index, pytest.raises(StorageFull, match=str(small_disk)):
        for n, v in enumerate(big):
            index.add_vectors([f"big-{n}"], [v])
    # what committed before the disk filled is there, and nothing else changed
    after = _ids_of(path)
    assert set(before) <= set(after)
    assert all(i in before or i.startswith("big-") for i in after)
    assert verify_index(path).ok


def test_a_build_on_a_full_disk_is_storage_full_and_leaves_no_index(small_disk: Path) -> None:
    ids, vectors = synthetic_corpus(300, DIM, seed=2, min_tokens=200, max_tokens=300)
    path = small_disk / "idx"
    with pytest.raises(StorageFull):
        Index.from_vectors(path, ids, vectors, index_kind="flat")
    assert not (path / "CURRENT").exists()


def test_a_read_only_folder_searches_and_refuses_writes_typed(small_disk: Path) -> None:
    ids, vectors = synthetic_corpus(40, DIM, seed=3)
    path = small_disk / "idx"
    Index.from_vectors(path, ids, vectors, index_kind="flat").close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with Index.open(path) as index:
        assert index.search(vectors[0], k=3)[0].external_id == ids[0]
        with pytest.raises(ReadOnlyIndex, match=str(path)):
            index.add_vectors(["new"], [vectors[1]])
        with pytest.raises(ReadOnlyIndex):
            index.delete([ids[0]])
    assert _ids_of(path) == sorted(ids)


def _child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_running_out_of_descriptors_is_too_many_open_files(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(20, DIM, seed=4)
    path = tmp_path / "idx"
    with Index.from_vectors(path, ids[:5], vectors[:5], index_kind="flat") as index:
        for i in range(5, 20):  # a segment each: merged, but more files than 12
            index.add_vectors([ids[i]], [vectors[i]])
    out = _child(
        f"""
        import os, resource
        from sie_index import Index, TooManyOpenFiles, CorruptIndex
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 3, used + 3))
        try:
            Index.open({str(path)!r})
        except TooManyOpenFiles as exc:
            print("typed", type(exc).__name__)
        except CorruptIndex as exc:
            print("corrupt", exc)
        """
    )
    assert out.stdout.strip() == "typed TooManyOpenFiles", out.stdout + out.stderr
    assert TooManyOpenFiles.__mro__[1].__name__ == "StorageError"


def _add_one_by_one(path: Path, n: int, policy: MergePolicy) -> None:
    ids, vectors = synthetic_corpus(n, DIM, seed=5, min_tokens=2, max_tokens=6)
    Index.from_vectors(path, ids[:1], vectors[:1], index_kind="flat").close()
    with StoreWriter(path, merge_policy=policy) as writer:
        for ext, v in zip(ids[1:], vectors[1:], strict=True):
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
            writer.add([[PendingDoc(external_id=ext, text=ext, metadata=None, vectors=v)]])


def _opens_under(path: Path, limit: int) -> str:
    out = _child(
        f"""
        import resource
        import numpy as np
        from sie_index import Index
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
        with Index.open({str(path)!r}) as index:
            q = np.ones((2, {DIM}), np.float32) / {DIM} ** 0.5
            hits = index.search(q, k=5, exact_threshold=0)
            print(len(index), index.info()["segments"], len(hits))
        """
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_many_single_document_adds_merge_and_open_under_a_low_descriptor_limit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "idx"
    # a small policy, so 400 adds go through several tiers of merges
    _add_one_by_one(path, 400, MergePolicy(factor=4, min_tokens=8, max_segments=8))
    documents, segments, hits = map(int, _opens_under(path, 64).split())
    assert documents == 400 and hits == 5
    assert segments <= 1 + 8
    assert verify_index(path).ok


@pytest.mark.slow
def test_ten_thousand_single_document_adds_open_under_1024_descriptors(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _add_one_by_one(path, 10_000, MergePolicy())
    documents, segments, hits = map(int, _opens_under(path, 1024).split())
    assert documents == 10_000 and hits == 5
    assert segments <= 1 + MergePolicy().max_segments


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_closed_index_says_so_and_a_dropped_one_lets_its_files_go(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(30, DIM, seed=6)
    path = tmp_path / "idx"
    Index.from_vectors(path, ids, vectors, index_kind="flat").close()
    gc.collect()
    baseline = _open_fds()
    index = Index.open(path)
    assert _open_fds() > baseline
    index.close()
    assert _open_fds() == baseline
    for call in (
        lambda: index.search(vectors[0]),
        lambda: index.search_batch([vectors[0]]),
        lambda: len(index),
        lambda: index.info(),
        lambda: index.add_vectors(["x"], [vectors[0]]),
        lambda: index.refresh(),
    ):
        with pytest.raises(IndexClosed, match="closed"):
            call()
    assert "closed" in repr(index)
    dropped = Index.open(path)
    dropped.search(vectors[0])
    del dropped
    assert _open_fds() == baseline


def test_close_while_threads_search_gives_results_or_index_closed(tmp_path: Path) -> None:
    ids, vectors = synthetic_corpus(200, DIM, seed=7)
    path = tmp_path / "idx"
    Index.from_vectors(path, ids, vectors, index_kind="flat").close()
    index = Index.open(path)
    errors: list[BaseException] = []
    results: list[int] = []
    start = threading.Barrier(5)

    def search() -> None:
        start.wait()
        for n in range(200):
            try:
                results.append(len(index.search(vectors[n % 200], k=5, exact_threshold=0)))
            except IndexClosed:
                return
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait()
    index.close()
    for t in threads:
        t.join()
    assert errors == []
    assert all(r == 5 for r in results)
    with pytest.raises(SieIndexError):
        index.search(vectors[0])


def test_a_merge_that_fails_after_an_add_leaves_the_add_committed_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk in the merge an add runs after its commit (injected: a real disk
    cannot be made to fill at that one instant) does not report the add as failed."""
    import errno

    import storage.store_writer as store_writer

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    ids, vectors = synthetic_corpus(10, DIM, seed=9)
    path = tmp_path / "idx"
    Index.from_vectors(path, ids[:2], vectors[:2], index_kind="flat").close()
    monkeypatch.setattr(store_writer, "copy_segment", full)
    policy = MergePolicy(factor=2, min_tokens=1, max_segments=2)
    with StoreWriter(path, merge_policy=policy) as writer:
        for ext, v in zip(ids[2:], vectors[2:], strict=True):
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
            report = writer.add([[PendingDoc(external_id=ext, text=ext, metadata=None, vectors=v)]])
            assert report.added == 1
    assert _ids_of(path) == sorted(ids)
    assert verify_index(path).ok
