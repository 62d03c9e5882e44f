"""The Python client against a real server: exactly what ``Index`` returns locally, the
library's report types, its typed errors, and retries only of what may be retried."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sie_index.errors
import storage
from sie_index import (
    ChangeReport,
    DimensionMismatch,
    Document,
    Index,
    IndexLocked,
    IndexWriter,
    InvalidInput,
)
from sie_index.client import _TYPED, AsyncClient, Client, ServerError
from sie_index.server.errors_http import TABLE
from tests.conftest import synthetic_queries
from tests.server_process import ServerProcess
from tests.test_server import build

SETTINGS: list[dict[str, Any]] = [
    {},
    {"k": 5, "text": True, "metadata": True},
    {"k": 7, "filter": {"group": "even"}},
    {"k": 3, "ids": [f"doc-{i:05d}" for i in range(0, 60, 3)], "metadata": True},
    {"k": 4, "filter": {"n": {"$gte": 10, "$lt": 50}}, "exact_threshold": 0, "k_token": 8},
    {"k": 2, "explain": True},
    {"k": 6, "n_rerank": 8, "k_token": 4, "exact_threshold": 0},
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[Any]]]:
    path = tmp_path_factory.mktemp("client") / "idx"
    _, vectors = build(path, 150, seed=5)
    with ServerProcess(path, "--batch-window-ms", "5") as server:
        yield server, vectors


@pytest.mark.parametrize("settings", SETTINGS)
def test_the_client_returns_what_the_index_returns(
    served: tuple[ServerProcess, list[Any]], settings: dict[str, Any]
) -> None:
    server, vectors = served
    queries = synthetic_queries(vectors, 4, seed=9)
    with Index.open(server.index) as local, Client(server.url) as client:
        for q in queries:
            assert client.search(q, **settings) == local.search(q, **settings)
        assert client.search_batch(queries, **settings) == local.search_batch(queries, **settings)

        async def both() -> list[Any]:
            async with AsyncClient(server.url) as aclient:
                return [
                    await aclient.search(queries[0], **settings),
                    await aclient.search_batch(queries, **settings),
                ]

        one, many = asyncio.run(both())
        assert one == local.search(queries[0], **settings)
        assert many == local.search_batch(queries, **settings)


def test_client_writes_return_the_library_reports(served: tuple[ServerProcess, list[Any]]) -> None:
    server, vectors = served
    with Client(server.url) as client:
        report = client.add_vectors(["c-1", "c-2"], [vectors[0], vectors[1]], texts=["a", None])
        assert isinstance(report, ChangeReport) and report.added == 2
        report = client.add_vectors(["c-1"], [vectors[2]], metadata=[{"x": 1}], replace=True)
        assert (report.added, report.replaced) == (0, 1)
        hit = client.search(vectors[2], k=1, ids=["c-1"], metadata=True)[0]
        assert hit.metadata == {"x": 1}
        assert client.delete(["c-1", "nope"]).deleted == 1
        assert client.delete_where(ids=["c-2"]).deleted == 1
        compacted = client.compact()
        assert isinstance(compacted, ChangeReport) and compacted.deleted == 0
        assert client.info()["index"]["segments"] == 1
        with pytest.raises(InvalidInput, match="doc-00001") as caught:
            client.add_vectors(["doc-00001"], [vectors[1]])
        assert caught.value.doc_id == "doc-00001"
        with pytest.raises(DimensionMismatch):
            client.search(vectors[0][:, :-1])
        with pytest.raises(InvalidInput, match="precomputed"):
            client.add([Document(id="t", text="text needs an encoder")])
        with Index.open(server.index) as local:
            q = synthetic_queries(vectors, 1, seed=4)[0]
            assert client.search(q, k=10) == local.search(q, k=10)


async def _async_writes(url: str, vectors: list[Any]) -> tuple[Any, ...]:
    async with AsyncClient(url) as client:
        added = await client.add_vectors(["a-1"], [vectors[3]])
        deleted = await client.delete(["a-1"])
        return added, deleted


def test_the_async_client_writes_too(served: tuple[ServerProcess, list[Any]]) -> None:
    server, vectors = served
    added, deleted = asyncio.run(_async_writes(server.url, vectors))
    assert (added.added, deleted.deleted) == (1, 1)


def test_the_client_knows_every_library_error_the_server_sends() -> None:
    library = {getattr(sie_index.errors, n) for n in sie_index.errors.__all__}
    library |= {getattr(storage, n) for n in storage.__all__ if n[0].isupper()}
    for error, row in TABLE.items():
        if error in library and error is not sie_index.errors.SieIndexError:
            assert _TYPED[row.code] is error, row.code
        elif row.code not in ("limit",):
            assert row.code not in _TYPED, row.code  # a ServerError, with status and code
    assert _TYPED["limit"] is InvalidInput


def test_the_clients_take_a_list_of_texts_as_a_batch() -> None:
    import httpx

    sent: list[tuple[str, bytes]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, request.content))
        hit = {"id": "vim", "doc_id": 3, "score": 1.5}
        if request.url.path == "/search/batch":
            return httpx.Response(200, json={"hits": [[hit], [hit]]})
        return httpx.Response(200, json={"hits": [hit]})

    with Client("http://sie", transport=httpx.MockTransport(answer)) as client:
        batch = client.search(["web server", "ssh keys"], k=1)
        one = client.search("ssh keys", k=1)
        with pytest.raises(InvalidInput, match="a list of texts"):
            client.search([])

    async def run_async() -> Any:
        async with AsyncClient("http://sie", transport=httpx.MockTransport(answer)) as aclient:
            return await aclient.search(("web server", "ssh keys"))

    abatch = asyncio.run(run_async())
    assert (
        [[h.id for h in hits] for hits in batch]
        == [["vim"], ["vim"]]
        == [[h.id for h in hits] for hits in abatch]
    )
    assert [h.id for h in one] == ["vim"]
    paths = [path for path, _ in sent]
    assert paths == ["/search/batch", "/search", "/search/batch"]
    assert json.loads(sent[0][1])["queries"] == ["web server", "ssh keys"]


def test_the_client_retries_503_within_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _, vectors = build(path, 20)
    with ServerProcess(path) as server:
        with IndexWriter(path), Client(server.url, deadline=0.5) as client:
            t0 = time.monotonic()
            with pytest.raises(IndexLocked):
                client.add_vectors(["later"], [vectors[1]])
            assert time.monotonic() - t0 < 3
        writer = IndexWriter(path)
        threading.Timer(1.5, writer.close).start()
        t0 = time.monotonic()
        with Client(server.url, deadline=20) as client:
            assert client.add_vectors(["late"], [vectors[0]]).added == 1
        assert time.monotonic() - t0 >= 1.4  # it waited for the other writer
    with Client(server.url, deadline=0.5) as client:  # the server is gone
        with pytest.raises(ServerError) as caught:
            client.search(vectors[0])
        assert caught.value.code == "unreachable"


def test_a_served_sharded_index_answers_and_changes_as_it_does_locally(tmp_path: Path) -> None:
    """`sie-index serve` on a sharded folder: the same searches as the local
    ShardedIndex, and writes routed to their shards."""
    from sie_index import ShardedIndex
    from tests.conftest import synthetic_corpus

    ids, vectors = synthetic_corpus(120, 16, seed=4)
    metadata = [{"group": "even" if i % 2 == 0 else "odd"} for i in range(len(ids))]
    path = tmp_path / "sharded"
    ShardedIndex.from_vectors(
        path, ids, vectors, shards=3, metadata=metadata, index_kind="flat"
    ).close()
    queries = synthetic_queries(vectors, 4, seed=9)
    with ServerProcess(path, "--batch-window-ms", "5") as server, Client(server.url) as client:
        with ShardedIndex.open(path) as local:
            for settings in ({}, {"k": 5, "filter": {"group": "even"}, "metadata": True}):
                for q in queries:
                    got = client.search(q, **settings)
                    want = local.search(q, **settings)
                    assert [(h.external_id, h.score, h.shard) for h in got] == [
                        (h.external_id, h.score, h.shard) for h in want
                    ]
        client.add_vectors(["new-one"], [vectors[0]])
        assert client.delete([ids[1]]).deleted == 1
        assert client.search(vectors[0], k=1)[0].external_id in ("new-one", ids[0])
    with ShardedIndex.open(path) as after:
        assert len(after) == 120 and after.verify()["ok"]
