"""What a server promises about writes: an acknowledged write survives kill -9 of the
server and is searchable after a restart; a search sees committed generations only,
and every write acknowledged before it began."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from sie_index import Index
from sie_index.client import Client
from storage.verify import verify_index
from tests.server_process import ServerProcess
from tests.test_server import DIM, build

WRITERS = 3


def doc_vectors(ext: str) -> np.ndarray:
    seed = zlib.crc32(ext.encode())
    v = np.random.default_rng(seed).standard_normal((5, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_until_gone(url: str, prefix: str, acked: list[str], lock: threading.Lock) -> None:
    """Single-document adds until the server is gone; each acknowledged id is kept."""
    with Client(url, deadline=1.0) as client:
        for i in range(100_000):
            ext = f"{prefix}-{i}"
            try:
                client.add_vectors([ext], [doc_vectors(ext)], metadata=[{"w": prefix}])
            except Exception:
                return
            with lock:
                acked.append(ext)


def kill_during_writes(path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    acked: list[str] = []
    lock = threading.Lock()
    server = ServerProcess(path, "--batch-window-ms", "10")
    try:
        for round_ in range(kills):
            url = server.start()
            threads = [
                threading.Thread(
                    target=write_until_gone, args=(url, f"r{round_}w{w}", acked, lock), daemon=True
                )
                for w in range(WRITERS)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            server.kill()
            for t in threads:
                t.join(timeout=60)
                assert not t.is_alive()
            assert verify_index(path).ok
        assert len(acked) > kills  # writes were acknowledged before each kill
        url = server.start()
        with Index.open(path) as index:
            assert set(index.lookup(acked)) == set(acked), "an acknowledged write was lost"
        with Client(url) as client:
            for lo in range(0, len(acked), 100):
                chunk = acked[lo : lo + 100]
                hits = client.search_batch([doc_vectors(e) for e in chunk], k=1)
                assert [h[0].external_id for h in hits] == chunk
    finally:
        server.close()


def test_kill_9_during_acknowledged_writes_loses_none(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    build(path, 40)
    kill_during_writes(path, kills=3, seed=0)


@pytest.mark.slow
def test_kill_9_thirty_times_during_acknowledged_writes_loses_none(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    build(path, 40)
    kill_during_writes(path, kills=30, seed=1)


def test_searches_during_writes_see_committed_prefixes_and_every_ack(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    build(path, 40)
    new = [f"n-{i:03d}" for i in range(40)]
    acked: list[str] = []
    with ServerProcess(path, "--batch-window-ms", "0") as server:

        def write() -> None:
            with Client(server.url) as client:
                for ext in new:  # one at a time: each commit adds the next id
                    client.add_vectors([ext], [doc_vectors(ext)])
                    acked.append(ext)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        seen_before = 0
        searches = 0
        with Client(server.url) as client:
            # Searches go on until the writer is done and at least six ran; the last one
            # starts after the final acknowledgement, so it must see every add.
            while True:
                finished = not writer.is_alive()
                acked_before = len(acked)
                hits = client.search(doc_vectors("probe"), k=len(new), ids=new)
                acked_after = len(acked)
                got = sorted(h.external_id for h in hits)
                # a committed generation holds a prefix of the adds ...
                assert got == new[: len(got)]
                # ... holding every acknowledged one, and at most the one being answered
                assert acked_before <= len(got) <= acked_after + 1
                # ... and the snapshot never goes back
                assert len(got) >= seen_before
                seen_before = len(got)
                searches += 1
                if finished and searches >= 6:
                    break
        writer.join(timeout=60)
        assert not writer.is_alive() and len(acked) == len(new)
        assert seen_before == len(new) and searches >= 6


def test_writes_within_the_window_share_one_commit_and_a_bad_one_fails_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "idx"
    ids, _ = build(path, 40)
    with ServerProcess(path, "--batch-window-ms", "400") as server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url) as http:
                bodies = [[f"b-{i}"] for i in range(6)] + [[ids[0]]]  # the last: already there
                adds = [
                    {"documents": [{"id": e, "vectors": doc_vectors(e).tolist()} for e in b]}
                    for b in bodies
                ]
                return await asyncio.gather(*(http.post("/documents", json=a) for a in adds))

        *good, bad = asyncio.run(burst())
        assert [r.status_code for r in good] == [200] * 6
        assert len({r.json()["generation"] for r in good}) == 1  # one commit
        assert bad.status_code == 422 and bad.json()["error"]["details"]["doc_id"] == ids[0]
        metrics = httpx.get(server.url + "/metrics").text
        assert "sie_index_commit_requests_bucket" in metrics
        with Client(server.url) as client:
            hits = client.search_batch([doc_vectors(f"b-{i}") for i in range(6)], k=1)
            assert [h[0].external_id for h in hits] == [f"b-{i}" for i in range(6)]
