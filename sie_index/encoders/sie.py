"""A ColBERT model served by a Search Inference Engine (SIE) server, over httpx.

:class:`SieEncoder` speaks ``POST {url}/v1/encode/{model}`` as described in
SIE's encode API (release 0.10.1): msgpack (or JSON) bodies, ``output_types:
["multivector"]``, ``options.is_query`` for queries. Texts are sorted by length
and cut into requests by item count and by body size; up to ``max_in_flight``
requests run at once on one pooled :class:`httpx.Client`, so a build keeps the
server busy.

Each request has one deadline in wall time, retries included, that holds even
against a server that trickles its answer (:mod:`sie_index.encoders.sie_http`).
Retried, as SIE marks them retryable: 503 ``MODEL_LOADING`` / ``PROVISIONING``
(``Retry-After`` or a default delay), 503 ``RESOURCE_EXHAUSTED`` (a few times),
429 (``Retry-After``), 504, and connection failures; between tries the client
waits at least an exponential backoff with jitter (from 50-100 ms), whatever
``Retry-After`` says, and gives up when the wait would pass the deadline,
naming the last cause. Never retried: 400, 404, 502, any other status, and a
request that ran out of time (it may still be running).
A 413 splits the batch in two and goes on. Every response is checked in full
(:func:`sie_index.encoders.sie_wire.parse_results`) before its vectors are
returned, so a short, long, reordered or garbled batch is an error, never a
shifted vector.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from sie_index.encoders.base import EncoderSpec
from sie_index.encoders.sie_http import DeadlinePassed, Lanes, Reply, exchange
from sie_index.encoders.sie_wire import (
    ACCEPTED_OUTPUT_DTYPES,
    JSON,
    MSGPACK,
    decode_body,
    encode_body,
    error_detail,
    parse_results,
)
from sie_index.errors import EncoderProtocolError, EncoderUnavailable, InvalidInput

__all__ = ["CATALOG_DIMS", "SieEncoder", "SieStats", "parse_retry_after"]

log = logging.getLogger(__name__)

# Multivector dimensions of the ColBERT models in SIE's catalog, so an encoder for
# one of them knows its dimension without asking the server.
CATALOG_DIMS = {
    "answerdotai/answerai-colbert-small-v1": 96,
    "colbert-ir/colbertv2.0": 128,
    "jinaai/jina-colbert-v2": 128,
    "lightonai/GTE-ModernColBERT-v1": 128,
    "mixedbread-ai/mxbai-colbert-large-v1": 128,
}

_RETRY_AFTER_CODES = frozenset(["MODEL_LOADING", "PROVISIONING"])
_RESOURCE_EXHAUSTED_TRIES = 5
_DELTA_SECONDS = re.compile(r"\d{1,9}(\.\d{1,6})?")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    Anything else (empty, negative, nan, inf, text, a malformed date) gives None,
    and the caller falls back to its own backoff: no such value ever reaches sleep.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass
class SieStats:
    """What an encoder has sent so far (for benchmarks and logs)."""

    requests: int = 0
    retries: int = 0
    splits: int = 0
    items: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    request_seconds: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0


class _TooLarge(Exception):
    """A 413: the caller splits the batch."""


class SieEncoder:
    """Multivectors from a model behind a SIE server.

    ``url`` is the server (``http://host:8080``), ``model`` its catalog id
    (``jinaai/jina-colbert-v2``). ``dim`` defaults to the catalog's; for other
    models the server is asked once, on first use of :attr:`spec`.
    ``wire_format`` is ``msgpack`` or ``json``; ``output_dtype`` ``float32`` or
    ``float16``. ``machine_profile`` and ``pool`` set SIE's routing headers.
    Requests hold at most ``batch_size`` items and about ``max_batch_bytes``
    bytes of text; ``max_in_flight`` run at once. ``deadline`` bounds each
    request in wall time, retries included, in seconds. ``client`` injects an
    :class:`httpx.Client` (then :meth:`close` leaves it open; the deadline
    holds best against the encoder's own connections, see
    :mod:`sie_index.encoders.sie_http`); ``sleep`` is the function that waits
    between retries. Returned arrays may be read-only
    views of the response (no copy); ``np.array(v)`` makes a writable one.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        dim: int | None = None,
        client: httpx.Client | None = None,
        wire_format: str = "msgpack",
        output_dtype: str = "float32",
        instruction: str | None = None,
        machine_profile: str | None = None,
        pool: str | None = None,
        batch_size: int = 32,
        max_batch_bytes: int = 4 << 20,
        max_in_flight: int = 4,
        deadline: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if wire_format not in ("msgpack", "json"):
            raise InvalidInput(f"wire_format must be 'msgpack' or 'json', not {wire_format!r}")
        if output_dtype not in ACCEPTED_OUTPUT_DTYPES:
            raise InvalidInput(
                f"output_dtype {output_dtype!r} is not supported yet: sie-index takes float32 "
                "or float16 vectors (int8, uint8, binary and ubinary need dequantizing first)"
            )
        if batch_size < 1 or max_in_flight < 1:
            raise InvalidInput(
                f"batch_size and max_in_flight must be >= 1, not {batch_size} and {max_in_flight}"
            )
        if not (deadline > 0 and math.isfinite(deadline)):
            raise InvalidInput(f"deadline must be a finite number of seconds > 0, not {deadline}")
        self.url = url.rstrip("/")
        self.model = model
        self.wire_format = wire_format
        self.output_dtype = output_dtype
        self.instruction = instruction
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.max_in_flight = max_in_flight
        self.deadline = float(deadline)
        self._sleep = sleep
        self._dim = dim if dim is not None else CATALOG_DIMS.get(model)
        self._lanes = Lanes(client, keep=max_in_flight + 1)
        content_type = MSGPACK if wire_format == "msgpack" else JSON
        self._headers = {"Content-Type": content_type, "Accept": content_type}
        if machine_profile:
            self._headers["X-SIE-MACHINE-PROFILE"] = machine_profile
        if pool:
            self._headers["X-SIE-Pool"] = pool
        self._endpoint = f"{self.url}/v1/encode/{quote(model, safe='/')}"
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.stats = SieStats()

    # -- the encoder protocol ---------------------------------------------------------

    @property
    def spec(self) -> EncoderSpec:
        """The spec; asks the server for the dimension when it is not known yet."""
        if self._dim is None:
            probe = self._encode_items([("probe", "dimension probe")], False, "dimension probe")
            self._dim = int(probe[0].shape[1])
        return EncoderSpec(
            kind="sie",
            model=self.model,
            dim=self._dim,
            options={"output_types": ["multivector"], "instruction": self.instruction},
            runtime={"url": self.url, "output_dtype": self.output_dtype},
        )

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, is_query=False)

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, is_query=True)

    def close(self) -> None:
        """Stop the worker threads and close the connections (not an injected client)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._lanes.close()

    def __enter__(self) -> SieEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SieEncoder({self.url!r}, {self.model!r})"

    # -- batching -----------------------------------------------------------------------

    def _plan(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """Request batches as [start, end) ranges, bounded by item count and bytes."""
        batches, start, size = [], 0, 0
        for i, text in enumerate(texts):
            cost = len(text.encode("utf-8")) + 32  # the text plus its id and map keys
            if i > start and (i - start >= self.batch_size or size + cost > self.max_batch_bytes):
                batches.append((start, i))
                start, size = i, 0
            size += cost
        if start < len(texts):
            batches.append((start, len(texts)))
        return batches

    def _encode(self, texts: Sequence[str], *, is_query: bool) -> list[np.ndarray]:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"text {i} is empty or not a string; nothing to encode")
        kind = "query" if is_query else "document"
        # Requests of texts of similar length: the server pads a batch to its longest
        # text, so sorting first (as the local encoders do) halves its work here.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        jobs = [
            ([(str(i), texts[i]) for i in order[a:b]], f"{kind} batch {k} ({b - a} items)")
            for k, (a, b) in enumerate(self._plan([texts[i] for i in order]))
        ]
        results: list[list[np.ndarray]] = []
        if len(jobs) <= 1 or self.max_in_flight == 1:
            results = [self._encode_items(items, is_query, where) for items, where in jobs]
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="sie")
            futures: list[Future[list[np.ndarray]]] = [
                self._executor.submit(self._encode_items, items, is_query, where)
                for items, where in jobs
            ]
            try:
                results = [future.result() for future in futures]
            finally:
                for future in futures:  # after a failure, send nothing more of this call
                    future.cancel()
        out: list[np.ndarray | None] = [None] * len(texts)
        for (items, _), vectors in zip(jobs, results, strict=True):
            for (item_id, _), v in zip(items, vectors, strict=True):
                out[int(item_id)] = v
        return [v for v in out if v is not None]

    def _encode_items(
        self, items: list[tuple[str, str]], is_query: bool, where: str
    ) -> list[np.ndarray]:
        """Encode one batch; on 413, its two halves, recursively."""
        try:
            return self._request(items, is_query, where)
        except _TooLarge:
            if len(items) == 1:
                raise EncoderProtocolError(
                    f"{where}: the server refuses item {items[0][0]} as too large (413) "
                    "even on its own"
                ) from None
        with self._lock:
            self.stats.splits += 1
        half = len(items) // 2
        log.info("%s: 413 from the server, splitting %d items in two", where, len(items))
        return self._encode_items(items[:half], is_query, where) + self._encode_items(
            items[half:], is_query, where
        )

    # -- one request, with retries ----------------------------------------------------------

    def _body(self, items: list[tuple[str, str]], is_query: bool) -> bytes:
        params: dict[str, Any] = {
            "output_types": ["multivector"],
            "output_dtype": self.output_dtype,
            "options": {"is_query": is_query},
        }
        if self.instruction is not None:
            params["instruction"] = self.instruction
        request = {"items": [{"id": i, "text": t} for i, t in items], "params": params}
        return encode_body(request, self._headers["Content-Type"])

    def _request(
        self, items: list[tuple[str, str]], is_query: bool, where: str
    ) -> list[np.ndarray]:
        body = self._body(items, is_query)
        where = f"SIE {self.model} {where}"
        deadline_at = time.monotonic() + self.deadline
        attempts = resource_tries = 0
        last = "none"
        while True:
            if time.monotonic() >= deadline_at:
                raise self._out_of_time(where, attempts, last)
            attempts += 1
            try:
                reply = self._post(body, deadline_at)
            except DeadlinePassed:
                raise self._out_of_time(
                    where, attempts, "no complete answer in time (it may still be running)"
                ) from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last, delay = f"cannot connect to {self.url} ({exc})", self._backoff(attempts)
            except httpx.TimeoutException as exc:
                raise self._out_of_time(
                    where, attempts, f"{type(exc).__name__} (it may still be running)"
                ) from exc
            except httpx.HTTPError as exc:
                raise EncoderUnavailable(f"{where}: request to {self.url} failed: {exc}") from exc
            else:
                status = reply.status
                if status == 200:
                    return self._results(reply, items, where)
                if status == 413:
                    raise _TooLarge
                code, message = error_detail(reply.content, reply.headers.get("content-type", ""))
                last = f"HTTP {status}" + (f" {code}" if code else "")
                retry: float | None = None
                if status == 503 and code == "RESOURCE_EXHAUSTED":
                    resource_tries += 1
                    if resource_tries < _RESOURCE_EXHAUSTED_TRIES:
                        retry = self._backoff(attempts)
                elif status == 429 or (status == 503 and code in _RETRY_AFTER_CODES):
                    # The server's wait, but never less than our backoff: a
                    # Retry-After of 0 must not turn into a busy loop.
                    after = parse_retry_after(reply.headers.get("retry-after"))
                    retry = max(1.0 if after is None else after, self._backoff(attempts))
                elif status == 504:
                    retry = self._backoff(attempts)
                if retry is None:
                    raise self._terminal(status, f"{last} ({message})", where)
                delay = retry
            if time.monotonic() + delay >= deadline_at:
                raise self._out_of_time(where, attempts, f"{last}; next try in {delay:.2f}s")
            log.info("%s: %s, retrying in %.2fs", where, last, delay)
            with self._lock:
                self.stats.retries += 1
            self._sleep(delay)

    def _post(self, body: bytes, deadline_at: float) -> Reply:
        with self._lock:
            self.stats.requests += 1
            self.stats.bytes_sent += len(body)
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        t0 = time.perf_counter()
        try:
            with self._lanes.lane() as lane:
                return exchange(lane, self._endpoint, body, self._headers, deadline_at)
        finally:
            with self._lock:
                self.stats.in_flight -= 1
                self.stats.request_seconds += time.perf_counter() - t0

    @staticmethod
    def _backoff(attempts: int) -> float:
        """Exponential from 50-100 ms after the first attempt, at most 5 s, with jitter
        so that clients refused together do not come back together."""
        return min(5.0, 0.1 * 2.0 ** (attempts - 1)) * random.uniform(0.5, 1.0)  # noqa: S311

    def _out_of_time(self, where: str, attempts: int, last: str) -> EncoderUnavailable:
        tries = f"{attempts} attempt" + ("" if attempts == 1 else "s")
        return EncoderUnavailable(
            f"{where}: deadline of {self.deadline:g}s exceeded after {tries} at {self.url}; "
            f"last: {last}"
        )

    def _terminal(self, status: int, reason: str, where: str) -> Exception:
        message = f"{where}: {reason} from {self.url} (not retried)"
        if status == 400:
            return EncoderProtocolError(message)
        return EncoderUnavailable(message)

    def _results(self, reply: Reply, items: list[tuple[str, str]], where: str) -> list[np.ndarray]:
        with self._lock:
            self.stats.bytes_received += len(reply.content)
            self.stats.items += len(items)
        content_type = reply.headers.get("content-type", self._headers["Accept"])
        parsed = decode_body(reply.content, content_type, where=where)
        vectors = parse_results(parsed, [i for i, _ in items], self._dim, where=where)
        return vectors
