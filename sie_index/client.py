"""A Python client of ``sie-index serve``, with the :class:`~sie_index.Index` calls.

    from sie_index.client import Client

    with Client("http://127.0.0.1:8000", api_key=key) as index:
        hits = index.search("how do I ...", k=5, filter={"section": "libs"})

:class:`Client` (sync) and :class:`AsyncClient` take the arguments ``Index.search``,
``search_batch``, ``add``, ``upsert``, ``add_vectors``, ``delete``,
``delete_where`` and ``compact`` take, and return the same types (``Hit``,
``UpdateReport``, ``ChangeReport``). A server's error comes back as the
library's typed error of the same name where there is one (``InvalidInput``,
``IndexLocked``, ``StorageFull``, ...), else as :class:`ServerError`. What the
server marks retryable (503 with Retry-After: nothing was done) and a refused
connection are retried until ``deadline`` seconds have passed since the call
began; nothing else is retried, so a write is never made twice.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, overload

import httpx
import numpy as np

from sie_index.corpus_items import Corpus
from sie_index.errors import (
    CorruptIndex,
    DimensionMismatch,
    EncoderProtocolError,
    EncoderUnavailable,
    IndexClosed,
    IndexLocked,
    InvalidInput,
    NoLexicon,
    ReadOnlyIndex,
    SieIndexError,
    StorageFull,
    TooManyOpenFiles,
)
from sie_index.params import WIRE_PARAMS, Hit, MatchedToken, SearchParams
from sie_index.query_batch import texts_of_batch
from sie_index.updates import ChangeReport, UpdateReport
from sie_index.writer import open_corpus

__all__ = ["AsyncClient", "Client", "ServerError"]

_PARAM_FIELDS = WIRE_PARAMS
# The server's error codes that are the library's own errors (sie_index.server.errors_http).
_TYPED: dict[str, type[SieIndexError]] = {
    "invalid_input": InvalidInput,
    "limit": InvalidInput,
    "dimension_mismatch": DimensionMismatch,
    "read_only_index": ReadOnlyIndex,
    "index_locked": IndexLocked,
    "index_closed": IndexClosed,
    "too_many_open_files": TooManyOpenFiles,
    "encoder_unavailable": EncoderUnavailable,
    "encoder_protocol_error": EncoderProtocolError,
    "storage_full": StorageFull,
    "corrupt_index": CorruptIndex,
    "no_lexicon": NoLexicon,
}
_CONNECT_RETRY_S = 0.2


class ServerError(SieIndexError):
    """An error answer with no library error of its kind (unauthorized, forbidden,
    unknown document, too large, deadline, not ready, internal), or no answer at all
    (``status`` 0, ``code`` ``unreachable``)."""

    def __init__(
        self, message: str, *, status: int, code: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.details = status, code, dict(details or {})


def _error_of(response: httpx.Response) -> SieIndexError:
    try:
        error = response.json()["error"]
        code, message, details = str(error["code"]), str(error["message"]), error["details"]
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:200], {}
    message = f"{message} (HTTP {response.status_code})"
    kind = _TYPED.get(code)
    if kind is InvalidInput:
        return InvalidInput(message, doc_id=details.get("doc_id"), line=details.get("line"))
    if kind is not None:
        return kind(message)
    return ServerError(message, status=response.status_code, code=code, details=details)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before trying again, or None when the answer is final."""
    if response.status_code != 503:
        return None
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _vectors(q: Any) -> list[list[float]]:
    matrix: list[list[float]] = np.asarray(q, dtype=np.float32).tolist()
    return matrix


def _search_body(params: SearchParams, text: bool, metadata: bool, explain: bool) -> dict[str, Any]:
    body: dict[str, Any] = {f: getattr(params, f) for f in _PARAM_FIELDS}
    body.update(text=text, metadata=metadata, explain=explain)
    if params.filter is not None:
        body["filter"] = dict(params.filter)
    if params.ids is not None:
        body["ids"] = list(params.ids)
    if params.filter_sql is not None:
        body["filter_sql"] = params.filter_sql
    return {k: v for k, v in body.items() if v is not None}


