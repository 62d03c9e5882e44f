"""``sie-index serve`` as a client meets it: a real server process on 127.0.0.1.

Every endpoint, every error the server can be made to give from outside (and
the whole error table, row by row), keys, limits, request ids and the log.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sie_index import Index, IndexWriter
from sie_index.server.errors_http import TABLE, LimitExceeded, UnknownDocument, http_error
from tests.conftest import synthetic_corpus
from tests.server_process import ServerProcess
from tests.test_resources import small_disk  # noqa: F401 (a fixture)

DIM = 16
N_DOCS = 120
WRITE_KEY = "w" * 20 + "-write-key"
READ_KEY = "r" * 20 + "-read-key"
ENDPOINTS = {
    ("/search", "post"),
    ("/search/batch", "post"),
    ("/documents", "post"),
    ("/documents", "delete"),
    ("/documents/delete", "post"),
    ("/compact", "post"),
    ("/info", "get"),
    ("/health", "get"),
    ("/ready", "get"),
    ("/metrics", "get"),
}
LIMITS = ["k=50", "batch=4", "query_tokens=32", "documents=10", "filter_bytes=300"]
LIMITS += ["query_chars=40", "body_bytes=200000"]


def build(path: Path, n: int = N_DOCS, seed: int = 3) -> tuple[list[str], list[np.ndarray]]:
    ids, vectors = synthetic_corpus(n, DIM, seed=seed)
    metadata = [{"n": i, "group": "even" if i % 2 == 0 else "odd"} for i in range(n)]
    texts = [f"the text of {i}" for i in ids]
    Index.from_vectors(
        path, ids, vectors, texts=texts, metadata=metadata, index_kind="flat"
    ).close()
    return ids, vectors


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("served") / "idx"
    build(path)
    args = ["--batch-window-ms", "5"] + [a for lim in LIMITS for a in ("--limit", lim)]
    with ServerProcess(path, *args) as server:
        yield server


def vec(seed: int, rows: int = 4) -> list[list[float]]:
    v = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    out: list[list[float]] = (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()
    return out


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert "Traceback" not in r.text
    err: dict[str, Any] = body["error"]
    return err


def test_openapi_lists_every_endpoint_and_docs_are_served(served: ServerProcess) -> None:
    doc = httpx.get(served.url + "/openapi.json").json()
    found = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert found == ENDPOINTS
    schemes = doc["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    assert "ErrorOut" in doc["components"]["schemas"]
    assert "text/html" in httpx.get(served.url + "/docs").headers["content-type"]


def test_health_ready_info(served: ServerProcess) -> None:
    assert httpx.get(served.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(served.url + "/ready").json()
    assert ready["status"] == "ready" and ready["encoder"] == "none"  # a vectors-only index
    info = httpx.get(served.url + "/info").json()
    assert info["index"]["documents"] >= N_DOCS and info["index"]["dim"] == DIM
    assert info["server"]["limits"]["max_k"] == 50 and info["server"]["auth"] is False


def test_search_vectors_text_metadata_explain_and_batch(served: ServerProcess) -> None:
    q = vec(1)
    body = {"vectors": q, "k": 3, "text": True, "metadata": True, "explain": True}
    hits = httpx.post(served.url + "/search", json=body).json()["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert set(hits[0]) == {"id", "doc_id", "score", "text", "metadata", "explain"}
    assert hits[0]["text"] == f"the text of {hits[0]['id']}"
    assert len(hits[0]["explain"]) == len(q)
    plain = httpx.post(served.url + "/search", json={"vectors": q, "k": 3}).json()["hits"]
    assert set(plain[0]) == {"id", "doc_id", "score"}  # text and metadata on request only
    flt = {"vectors": q, "k": 5, "filter": {"group": "odd"}, "metadata": True}
    odd = httpx.post(served.url + "/search", json=flt).json()["hits"]
    assert odd and all(h["metadata"]["group"] == "odd" for h in odd)
    batch = {"queries": [q, vec(2)], "k": 2}
    both = httpx.post(served.url + "/search/batch", json=batch).json()["hits"]
    assert [len(h) for h in both] == [2, 2] and both[0][0]["id"] == plain[0]["id"]


def test_writes_are_visible_to_the_next_search(served: ServerProcess) -> None:
    url = served.url
    new = {"id": "w-1", "vectors": vec(10), "text": "new", "metadata": {"group": "new"}}
    r = httpx.post(url + "/documents", json={"documents": [new]})
    assert r.status_code == 200 and r.json()["added"] == 1
    generation = r.json()["generation"]
    top = httpx.post(url + "/search", json={"vectors": vec(10), "k": 1}).json()["hits"][0]
    assert top["id"] == "w-1"
    again = {**new, "vectors": vec(11)}
    r = httpx.post(url + "/documents", json={"documents": [again], "mode": "upsert"})
    assert r.json()["replaced"] == 1 and r.json()["generation"] > generation
    top = httpx.post(url + "/search", json={"vectors": vec(11), "k": 1}).json()["hits"][0]
    assert top["id"] == "w-1"
    r = httpx.request("DELETE", url + "/documents", json={"ids": ["w-1", "never-there"]})
    assert r.json()["deleted"] == 1
    hits = httpx.post(url + "/search", json={"vectors": vec(11), "k": 5}).json()["hits"]
    assert "w-1" not in {h["id"] for h in hits}
    r = httpx.post(url + "/documents/delete", json={"filter": {"n": {"$gte": N_DOCS - 2}}})
    assert r.json()["deleted"] == 2
    r = httpx.post(url + "/compact", json={})
    assert r.status_code == 200 and r.json()["documents"] == N_DOCS - 2
    assert httpx.get(url + "/info").json()["index"]["segments"] == 1


def test_metrics_count_requests_and_describe_the_index(served: ServerProcess) -> None:
    httpx.post(served.url + "/search", json={"vectors": vec(1), "k": 1})
    httpx.post(served.url + "/search", json={"k": 1})  # a 422
    text = httpx.get(served.url + "/metrics").text
    assert 'sie_index_requests_total{endpoint="/search",method="POST",status="200"}' in text
    assert 'sie_index_requests_total{endpoint="/search",method="POST",status="422"}' in text
    assert 'sie_index_request_seconds_bucket{endpoint="/search",le="0.1"}' in text
    for gauge in ("documents", "segments", "generation", "tokens", "write_queue_depth"):
        assert f"\nsie_index_{gauge} " in text, gauge


def _post(url: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(url + path, content=json.dumps(body).encode(), headers=_JSON)


_JSON = {"content-type": "application/json"}
BAD_REQUESTS = [
    ("/search", {"k": 3}, 422, "invalid_input"),  # no query
    ("/search", {"vectors": [[0.1] * DIM], "k": 3, "nope": 1}, 422, "invalid_input"),
    ("/search", {"vectors": [[0.1] * DIM], "k": 0}, 422, "invalid_input"),
    ("/search", {"vectors": [[0.1] * DIM], "k": 51}, 422, "limit"),
    ("/search", {"vectors": [[0.1] * (DIM - 1)]}, 422, "dimension_mismatch"),
    ("/search", {"vectors": [[0.1] * DIM, [0.1]]}, 422, "invalid_input"),  # ragged
    ("/search", {"vectors": [[0.1] * DIM] * 33}, 422, "limit"),
    ("/search", {"query": "x" * 41}, 422, "limit"),
    ("/search", {"query": "a text query"}, 422, "invalid_input"),  # vectors-only index
    ("/search", {"vectors": [[0.1] * DIM], "filter": {"a": "x" * 400}}, 422, "limit"),
    ("/search", {"vectors": [[0.1] * DIM], "filter": {"$nope": 1}}, 422, "invalid_input"),
    ("/search", {"vectors": [[0.1] * DIM], "filter_sql": "1 = 1"}, 403, "forbidden"),
    ("/search/batch", {"queries": [[[0.1] * DIM]] * 5}, 422, "limit"),
    ("/documents", {"documents": [{"id": "x", "vectors": [[0.0] * DIM]}]}, 422, "invalid_input"),
    ("/documents", {"documents": [{"id": "doc-00000", "vectors": vec(1)}]}, 422, "invalid_input"),
    ("/documents", {"documents": [{"id": f"d{i}", "text": "t"} for i in range(11)]}, 422, "limit"),
    ("/documents", {"documents": [{"id": "t", "text": "text only"}]}, 422, "invalid_input"),
    ("/documents/delete", {}, 422, "invalid_input"),  # no filter: would delete everything
    ("/nowhere", {}, 404, "not_found"),
]


@pytest.mark.parametrize(("path", "body", "status", "code"), BAD_REQUESTS)
def test_bad_requests_get_typed_json_errors(
    served: ServerProcess, path: str, body: Any, status: int, code: str
) -> None:
    r = _post(served.url, path, body)
    assert r.status_code == status, r.text
    err = error_of(r)
    assert err["code"] == code, err
    if code == "limit":
        assert err["details"]["value"] > err["details"]["max"]


def test_nan_malformed_json_large_bodies_and_unknown_ids(served: ServerProcess) -> None:
    nan = b'{"vectors": [[NaN' + b", 0.1" * (DIM - 1) + b"]]}"
    r = httpx.post(served.url + "/search", content=nan, headers=_JSON)
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input"
    r = httpx.post(served.url + "/search", content=b"{not json", headers=_JSON)
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input"
    big = b'{"query": "' + b"x" * 300_000 + b'"}'
    r = httpx.post(served.url + "/search", content=big, headers=_JSON)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"query": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    r = httpx.post(served.url + "/search", content=chunks(), headers=_JSON)
    assert r.status_code == 413
    body = {"ids": ["doc-00001", "no-such-doc"], "missing": "error"}
    r = httpx.request("DELETE", served.url + "/documents", json=body)
    assert r.status_code == 404 and error_of(r)["details"]["ids"] == ["no-such-doc"]
    hit = httpx.post(served.url + "/search", json={"vectors": vec(3), "ids": ["doc-00001"]})
    assert [h["id"] for h in hit.json()["hits"]] == ["doc-00001"]  # nothing was deleted


def test_request_ids_are_echoed_and_every_request_is_one_log_line(served: ServerProcess) -> None:
    r = httpx.get(served.url + "/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    bad = httpx.get(served.url + "/health", headers={"X-Request-ID": "no spaces\tplease"})
    made = bad.headers["x-request-id"]
    assert made != "no spaces\tplease" and len(made) == 32
    r = _post(served.url, "/search", {"k": 3})
    rid = r.headers["x-request-id"]
    for _ in range(100):
        lines = [ln for ln in served.lines if rid in ln]
        if lines:
            break
        asyncio.run(asyncio.sleep(0.02))
    (line,) = lines
    logged = json.loads(line.split(": ", 1)[1])
    assert logged["status"] == 422 and logged["endpoint"] == "/search" and logged["ms"] >= 0


@pytest.mark.parametrize("error", sorted(TABLE, key=lambda c: c.__name__))
def test_every_row_of_the_error_table(error: type[BaseException]) -> None:
    special = {
        LimitExceeded: lambda: LimitExceeded("k", 2, 1),
        UnknownDocument: lambda: UnknownDocument(["x"]),
    }
    exc = special.get(error, lambda: error("boom"))()
    status, body, headers = http_error(exc, "rid")
    row = TABLE[error]
    assert (status, json.loads(body)["error"]["code"]) == (row.status, row.code)
    assert ("Retry-After" in headers) == row.retry == (status == 503)


def test_an_unexpected_error_is_500_with_the_request_id_and_no_traceback() -> None:
    status, body, _ = http_error(KeyError("secret internals"), "rid-9")
    error = json.loads(body)["error"]
    assert status == 500 and error["code"] == "internal_error"
    assert "rid-9" in error["message"] and "secret" not in body.decode()


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[ServerProcess]:
    path = tmp_path / "idx"
    build(path, 30)
    keys = tmp_path / "keys"
    keys.write_text(f"# the writer\nwrite:{WRITE_KEY}\n")
    env = {"SIE_INDEX_API_KEYS": f"read:{READ_KEY}"}
    with ServerProcess(path, "--api-key-file", str(keys), env=env) as server:
        yield server


def test_keys_read_only_and_read_write(keyed: ServerProcess) -> None:
    url = keyed.url
    search = {"vectors": vec(1), "k": 1}
    add = {"documents": [{"id": "by-key", "vectors": vec(5)}]}
    assert httpx.get(url + "/health").status_code == 200  # no key needed
    r = httpx.post(url + "/search", json=search)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert error_of(r)["code"] == "unauthorized"
    wrong = {"Authorization": f"Bearer {READ_KEY}x"}
    assert httpx.post(url + "/search", json=search, headers=wrong).status_code == 401
    for headers in ({"Authorization": f"Bearer {READ_KEY}"}, {"X-API-Key": READ_KEY}):
        assert httpx.post(url + "/search", json=search, headers=headers).status_code == 200
    reader = {"Authorization": f"Bearer {READ_KEY}"}
    r = httpx.post(url + "/documents", json=add, headers=reader)
    assert r.status_code == 403 and error_of(r)["code"] == "forbidden"
    assert httpx.get(url + "/metrics").status_code == 401
    assert httpx.get(url + "/metrics", headers=reader).status_code == 200
    writer = {"X-API-Key": WRITE_KEY}
    assert httpx.post(url + "/documents", json=add, headers=writer).status_code == 200
    assert httpx.post(url + "/compact", headers=writer).status_code == 200
    assert WRITE_KEY not in "\n".join(keyed.lines) and READ_KEY not in "\n".join(keyed.lines)


def test_another_writer_makes_writes_503_with_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    build(path, 30)
    with ServerProcess(path) as server:
        add = {"documents": [{"id": "late", "vectors": vec(7)}]}
        with IndexWriter(path):
            r = httpx.post(server.url + "/documents", json=add)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert error_of(r)["code"] == "index_locked"
        assert httpx.post(server.url + "/documents", json=add).status_code == 200


def test_a_full_write_queue_is_503_and_the_deadline_is_504(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    build(path, 30)
    args = ["--max-queued-writes", "1", "--batch-window-ms", "300", "--deadline", "5"]
    with ServerProcess(path, *args) as server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url) as http:
                adds = [{"documents": [{"id": f"q{i}", "vectors": vec(i)}]} for i in range(4)]
                return await asyncio.gather(*(http.post("/documents", json=b) for b in adds))

        statuses = sorted(r.status_code for r in asyncio.run(burst()))
        assert statuses[0] == 200 and statuses[-1] == 503
    with ServerProcess(path, "--deadline", "0.0005") as server:
        queries = {"queries": [vec(i, 32) for i in range(100)], "k": 10}
        r = httpx.post(server.url + "/search/batch", json=queries)
        assert r.status_code == 504 and error_of(r)["code"] == "deadline_exceeded"


def test_a_damaged_vector_file_is_500_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    build(path, 30)
    (victim,) = path.glob("seg-*/tokens.f16")
    with ServerProcess(path, "--no-verify") as server:
        with victim.open("r+b") as f:  # in place: the file is mapped, never truncate it
            f.seek(victim.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        r = httpx.post(server.url + "/search/batch", json={"queries": [vec(i) for i in range(4)]})
        assert r.status_code == 500, r.text
        err = error_of(r)
        assert err["code"] == "corrupt_index" and victim.name in err["message"]


def test_a_full_disk_is_507_degraded_and_a_read_only_disk_is_403(
    small_disk: Path,  # noqa: F811
) -> None:
    path = small_disk / "idx"
    build(path, 30)
    with ServerProcess(path, "--limit", "body_bytes=50000000") as server:
        statuses = []
        for i in range(40):
            big = np.random.default_rng(i).standard_normal((2000, DIM)).astype(np.float32)
            r = httpx.post(server.url + "/documents", json=_big_doc(f"big-{i}", big))
            statuses.append(r.status_code)
            if r.status_code != 200:
                break
        assert statuses[-1] == 507 and error_of(r)["code"] == "storage_full"
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and "StorageFull" in error_of(ready)["details"]["failure"]
        assert httpx.post(server.url + "/search", json={"vectors": vec(1)}).status_code == 200
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        r = httpx.post(server.url + "/documents", json=_big_doc("small", np.asarray(vec(2))))
        assert r.status_code == 403 and error_of(r)["code"] == "read_only_index"


def _big_doc(ext: str, v: np.ndarray) -> dict[str, Any]:
    return {"documents": [{"id": ext, "vectors": v.tolist()}]}


def test_a_kept_alive_connection_does_not_wait_for_delayed_acks(served: ServerProcess) -> None:
    """Without TCP_NODELAY on the server's sockets, every answer after the first on a
    kept-alive connection waited 40 ms for the client's delayed ACK."""
    times = []
    with httpx.Client(base_url=served.url) as http:
        for _ in range(15):
            t0 = time.perf_counter()
            http.get("/health")
            times.append(time.perf_counter() - t0)
    assert sorted(times)[len(times) // 2] < 0.025
