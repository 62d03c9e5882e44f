"""Text search through the default encoder, in-process and served: the LangChain and
LlamaIndex retrievers over an Index, a Client and an AsyncClient (the real packages),
and documents added as text through the server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document as LcDocument
from llama_index.core.schema import NodeWithScore, TextNode

from sie_index import Document, Index, UpdateReport
from sie_index.client import AsyncClient, Client
from sie_index.integrations.langchain import SieIndexRetriever as LangChainRetriever
from sie_index.integrations.llama_index import SieIndexRetriever as LlamaRetriever
from tests.server_process import ServerProcess

DOCS = [
    Document(id="apt", text="apt installs Debian packages", metadata={"section": "admin"}),
    Document(id="gimp", text="GIMP edits and resizes photos", metadata={"section": "graphics"}),
    Document(id="nginx", text="nginx is a fast web server", metadata={"section": "net"}),
    Document(id="curl", text="curl downloads files over HTTP", metadata={"section": "net"}),
]
QUERY = "resize a picture"


@pytest.fixture(scope="module")
def text_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "idx"
    Index.build(path, DOCS, index_kind="flat", progress=False).close()
    return path


@pytest.fixture(scope="module")
def local(text_index: Path) -> Iterator[Index]:
    with Index.open(text_index) as index:
        yield index


@pytest.fixture(scope="module")
def server(text_index: Path) -> Iterator[ServerProcess]:
    with ServerProcess(text_index, "--batch-window-ms", "5") as served:  # waits for /ready
        yield served


def test_langchain_retriever_over_an_index_a_client_and_an_async_client(
    local: Index, server: ServerProcess
) -> None:
    expected = local.search(QUERY, 2, text=True, metadata=True)
    with Client(server.url) as client:
        for source in (local, client):
            docs = LangChainRetriever(index=source, k=2).invoke(QUERY)
            assert all(isinstance(d, LcDocument) for d in docs)
            assert [d.id for d in docs] == [h.external_id for h in expected] == ["gimp", docs[1].id]
            assert [d.metadata["score"] for d in docs] == [h.score for h in expected]
            assert docs[0].page_content == DOCS[1].text
            assert docs[0].metadata["section"] == "graphics"
            net = LangChainRetriever(
                index=source, k=4, search_kwargs={"filter": {"section": "net"}}
            )
            assert {d.id for d in net.invoke(QUERY)} == {"nginx", "curl"}
        in_thread = asyncio.run(LangChainRetriever(index=client, k=2).ainvoke(QUERY))
        assert [d.id for d in in_thread] == [d.id for d in docs]

    async def through_async_client() -> list[LcDocument]:
        async with AsyncClient(server.url) as aclient:
            return await LangChainRetriever(index=aclient, k=2).ainvoke(QUERY)

    assert asyncio.run(through_async_client()) == docs


def test_llama_index_retriever_over_an_index_a_client_and_an_async_client(
    local: Index, server: ServerProcess
) -> None:
    expected = local.search(QUERY, 3, text=True, metadata=True)
    with Client(server.url) as client:
        for source in (local, client):
            nodes = LlamaRetriever(source, k=3).retrieve(QUERY)
            assert all(isinstance(n, NodeWithScore) for n in nodes)
            assert all(isinstance(n.node, TextNode) for n in nodes)
            assert [n.node.node_id for n in nodes] == [h.external_id for h in expected]
            assert [n.score for n in nodes] == [h.score for h in expected]
            assert nodes[0].node.metadata == {"section": "graphics"}
            assert nodes[0].node.get_content() == DOCS[1].text

    async def through_async_client() -> list[NodeWithScore]:
        async with AsyncClient(server.url) as aclient:
            return await LlamaRetriever(aclient, k=3).aretrieve(QUERY)

    got = asyncio.run(through_async_client())
    assert [(n.node.node_id, n.score) for n in got] == [(h.external_id, h.score) for h in expected]


def test_text_queries_and_text_documents_through_the_server(
    local: Index, server: ServerProcess
) -> None:
    with Client(server.url) as client:
        for q in ("a linter for python", "serve web pages", QUERY):
            assert client.search(q, k=2, text=True) == local.search(q, k=2, text=True)
        report = client.add([Document(id="ruff", text="ruff lints Python code quickly")])
        assert isinstance(report, UpdateReport) and report.change.added == 1
        assert report.encode_seconds > 0
        assert client.search("python code checker", k=1)[0].external_id == "ruff"
        local.refresh()
        q = "python code checker"
        assert client.search(q, k=3, metadata=True) == local.search(q, k=3, metadata=True)


def test_the_readme_serve_example_runs_as_written(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (code,) = [b for b in blocks if "sie_index.client" in b]
    exec(compile(code.replace("http://127.0.0.1:8000", server.url), "README.md", "exec"), {})
    hits, same = capsys.readouterr().out.splitlines()
    assert "'gimp'" in hits and same == "True"