def _query(q: Any) -> str | list[list[float]]:
    return q if isinstance(q, str) else _vectors(q)


def _hit(raw: Mapping[str, Any]) -> Hit:
    explain = raw.get("explain")
    return Hit(
        doc_id=int(raw["doc_id"]),
        external_id=str(raw["id"]),
        score=float(raw["score"]),
        text=raw.get("text"),
        metadata=raw.get("metadata"),
        explain=None if explain is None else tuple(MatchedToken(**m) for m in explain),
        shard=raw.get("shard"),
        maxsim=raw.get("maxsim"),
        bm25=raw.get("bm25"),
    )


def _change(raw: Mapping[str, Any]) -> ChangeReport:
    flags = ("outgrown", "retrained")
    counts = {k: int(raw[k]) for k in ChangeReport.__dataclass_fields__ if k not in flags}
    outgrown = raw.get("outgrown")
    return ChangeReport(
        **counts,
        outgrown=None if outgrown is None else float(outgrown),
        retrained=bool(raw.get("retrained", False)),
    )


def _update(raw: Mapping[str, Any]) -> UpdateReport:
    return UpdateReport(
        change=_change(raw),
        encode_seconds=float(raw.get("encode_seconds", 0.0)),
        store_seconds=float(raw.get("store_seconds", 0.0)),
    )


