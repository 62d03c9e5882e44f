"""What every request goes through: an id, a body-size limit, one log line, metrics.

The request id is the client's ``X-Request-ID`` when it is a plain token of at
most 128 characters, else a new one; either way it is echoed in the answer and
names the request in the log. A body over the limit is refused with 413 before
the app reads it. An error nothing else answered is answered here, as a 500
with the request id and no traceback.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sie_index.server.errors_http import RequestTooLarge, http_error
from sie_index.server.metrics import ServerMetrics

__all__ = ["RequestMiddleware"]

access_log = logging.getLogger("sie_index.server.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestMiddleware:
    """An ASGI middleware (outermost but for Starlette's own error layer)."""

    def __init__(self, app: App, *, max_body_bytes: int, metrics: ServerMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            body_receive = await self._read_body(headers, receive)
            await self.app(scope, body_receive, send_with_id)
        except Exception as exc:
            if started:  # the answer is on its way; nothing better to send
                raise
            code, body, extra = http_error(exc, rid)
            await _send_json(send_with_id, code, body, extra)
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("route")
            endpoint = getattr(route, "path", "other")
            self.metrics.observe(endpoint, scope["method"], status, seconds)
            line = {
                "request_id": rid,
                "method": scope["method"],
                "path": scope["path"],
                "endpoint": endpoint,
                "status": status,
                "ms": round(seconds * 1000, 2),
                "client": (scope.get("client") or ("-",))[0],
            }
            access_log.info(json.dumps(line))

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> Receive:
        """The whole body, refused past the limit (by its Content-Length, or as it
        streams in), replayed to the app."""
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise RequestTooLarge(
                f"the body is {length} bytes, over this server's limit of "
                f"{self.max_body_bytes} bytes"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message], receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestTooLarge(
                    f"the body is over this server's limit of {self.max_body_bytes} bytes"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return _replay([whole], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
