"""The HTTP face of an index: endpoints that map requests to the library's calls.

Searches run on the index's current snapshot, without locks, in a thread pool
sized to the cores; writes go to the one :class:`~.writes.BatchingWriter`. Every
error is answered through :mod:`~.errors_http`'s one table. Open the index with
:func:`open_served` (the one place that decides what is served) and run it with
:func:`serve`, or mount :func:`create_app` in a server of your own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from sie_index.encoders.base import Encoder
from sie_index.errors import EncoderUnavailable, InvalidInput
from sie_index.index import Index, Query
from sie_index.params import SearchParams
from sie_index.server.config import ServerConfig
from sie_index.server.errors_http import (
    DeadlineExceeded,
    Forbidden,
    NotReady,
    Unauthorized,
    install_handlers,
)
from sie_index.server.metrics import CONTENT_TYPE, ServerMetrics
from sie_index.server.middleware import RequestMiddleware
from sie_index.server.wire import (
    ChangeOut,
    CompactRequest,
    DeleteRequest,
    DeleteWhereRequest,
    ErrorOut,
    HitOut,
    SearchBatchRequest,
    SearchBatchResponse,
    SearchRequest,
    SearchResponse,
    SearchSettings,
    WriteRequest,
)
from sie_index.server.writes import (
    AddOp,
    BatchingWriter,
    CompactOp,
    DeleteOp,
    DeleteWhereOp,
    WriteOp,
)
from sie_index.sharded import ShardedIndex, open_index

__all__ = ["create_app", "open_served", "serve"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorOut} for s in (401, 403, 404, 413, 422, 500, 503, 504, 507)
}
_bearer = HTTPBearer(auto_error=False)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def open_served(
    path: str | Path, *, encoder: Encoder | None = None, verify: bool = True
) -> Index | ShardedIndex:
    """The index a server serves, opened from its folder: the one place that decides
    what kind of index that is (an :class:`Index`, or a :class:`ShardedIndex` when the
    folder holds a shard map)."""
    return open_index(path, encoder=encoder, verify=verify)


class _Service:
    """What the endpoints share: the index, the search pool, the writer, the metrics."""

    def __init__(self, index: Index | ShardedIndex, config: ServerConfig) -> None:
        self.index = index
        self.config = config
        self.limits = config.limits
        self.pool = ThreadPoolExecutor(config.search_threads, thread_name_prefix="sie-search")
        # a scrape reads counts only: growth samples tokens once a generation, and a
        # busy server commits often
        self.metrics = ServerMetrics(
            lambda: index.info(growth=False), lambda: self.writer.depth if self.writer else 0
        )
        self.writer: BatchingWriter | None = None
        self.encoder = "loading"
        """``loading``, ``ready``, ``none`` (the index takes query vectors only) or
        ``failed: why``."""
        self._warming = threading.Lock()

    def warm_encoder(self) -> None:
        """Make the query encoder and have it answer once (in a thread of its own)."""
        if not self._warming.acquire(blocking=False):
            return
        try:
            self.encoder = "loading"
            self.index.encode_queries(["ready?"])
            self.encoder = "ready"
        except EncoderUnavailable as exc:
            vectors_only = self.index.info()["encoder"].get("kind") == "precomputed"
            self.encoder = "none" if vectors_only else f"failed: {exc}"
        except Exception as exc:
            self.encoder = f"failed: {type(exc).__name__}: {exc}"
        finally:
            self._warming.release()

    async def run(self, fn: Callable[[], _T]) -> _T:
        """``fn`` on the search pool, within the per-request deadline."""
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn)
        try:
            return await asyncio.wait_for(future, self.limits.deadline_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the search took longer than this server's deadline of {self.limits.deadline_s} s"
            ) from None

    async def write(self, op: WriteOp) -> ChangeOut:
        assert self.writer is not None
        try:
            return await asyncio.wait_for(self.writer.submit(op), self.limits.deadline_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"no commit within this server's deadline of {self.limits.deadline_s} s; "
                "the write is queued and may still be committed"
            ) from None

    def query(self, text: str | None, vectors: list[list[float]] | None, where: str) -> Query:
        if text is not None:
            self.limits.check("query_chars", len(text))
            if self.encoder == "none":
                raise InvalidInput(
                    f"{where}: this index holds precomputed vectors and has no query "
                    "encoder; send query vectors"
                )
            if self.encoder == "loading":
                raise NotReady("the query encoder is still loading", encoder=self.encoder)
            return text
        assert vectors is not None
        self.limits.check("query_tokens", len(vectors))
        return _matrix(vectors, where)

    def params(self, body: SearchSettings) -> SearchParams:
        self.limits.check("k", body.k)
        self.limits.check_filter(body.filter, body.ids, body.filter_sql)
        if body.filter_sql is not None and not self.config.allow_filter_sql:
            raise Forbidden("this server does not take raw SQL filters (filter_sql)")
        return body.params()


def _matrix(rows: Sequence[Sequence[float]], where: str, doc_id: str | None = None) -> np.ndarray:
    try:
        return np.asarray(rows, dtype=np.float32)
    except ValueError as exc:  # ragged rows
        raise InvalidInput(f"{where}: not a [n_tokens, dim] matrix: {exc}", doc_id=doc_id) from exc


def _auth(config: ServerConfig, role: str) -> Callable[..., Any]:
    keys = config.keys

    async def check(
        bearer: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
        api_key: str | None = Security(_api_key),
    ) -> None:
        if not keys.enabled:
            return
        presented = bearer.credentials if bearer is not None else api_key
        if not presented:
            raise Unauthorized("an API key is needed: Authorization: Bearer KEY, or X-API-Key")
        found = keys.role(presented)
        if found is None:
            raise Unauthorized("the API key is not one this server knows")
        if role == "write" and found != "write":
            raise Forbidden("this API key may only read")

    return check


def create_app(index: Index | ShardedIndex, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``index`` (which it closes when the app shuts down)."""
    config = config or ServerConfig()
    svc = _Service(index, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.writer = BatchingWriter(
            index,
            window_s=config.batch_window_s,
            max_documents=config.batch_documents,
            max_queued=config.max_queued_writes,
            on_commit=svc.metrics.commit,
        )
        svc.writer.start()
        threading.Thread(target=svc.warm_encoder, name="sie-warm", daemon=True).start()
        try:
            yield
        finally:
            await svc.writer.stop()
            svc.pool.shutdown(wait=False, cancel_futures=True)
            index.close()

    app = FastAPI(
        title="sie-index",
        description="Multi-vector (ColBERT-style) search over one index.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.service = svc
    install_handlers(app)
    app.add_middleware(
        RequestMiddleware, max_body_bytes=config.limits.max_body_bytes, metrics=svc.metrics
    )
    read = [Depends(_auth(config, "read"))]
    write = [Depends(_auth(config, "write"))]

    @app.post(
        "/search",
        response_model=SearchResponse,
        dependencies=read,
        response_model_exclude_none=True,
    )
    async def search(body: SearchRequest) -> SearchResponse:
        """Top ``k`` documents for one query (text or query vectors)."""
        query = svc.query(body.query, body.vectors, "query")
        params = svc.params(body)
        hits = await svc.run(
            lambda: index.search_batch(
                [query],
                params=params,
                text=body.text,
                metadata=body.metadata,
                explain=body.explain,
                threads=1,
            )[0]
        )
        return SearchResponse(hits=[HitOut.of(h) for h in hits])

    @app.post(
        "/search/batch",
        response_model=SearchBatchResponse,
        dependencies=read,
        response_model_exclude_none=True,
    )
    async def search_batch(body: SearchBatchRequest) -> SearchBatchResponse:
        """One hit list per query, in order; every query with the same settings."""
        svc.limits.check("batch", len(body.queries))
        queries = [
            svc.query(q, None, f"queries[{i}]")
            if isinstance(q, str)
            else svc.query(None, q, f"queries[{i}]")
            for i, q in enumerate(body.queries)
        ]
        params = svc.params(body)
        results = await svc.run(
            lambda: index.search_batch(
                queries, params=params, text=body.text, metadata=body.metadata, explain=body.explain
            )
        )
        return SearchBatchResponse(hits=[[HitOut.of(h) for h in hits] for hits in results])

    @app.post("/documents", response_model=ChangeOut, dependencies=write)
    async def add_documents(body: WriteRequest) -> ChangeOut:
        """Add (``mode: add``) or upsert documents, in one commit; answered once durable."""
        docs = body.documents
        svc.limits.check("documents", len(docs))
        vectors = None
        if docs[0].vectors is not None:
            vectors = [_matrix(d.vectors or [], "vectors", d.id) for d in docs]
        elif svc.encoder == "none":
            raise InvalidInput("this index holds precomputed vectors: send vectors, not text")
        op = AddOp(
            ids=[d.id for d in docs],
            texts=[d.text for d in docs],
            metadata=[d.metadata for d in docs],
            vectors=vectors,
            replace=body.mode == "upsert",
        )
        return await svc.write(op)

    @app.delete("/documents", response_model=ChangeOut, dependencies=write)
    async def delete_documents(body: DeleteRequest) -> ChangeOut:
        """Delete documents by id (unknown ids: skipped, or with ``missing: error`` a 404)."""
        svc.limits.check("documents", len(body.ids))
        return await svc.write(DeleteOp(ids=body.ids, must_exist=body.missing == "error"))

    @app.post("/documents/delete", response_model=ChangeOut, dependencies=write)
    async def delete_where(body: DeleteWhereRequest) -> ChangeOut:
        """Delete every document matching a filter, in one commit."""
        svc.limits.check_filter(body.filter, body.ids, body.filter_sql)
        if body.filter_sql is not None and not config.allow_filter_sql:
            raise Forbidden("this server does not take raw SQL filters (filter_sql)")
        return await svc.write(
            DeleteWhereOp(filter=body.filter, ids=body.ids, filter_sql=body.filter_sql)
        )

    @app.post("/compact", response_model=ChangeOut, dependencies=write)
    async def compact(body: CompactRequest | None = None) -> ChangeOut:
        """Purge deleted documents (a new single-segment generation)."""
        return await svc.write(CompactOp(retrain=body.retrain if body else False))

    @app.get("/info", dependencies=read)
    async def info() -> dict[str, Any]:
        """What the index holds, and how this server is set up."""
        described = await svc.run(index.info)
        server = {
            "search_threads": config.search_threads,
            "write_queue_depth": svc.writer.depth if svc.writer else 0,
            "encoder": svc.encoder,
            "auth": config.keys.enabled,
            "limits": asdict(config.limits),
        }
        return {"index": described, "server": server}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers (no key needed)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict[str, Any]:
        """200 once the index is open and the query encoder answers (or the index
        takes query vectors only); 503 before that, and while writes cannot commit."""
        if svc.encoder.startswith("failed"):
            threading.Thread(target=svc.warm_encoder, name="sie-warm", daemon=True).start()
        if svc.encoder == "loading" or svc.encoder.startswith("failed"):
            raise NotReady("the query encoder is not ready", encoder=svc.encoder)
        if svc.writer is not None and svc.writer.failure is not None:
            raise NotReady("degraded: writes cannot commit", failure=svc.writer.failure)
        generation = (await svc.run(index.info))["generation"]
        return {"status": "ready", "encoder": svc.encoder, "generation": generation}

    @app.get("/metrics", dependencies=read, response_class=Response)
    async def metrics() -> Response:
        """Prometheus text: requests and latency per endpoint, the index, the writer."""
        body = await asyncio.get_running_loop().run_in_executor(svc.pool, svc.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE)

    return app


def serve(index: Index | ShardedIndex, config: ServerConfig) -> None:
    """Serve ``index`` until interrupted (SIGINT or SIGTERM: writes queued so far are
    committed, then the index is closed)."""
    logging.getLogger("sie_index.server").setLevel(logging.INFO)
    if not config.keys.enabled and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving on %s without API keys: anyone who can reach it may write", config.host
        )
    family, kind, proto, _, address = socket.getaddrinfo(
        config.host, config.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets that do, and without
    # it a kept-alive connection waits 40 ms for a delayed ACK between header and body
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    # the port may have been 0: this line says which one was taken
    print(f"sie-index serve: listening on http://{shown}:{port}", file=sys.stderr, flush=True)
    app = create_app(index, config)
    uv = uvicorn.Config(app, log_config=None, access_log=False, server_header=False)
    try:
        uvicorn.Server(uv).run(sockets=[sock])
    finally:
        sock.close()