def _documents_body(corpus: Corpus, mode: str, options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - {"on_error", "limit"}
    if unknown:
        raise InvalidInput(f"a Client's add/upsert takes on_error and limit, not {sorted(unknown)}")
    feed = open_corpus(corpus, **options)
    docs = [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in feed.documents]
    return {"documents": docs, "mode": mode}


def _vectors_body(
    ids: Sequence[str],
    vectors: Sequence[Any],
    texts: Sequence[str | None] | None,
    metadata: Sequence[Mapping[str, Any] | None] | None,
    replace: bool,
) -> dict[str, Any]:
    if len(ids) != len(vectors):
        raise InvalidInput(f"{len(ids)} ids but {len(vectors)} vector arrays")
    docs = []
    for i, ext in enumerate(ids):
        doc: dict[str, Any] = {"id": ext, "vectors": _vectors(vectors[i])}
        if texts is not None and texts[i] is not None:
            doc["text"] = texts[i]
        if metadata is not None and metadata[i] is not None:
            doc["metadata"] = dict(metadata[i] or {})
        docs.append(doc)
    return {"documents": docs, "mode": "upsert" if replace else "add"}


def _where_body(
    flt: Mapping[str, Any] | None, ids: Sequence[str] | None, filter_sql: str | None
) -> dict[str, Any]:
    body = {"filter": dict(flt) if flt is not None else None, "ids": ids, "filter_sql": filter_sql}
    return {k: v for k, v in body.items() if v is not None}


class _Base:
    def __init__(self, url: str, api_key: str | None, deadline: float) -> None:
        if not (deadline > 0 and math.isfinite(deadline)):
            raise InvalidInput(f"deadline must be a finite number of seconds > 0, got {deadline}")
        self.url = url.rstrip("/")
        self.deadline = deadline
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @staticmethod
    def _params(params: SearchParams | None, k: int | None, overrides: Any) -> SearchParams:
        return (params or SearchParams()).with_(k=k, **overrides)


class Client(_Base):
    """A synchronous client. ``timeout``: seconds for one HTTP exchange; ``deadline``:
    seconds for a whole call, retries included; ``transport``: an httpx transport."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        deadline: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, deadline)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        stop = time.monotonic() + self.deadline
        while True:
            try:
                response = self._http.request(method, path, json=body)
            except httpx.ConnectError as exc:  # nothing was sent: safe to try again
                error: SieIndexError = ServerError(str(exc), status=0, code="unreachable")
                delay: float | None = _CONNECT_RETRY_S
            except httpx.HTTPError as exc:
                raise ServerError(str(exc), status=0, code="unreachable") from exc
            else:
                if response.status_code < 400:
                    return response.json()
                error, delay = _error_of(response), _retry_after(response)
            if delay is None or time.monotonic() + delay > stop:
                raise error
            time.sleep(delay)

    @overload
    def search(
        self, query: list[str] | tuple[str, ...], k: int | None = None, **options: Any
    ) -> list[list[Hit]]: ...

    @overload
    def search(self, query: Any, k: int | None = None, **options: Any) -> list[Hit]: ...

    def search(
        self,
        query: Any,
        k: int | None = None,
        *,
        params: SearchParams | None = None,
        text: bool = False,
        metadata: bool = False,
        explain: bool = False,
        **overrides: Any,
    ) -> list[Hit] | list[list[Hit]]:
        """As :meth:`Index.search`: text or a query multivector ``[n_tokens, dim]``;
        a list or tuple of texts is a batch (:meth:`search_batch`'s answer)."""
        texts = texts_of_batch(query)
        if texts is not None:
            return self.search_batch(
                texts, k, params=params, text=text, metadata=metadata, explain=explain, **overrides
            )
        body = _search_body(self._params(params, k, overrides), text, metadata, explain)
        body["query" if isinstance(query, str) else "vectors"] = _query(query)
        return [_hit(h) for h in self._call("POST", "/search", body)["hits"]]

    def search_batch(
        self,
        queries: Sequence[Any],
        k: int | None = None,
        *,
        params: SearchParams | None = None,
        text: bool = False,
        metadata: bool = False,
        explain: bool = False,
        **overrides: Any,
    ) -> list[list[Hit]]:
        """As :meth:`Index.search_batch`: one hit list per query."""
        body = _search_body(self._params(params, k, overrides), text, metadata, explain)
        body["queries"] = [_query(q) for q in queries]
        return [
            [_hit(h) for h in hits] for hits in self._call("POST", "/search/batch", body)["hits"]
        ]

    def add(self, corpus: Corpus, **options: Any) -> UpdateReport:
        """Add documents (encoded by the server), in one commit."""
        return _update(self._call("POST", "/documents", _documents_body(corpus, "add", options)))

    def upsert(self, corpus: Corpus, **options: Any) -> UpdateReport:
        """Add documents, replacing those whose ids are in the index, in one commit."""
        body = _documents_body(corpus, "upsert", options)
        return _update(self._call("POST", "/documents", body))

    def add_vectors(
        self,
        ids: Sequence[str],
        vectors: Sequence[Any],
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        replace: bool = False,
    ) -> ChangeReport:
        """Add (``replace=True``: upsert) documents from multivectors, in one commit."""
        body = _vectors_body(ids, vectors, texts, metadata, replace)
        return _change(self._call("POST", "/documents", body))

    def delete(self, ids: Iterable[str]) -> ChangeReport:
        """Delete documents by id in one commit (unknown ids are ignored)."""
        if isinstance(ids, str):
            raise InvalidInput("delete takes a list of ids, not one string")
        return _change(self._call("DELETE", "/documents", {"ids": list(ids)}))

    def delete_where(
        self,
        flt: Mapping[str, Any] | None = None,
        *,
        ids: Sequence[str] | None = None,
        filter_sql: str | None = None,
    ) -> ChangeReport:
        """Delete the documents matching a filter, in one commit."""
        body = _where_body(flt, ids, filter_sql)
        return _change(self._call("POST", "/documents/delete", body))

    def compact(self, *, retrain: bool = False) -> ChangeReport:
        """Purge deleted documents."""
        return _change(self._call("POST", "/compact", {"retrain": retrain}))

    def info(self) -> dict[str, Any]:
        """The server's ``/info``: the index's :meth:`Index.info` and the server's setup."""
        described: dict[str, Any] = self._call("GET", "/info")
        return described

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The asynchronous twin of :class:`Client` (same arguments, awaitable calls)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        deadline: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, deadline)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        stop = time.monotonic() + self.deadline
        while True:
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.ConnectError as exc:
                error: SieIndexError = ServerError(str(exc), status=0, code="unreachable")
                delay: float | None = _CONNECT_RETRY_S
            except httpx.HTTPError as exc:
                raise ServerError(str(exc), status=0, code="unreachable") from exc
            else:
                if response.status_code < 400:
                    return response.json()
                error, delay = _error_of(response), _retry_after(response)
            if delay is None or time.monotonic() + delay > stop:
                raise error
            await asyncio.sleep(delay)

    @overload
    async def search(
        self, query: list[str] | tuple[str, ...], k: int | None = None, **options: Any
    ) -> list[list[Hit]]: ...

    @overload
    async def search(self, query: Any, k: int | None = None, **options: Any) -> list[Hit]: ...

    async def search(
        self,
        query: Any,
        k: int | None = None,
        *,
        params: SearchParams | None = None,
        text: bool = False,
        metadata: bool = False,
        explain: bool = False,
        **overrides: Any,
    ) -> list[Hit] | list[list[Hit]]:
        """As :meth:`Client.search`."""
        texts = texts_of_batch(query)
        if texts is not None:
            return await self.search_batch(
                texts, k, params=params, text=text, metadata=metadata, explain=explain, **overrides
            )
        body = _search_body(self._params(params, k, overrides), text, metadata, explain)
        body["query" if isinstance(query, str) else "vectors"] = _query(query)
        return [_hit(h) for h in (await self._call("POST", "/search", body))["hits"]]

    async def search_batch(
        self,
        queries: Sequence[Any],
        k: int | None = None,
        *,
        params: SearchParams | None = None,
        text: bool = False,
        metadata: bool = False,
        explain: bool = False,
        **overrides: Any,
    ) -> list[list[Hit]]:
        """As :meth:`Client.search_batch`."""
        body = _search_body(self._params(params, k, overrides), text, metadata, explain)
        body["queries"] = [_query(q) for q in queries]
        answer = await self._call("POST", "/search/batch", body)
        return [[_hit(h) for h in hits] for hits in answer["hits"]]

    async def add(self, corpus: Corpus, **options: Any) -> UpdateReport:
        body = _documents_body(corpus, "add", options)
        return _update(await self._call("POST", "/documents", body))

    async def upsert(self, corpus: Corpus, **options: Any) -> UpdateReport:
        body = _documents_body(corpus, "upsert", options)
        return _update(await self._call("POST", "/documents", body))

    async def add_vectors(
        self,
        ids: Sequence[str],
        vectors: Sequence[Any],
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        replace: bool = False,
    ) -> ChangeReport:
        body = _vectors_body(ids, vectors, texts, metadata, replace)
        return _change(await self._call("POST", "/documents", body))

    async def delete(self, ids: Iterable[str]) -> ChangeReport:
        if isinstance(ids, str):
            raise InvalidInput("delete takes a list of ids, not one string")
        return _change(await self._call("DELETE", "/documents", {"ids": list(ids)}))

    async def delete_where(
        self,
        flt: Mapping[str, Any] | None = None,
        *,
        ids: Sequence[str] | None = None,
        filter_sql: str | None = None,
    ) -> ChangeReport:
        body = _where_body(flt, ids, filter_sql)
        return _change(await self._call("POST", "/documents/delete", body))

    async def compact(self, *, retrain: bool = False) -> ChangeReport:
        return _change(await self._call("POST", "/compact", {"retrain": retrain}))

    async def info(self) -> dict[str, Any]:
        described: dict[str, Any] = await self._call("GET", "/info")
        return described

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
