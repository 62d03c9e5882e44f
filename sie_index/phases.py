"""Where a search's time goes: wall seconds per phase of the pipeline, summed over
the queries (and over the threads that ran them), for benchmarks and profiling.

Pass a :class:`PhaseTimes` as ``timings=`` to ``Index.rank`` or
``Index.search_batch``; the search adds to it as it goes. Phases, in pipeline
order (see :mod:`sie_index.search`):

- ``ann``: the FAISS token search (one call for all queries of a batch);
- ``candidates``: token rows to documents, deleted and filtered ones out, and the
  approximate score of each candidate;
- ``centroids``: the screen of the candidates by centroid interaction, where a
  search runs one (``SearchParams.n_centroid``);
- ``lexical``: a hybrid search's BM25 (query terms, postings, scores, its best)
  and the join with the token ANN's candidates;
- ``reads``: the stored vectors of the candidates, read and decoded;
- ``maxsim``: exact MaxSim of the candidates and the top k;
- ``sqlite``: ids (and text, metadata) of the hits.

When threads run queries side by side, their seconds add up, so the sum can
exceed the batch's wall time: it says how much work each phase is, not how long
the batch took.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PHASES", "PhaseTimes"]

PHASES = ("ann", "candidates", "centroids", "lexical", "reads", "maxsim", "sqlite")


class PhaseTimes:
    """Seconds per phase, added to by searches (thread-safe)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._lock = threading.Lock()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            with self._lock:
                self.seconds[name] += elapsed

    def per_query_ms(self, queries: int) -> dict[str, float]:
        """Milliseconds a query in each phase."""
        return {name: 1000 * s / max(queries, 1) for name, s in self.seconds.items()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={s:.3f}s" for name, s in self.seconds.items())
        return f"PhaseTimes({parts})"
