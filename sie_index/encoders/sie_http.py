"""One HTTP exchange with a SIE server, bounded by a wall-clock deadline.

httpx's timeouts bound each connect and each read, not an exchange: a server that
sends a byte every fraction of a second keeps a request alive for ever. Here the
deadline is total wall time. Every timeout is capped by the time left, the body
is streamed with the clock checked between chunks, and a timer shuts the
connection's socket down when the deadline passes, which ends a wait anywhere
(in the request, the headers or the body).

The timer needs the socket of the request's connection. Each :class:`Lane` the
encoder makes itself is a client of exactly one connection, whose socket is
learned from httpcore's ``trace`` extension when it connects and kept while it
is reused. An injected client is shared and its pool may hand a request any
connection, so there the socket is known only for a new connection or once the
headers have arrived: a reused connection of an injected client that trickles
its headers is bounded by the per-read timeouts alone.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["DeadlinePassed", "Lane", "Lanes", "Reply", "exchange"]

CONNECT_TIMEOUT = 10.0
# httpcore's trace events whose return value is the connection's network stream.
_CONNECTED = frozenset(["connection.connect_tcp.complete", "connection.start_tls.complete"])


class DeadlinePassed(Exception):
    """The deadline passed before the whole answer arrived (the caller words the error)."""


@dataclass(frozen=True)
class Reply:
    """A complete answer: status, headers and the whole body."""

    status: int
    headers: httpx.Headers
    content: bytes


class Lane:
    """A client that carries one exchange at a time, and its connection's network stream."""

    def __init__(self, client: httpx.Client, *, own: bool) -> None:
        self.client = client
        self.own = own
        self.stream: Any = None


class Lanes:
    """Lanes for concurrent exchanges.

    With ``client`` None, each lane is a client of one connection of its own,
    made on demand; up to ``keep`` idle lanes stay open for reuse. An injected
    ``client`` is the one shared lane (and :meth:`close` leaves it open).
    """

    def __init__(self, client: httpx.Client | None, *, keep: int) -> None:
        self._shared = Lane(client, own=False) if client is not None else None
        self._keep = keep
        self._free: list[Lane] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def lane(self) -> Iterator[Lane]:
        """A lane to send one exchange on; given back (or closed) afterwards."""
        if self._shared is not None:
            yield self._shared
            return
        with self._lock:
            lane = self._free.pop() if self._free else None
        if lane is None:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            lane = Lane(httpx.Client(limits=limits), own=True)
        try:
            yield lane
        finally:
            with self._lock:
                kept = not self._closed and len(self._free) < self._keep
                if kept:
                    self._free.append(lane)
            if not kept:
                lane.client.close()

    def close(self) -> None:
        """Close the idle lanes of our own; lanes in use close when given back."""
        with self._lock:
            self._closed = True
            idle, self._free = self._free, []
        for lane in idle:
            lane.client.close()


def exchange(
    lane: Lane, url: str, body: bytes, headers: Mapping[str, str], deadline_at: float
) -> Reply:
    """POST ``body`` to ``url`` and read the whole answer before ``deadline_at``.

    ``deadline_at`` is a :func:`time.monotonic` instant. Raises
    :class:`DeadlinePassed` when it passes first, and httpx's errors otherwise.
    """
    remaining = deadline_at - time.monotonic()
    if remaining <= 0:
        raise DeadlinePassed
    guard = _Guard(lane)
    timer = threading.Timer(remaining, guard.abort)
    timer.daemon = True
    timer.start()
    try:
        with lane.client.stream(
            "POST",
            url,
            content=body,
            headers=dict(headers),
            timeout=httpx.Timeout(remaining, connect=min(remaining, CONNECT_TIMEOUT)),
            extensions={"trace": guard.trace},
        ) as response:
            guard.watch(response.extensions.get("network_stream"))
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() >= deadline_at:
                    raise DeadlinePassed
            return Reply(response.status_code, response.headers, b"".join(chunks))
    except httpx.HTTPError as exc:
        if guard.aborted or time.monotonic() >= deadline_at:
            raise DeadlinePassed from exc
        raise
    finally:
        guard.finish()
        timer.cancel()


class _Guard:
    """Shuts one exchange's socket down when its deadline passes."""

    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        # A lane of our own has one connection: its stream is this exchange's too.
        self._stream: Any = lane.stream if lane.own else None
        self._lock = threading.Lock()
        self._finished = False
        self.aborted = False

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace callback: learns the stream of a new connection."""
        if event in _CONNECTED:
            self.watch(info.get("return_value"))

    def watch(self, stream: Any) -> None:
        if stream is None:
            return
        with self._lock:
            self._stream = stream
            if self._lane.own:
                self._lane.stream = stream
            late = self.aborted and not self._finished
        if late:
            _shut(stream)

    def abort(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.aborted = True
            stream = self._stream
        if stream is not None:
            _shut(stream)

    def finish(self) -> None:
        with self._lock:
            self._finished = True


def _shut(stream: Any) -> None:
    """Shut a network stream's socket down: a read blocked on it returns at once."""
    sock = stream.get_extra_info("socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
