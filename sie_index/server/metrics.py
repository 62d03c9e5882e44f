"""Prometheus metrics of one server, in a registry of its own.

Per endpoint: requests by method and status (``sie_index_requests_total``) and a
latency histogram (``sie_index_request_seconds``). Per commit: requests it
carried and its seconds. Read at each scrape from the index and the writer:
documents, deleted documents, tokens, bytes on disk, segments, generation, and
the write queue's depth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_GAUGES = {
    "documents": "live documents",
    "deleted_documents": "documents deleted but not yet purged by a compaction",
    "tokens": "stored token vectors",
    "total_bytes": "bytes of the index's files",
    "segments": "segments of the current generation",
    "generation": "the generation searches read",
}


class _IndexCollector(Collector):
    def __init__(self, info: Callable[[], dict[str, Any]], queue_depth: Callable[[], int]):
        self._info = info
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            info = self._info()
        except Exception:  # a closed index has nothing to report; the scrape goes on
            info = {}
        for name, help_text in _GAUGES.items():
            if name in info:
                yield GaugeMetricFamily(f"sie_index_{name}", help_text, value=float(info[name]))
        yield GaugeMetricFamily(
            "sie_index_write_queue_depth",
            "write requests queued or being committed",
            value=float(self._queue_depth()),
        )


class ServerMetrics:
    """The counters and histograms a server updates, and its text exposition."""

    def __init__(self, info: Callable[[], dict[str, Any]], queue_depth: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sie_index_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sie_index_request_seconds",
            "seconds from a request's arrival to its answer, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_requests = Histogram(
            "sie_index_commit_requests",
            "write requests one commit carried",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "sie_index_commit_seconds",
            "seconds of one commit, refresh included",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_IndexCollector(info, queue_depth))

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def commit(self, requests: int, seconds: float) -> None:
        self.commit_requests.observe(requests)
        self.commit_seconds.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
