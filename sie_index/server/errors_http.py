"""The one table from errors to HTTP statuses, and the JSON every error answers with.

Every error a request can meet, the library's typed errors and the server's own,
is mapped here and only here, to a status and a body::

    {"error": {"code": "invalid_input", "message": "...", "details": {...}}}

=============================  ======  ===========================  ===========
error                          status  code                         Retry-After
=============================  ======  ===========================  ===========
InvalidInput, LimitExceeded    422     invalid_input, limit         no
DimensionMismatch              422     dimension_mismatch           no
NoLexicon                      422     no_lexicon                   no
Unauthorized                   401     unauthorized                 no
Forbidden                      403     forbidden                    no
ReadOnlyIndex                  403     read_only_index              no
UnknownDocument                404     unknown_document             no
RequestTooLarge                413     request_too_large            no
IndexLocked                    503     index_locked                 yes
WriteQueueFull                 503     write_queue_full             yes
IndexClosed                    503     index_closed                 yes
TooManyOpenFiles               503     too_many_open_files          yes
EncoderUnavailable             503     encoder_unavailable          yes
NotReady                       503     not_ready                    yes
EncoderProtocolError           502     encoder_protocol_error       no
DeadlineExceeded               504     deadline_exceeded            no
StorageFull                    507     storage_full                 no
CorruptIndex                   500     corrupt_index                no
any other error                500     internal_error               no
=============================  ======  ===========================  ===========

``ReadOnlyIndex`` is 403, not 503: the index's folder cannot be written, and
retrying will not change that until an operator does; a 503 tells clients to
retry. A 503 always carries Retry-After and means "nothing was done, try again":
the client retries exactly those. A 504 on a write means the commit may still
happen, so it is never retried. No response ever holds a traceback: an
unexpected error is logged with its request id and answered with that id only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

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

__all__ = [
    "RETRY_AFTER_S",
    "DeadlineExceeded",
    "Forbidden",
    "LimitExceeded",
    "NotReady",
    "RequestTooLarge",
    "Unauthorized",
    "UnknownDocument",
    "WriteQueueFull",
    "error_body",
    "http_error",
    "install_handlers",
    "request_id_of",
]

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1


class Unauthorized(SieIndexError):
    """No API key, or one the server does not know."""


class Forbidden(SieIndexError):
    """The key may not do this (a read-only key writing, a raw SQL filter when the
    server does not take them)."""


class RequestTooLarge(SieIndexError):
    """The request body is larger than the server takes."""


class LimitExceeded(InvalidInput):
    """One of a request's sizes is over the server's limit for it."""

    def __init__(self, limit: str, value: int, maximum: int) -> None:
        super().__init__(f"{limit} is {value}, over this server's limit of {maximum}")
        self.limit, self.value, self.maximum = limit, value, maximum


class UnknownDocument(SieIndexError):
    """A request named documents the index does not hold."""

    def __init__(self, ids: list[str]) -> None:
        shown = ", ".join(repr(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
        super().__init__(f"{len(ids)} document id(s) not in the index: {shown}")
        self.ids = ids


class WriteQueueFull(SieIndexError):
    """Too many writes are waiting for the writer; nothing was queued."""


class NotReady(SieIndexError):
    """The server cannot answer yet, or is degraded."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class DeadlineExceeded(SieIndexError):
    """The request took longer than the server's per-request deadline."""


@dataclass(frozen=True)
class _Row:
    status: int
    code: str
    retry: bool = False


# Looked up along the error's class hierarchy: the most specific row wins.
TABLE: dict[type[BaseException], _Row] = {
    LimitExceeded: _Row(422, "limit"),
    InvalidInput: _Row(422, "invalid_input"),
    DimensionMismatch: _Row(422, "dimension_mismatch"),
    NoLexicon: _Row(422, "no_lexicon"),
    Unauthorized: _Row(401, "unauthorized"),
    Forbidden: _Row(403, "forbidden"),
    ReadOnlyIndex: _Row(403, "read_only_index"),
    UnknownDocument: _Row(404, "unknown_document"),
    RequestTooLarge: _Row(413, "request_too_large"),
    IndexLocked: _Row(503, "index_locked", retry=True),
    WriteQueueFull: _Row(503, "write_queue_full", retry=True),
    IndexClosed: _Row(503, "index_closed", retry=True),
    TooManyOpenFiles: _Row(503, "too_many_open_files", retry=True),
    EncoderUnavailable: _Row(503, "encoder_unavailable", retry=True),
    NotReady: _Row(503, "not_ready", retry=True),
    EncoderProtocolError: _Row(502, "encoder_protocol_error"),
    DeadlineExceeded: _Row(504, "deadline_exceeded"),
    StorageFull: _Row(507, "storage_full"),
    CorruptIndex: _Row(500, "corrupt_index"),
    SieIndexError: _Row(500, "index_error"),
}
_INTERNAL = _Row(500, "internal_error")


def _details(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LimitExceeded):
        return {"limit": exc.limit, "value": exc.value, "max": exc.maximum}
    if isinstance(exc, InvalidInput):
        found = {"source": exc.source, "line": exc.line, "doc_id": exc.doc_id}
        return {k: v for k, v in found.items() if v is not None}
    if isinstance(exc, UnknownDocument):
        return {"ids": exc.ids}
    if isinstance(exc, NotReady):
        return dict(exc.details)
    return {}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    """The JSON of an error answer."""
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return json.dumps(body, default=str).encode()


def http_error(exc: BaseException, request_id: str) -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and extra headers for ``exc``: the one mapping."""
    row = next((TABLE[c] for c in type(exc).__mro__ if c in TABLE), None)
    if row is None:
        log.error("request %s failed", request_id, exc_info=exc)
        message = f"internal error (request id {request_id}); the server log has the cause"
        return _INTERNAL.status, error_body(_INTERNAL.code, message), {}
    if row.status >= 500:
        log.warning("request %s: %s: %s", request_id, type(exc).__name__, exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if row.retry else {}
    if row.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    message = " ".join(str(exc).split()) or type(exc).__name__
    return row.status, error_body(row.code, message, _details(exc)), headers


def request_id_of(request: Request) -> str:
    """The id the middleware gave this request."""
    return str(getattr(request.state, "request_id", "-"))


def _response(status: int, body: bytes, headers: dict[str, str]) -> Response:
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def install_handlers(app: FastAPI) -> None:
    """Answer typed errors, malformed requests and unknown routes in the one shape."""

    async def typed(request: Request, exc: Exception) -> Response:
        return _response(*http_error(exc, request_id_of(request)))

    async def malformed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        return _response(422, error_body("invalid_input", message, {"errors": errors}), {})

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body(code, str(exc.detail))
        return _response(exc.status_code, body, dict(exc.headers or {}))

    app.add_exception_handler(SieIndexError, typed)
    app.add_exception_handler(RequestValidationError, malformed)
    app.add_exception_handler(HTTPException, http)
