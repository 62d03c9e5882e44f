"""A loopback SIE server for tests and benchmarks: real HTTP on 127.0.0.1, the SIE wire format.

It serves one model id, encoding with a local encoder (the default token-states
encoder in the tests), one request at a time like a single model worker, and
can be scripted to misbehave: each queued :class:`Fault` is used by one request.

    with LoopbackSie(encoder, model="m") as server:
        server.faults.append(Fault(status=503, code="MODEL_LOADING", retry_after="0"))
        SieEncoder(server.url, "m").encode_documents([...])
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from sie_index.encoders.base import Encoder
from sie_index.encoders.sie_wire import MSGPACK, decode_body, encode_body, encode_ndarray


@dataclass
class Fault:
    """What one request gets instead of a normal answer.

    ``status`` (with ``code`` in ``detail`` and a ``retry_after`` header) answers
    with an error; ``batch`` damages a 200 answer: ``short``, ``long``,
    ``reorder``, ``garbage`` (not msgpack), ``pickle`` (an object-dtype array),
    ``void`` (a structured dtype), ``bytes`` (byte count off by one), ``nan``,
    ``dims`` (token_dims disagrees with the values), ``narrow`` (one dimension
    short throughout); ``stall`` waits that many seconds first;
    ``close`` drops the connection without an answer; ``trickle`` sends one
    byte every ``trickle`` seconds until the client goes away (a minute at
    most), of the headers (``trickle_headers``) or of a body that never ends.
    """

    status: int | None = None
    code: str | None = None
    retry_after: str | None = None
    batch: str | None = None
    stall: float = 0.0
    close: bool = False
    trickle: float = 0.0
    trickle_headers: bool = False


@dataclass
class Seen:
    """One request as the server received it."""

    n_items: int
    is_query: bool
    content_type: str
    headers: dict[str, str]
    output_dtype: str | None


@dataclass
class ServerStats:
    requests: int = 0
    encode_seconds: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    seen: list[Seen] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # the client's port, per request


class LoopbackSie:
    """A threaded HTTP server speaking ``POST /v1/encode/{model}``, backed by ``encoder``.

    ``max_items``: larger requests get 413 (to exercise splitting). ``always``,
    when set, is the fault of every request once ``faults`` is empty.
    ``arrived`` is set when a request arrives.
    """

    def __init__(self, encoder: Encoder, *, model: str, max_items: int | None = None) -> None:
        self.encoder = encoder
        self.model = model
        self.max_items = max_items
        self.faults: deque[Fault] = deque()
        self.always: Fault | None = None
        self.arrived = threading.Event()
        self._stop = threading.Event()
        self.stats = ServerStats()
        self._lock = threading.Lock()  # one model worker: requests queue for it
        self._stats_lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> LoopbackSie:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_fault(self) -> Fault | None:
        with self._stats_lock:
            return self.faults.popleft() if self.faults else self.always

    def encode(self, texts: list[str], is_query: bool) -> list[np.ndarray]:
        with self._lock:
            t0 = time.perf_counter()
            out = (
                self.encoder.encode_queries(texts)
                if is_query
                else self.encoder.encode_documents(texts)
            )
            self.stats.encode_seconds += time.perf_counter() - t0
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: LoopbackSie

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, accept: str, extra: dict[str, str]) -> None:
        body = encode_body({"detail": {"code": code, "message": code.lower()}}, accept)
        self._send(status, body, accept, extra)

    def do_POST(self) -> None:
        state = self.server_state
        with state._stats_lock:
            state.stats.requests += 1
            state.stats.in_flight += 1
            state.stats.max_in_flight = max(state.stats.max_in_flight, state.stats.in_flight)
            state.stats.ports.append(self.client_address[1])
        state.arrived.set()
        try:
            self._handle(state)
        finally:
            with state._stats_lock:
                state.stats.in_flight -= 1

    def _handle(self, state: LoopbackSie) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        content_type = self.headers.get("Content-Type", MSGPACK)
        accept = MSGPACK if MSGPACK in self.headers.get("Accept", MSGPACK) else "application/json"
        fault = state.next_fault() or Fault()
        if fault.stall:
            time.sleep(fault.stall)
        if fault.close:
            self.close_connection = True
            return
        if fault.trickle:
            self._trickle(state, fault)
            return
        if fault.status is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._error(fault.status, fault.code or "ERROR", accept, extra)
            return
        prefix = "/v1/encode/"
        if not self.path.startswith(prefix) or self.path[len(prefix) :] != state.model:
            self._error(404, "MODEL_NOT_FOUND", accept, {})
            return
        request = decode_body(raw, content_type, where="request")
        items, params = request["items"], request.get("params") or {}
        is_query = bool((params.get("options") or {}).get("is_query", False))
        with state._stats_lock:
            state.stats.seen.append(
                Seen(
                    n_items=len(items),
                    is_query=is_query,
                    content_type=content_type,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    output_dtype=params.get("output_dtype"),
                )
            )
        if not items or params.get("output_types") != ["multivector"]:
            self._error(400, "BAD_REQUEST", accept, {})
            return
        if state.max_items is not None and len(items) > state.max_items:
            self._error(413, "PAYLOAD_TOO_LARGE", accept, {})
            return
        t0 = time.perf_counter()
        vectors = state.encode([item["text"] for item in items], is_query)
        encode_ms = (time.perf_counter() - t0) * 1000
        dtype = params.get("output_dtype") or "float32"
        wire = np.float16 if dtype == "float16" else np.float32
        results = [
            self._result(item.get("id"), v.astype(wire), accept)
            for item, v in zip(items, vectors, strict=True)
        ]
        body = self._damage(fault.batch, results, accept)
        if body is None:
            response = {
                "model": state.model,
                "items": results,
                "timing": {"encode_ms": encode_ms},
                "usage": {"input_tokens": int(sum(len(v) for v in vectors))},
            }
            body = encode_body(response, accept)
        self._send(200, body, accept, {})

    def _trickle(self, state: LoopbackSie, fault: Fault) -> None:
        """One byte at a time, for ever (a minute at most): the client must give up."""
        self.close_connection = True
        if not fault.trickle_headers:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\n")
            self.wfile.write(b"Content-Length: 1000000000\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nX-Slow: "
        stop = time.monotonic() + 60
        for i in range(1_000_000):
            if state._stop.is_set() or time.monotonic() > stop:
                return
            byte = head[i : i + 1] if fault.trickle_headers and i < len(head) else b"a"
            try:
                self.wfile.write(byte)
                self.wfile.flush()
            except OSError:  # the client gave up: what we wait for
                return
            time.sleep(fault.trickle)

    @staticmethod
    def _result(item_id: Any, v: np.ndarray, accept: str) -> dict[str, Any]:
        values: Any = encode_ndarray(v) if accept == MSGPACK else v.astype(float).tolist()
        return {
            "id": item_id,
            "multivector": {
                "token_dims": int(v.shape[1]),
                "num_tokens": int(v.shape[0]),
                "dtype": "float16" if v.dtype == np.float16 else "float32",
                "values": values,
            },
        }

    @staticmethod
    def _damage(kind: str | None, results: list[dict[str, Any]], accept: str) -> bytes | None:
        """Apply a scripted batch fault to ``results`` in place, or return a raw body."""
        if kind is None:
            return None
        if kind == "garbage":
            return b"\xc1\xff not msgpack" if accept == MSGPACK else b"{not json"
        if kind == "short":
            results.pop()
        elif kind == "long":
            results.append(dict(results[-1]))
        elif kind == "reorder":
            results.reverse()
        else:
            mv = results[-1]["multivector"]
            values = mv["values"]
            if kind == "nan":
                arr = np.frombuffer(values[b"data"], dtype=values[b"type"]).copy()
                arr[0] = np.nan
                values[b"data"] = arr.tobytes()
            elif kind == "pickle":
                values[b"type"], values[b"kind"] = "|O", b"O"
            elif kind == "void":
                values[b"type"], values[b"kind"] = "|V8", b"V"
            elif kind == "bytes":
                values[b"data"] = values[b"data"][:-1]
            elif kind == "dims":
                mv["token_dims"] -= 1
            elif kind == "narrow":  # consistent, but of the wrong dimension
                n, d = mv["num_tokens"], mv["token_dims"]
                if isinstance(values, list):
                    mv["values"] = [row[:-1] for row in values]
                else:
                    arr = np.frombuffer(values[b"data"], dtype=values[b"type"]).reshape(n, d)
                    mv["values"] = encode_ndarray(np.ascontiguousarray(arr[:, :-1]))
                mv["token_dims"] = d - 1
            else:
                raise ValueError(kind)
        return None
