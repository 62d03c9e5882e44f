"""The coarse step of an IVF search: which ``nprobe`` inverted lists a query token visits.

FAISS finds them by scoring the query token against every centroid. For one query
(about 10 tokens) it takes its path without BLAS (BLAS only from 20 rows on), and
the centroids of a large index no longer fit the caches: on the full debian-pkgs
index (IVF8192, 384 dims, 12.6 MB of centroids) the scan was about a third of the
token ANN, and it doubles with every doubling of ``nlist`` (the 730k corpus has
16,384 lists). From :data:`COARSE_GRAPH_MIN_LISTS` lists on, a search instead asks
an HNSW graph over the centroids (:class:`CoarseGraph`) for the ``nprobe`` best,
then scans those lists with FAISS's ``search_preassigned``: the codes, distances
and results past this step are FAISS's own, from the same lists.

The graph is approximate: it may miss one of the ``nprobe`` best lists, usually the
last, which then visits the next best instead (``scripts/bench.py phases``:
measured in the README). It is built from the index's own centroids the first
time a search needs it (a fraction of a second for 8,192 centroids), on one
OpenMP thread so that every process builds the same graph and a search returns
the same rows each time; nothing of it is stored, so it cannot disagree with the
index it was built from.
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np

__all__ = ["COARSE_GRAPH_MIN_LISTS", "CoarseGraph", "coarse_ef", "ivf_of"]

COARSE_GRAPH_MIN_LISTS = 2048
"""Inverted lists from which an IVF search finds its lists through the graph;
below it the scan of every centroid is cheap and exact."""
PARALLEL_OVER_QUERIES = 3  # FAISS's IndexIVF.parallel_mode: queries split among threads
GRAPH_M = 16  # neighbours a centroid keeps: 32 found no more lists at the same cost
GRAPH_EF_CONSTRUCTION = 80


def coarse_ef(nprobe: int) -> int:
    """The graph's search breadth for ``nprobe`` lists: at 4x (and at least 64) the
    graph found 98.4% of the 16 best lists of FAISS's full scan on the full
    debian-pkgs index; 2x found 96%."""
    return max(64, 4 * nprobe)


def ivf_of(index: Any) -> Any | None:
    """``index`` itself when it is an inverted file FAISS can search with lists given
    (not wrapped in a transform), else None."""
    return index if isinstance(index, faiss.IndexIVF) else None


class CoarseGraph:
    """An HNSW graph over the centroids of one IVF index (inner product), made on
    first use and then shared by every search of that index."""

    def __init__(self, ivf: Any) -> None:
        self.ivf = ivf
        # FAISS's own search splits the queries among its threads and calls
        # search_preassigned once per slice, so that call, left at parallel mode 0,
        # scans on one thread: a search through the graph scanned its lists on one
        # core (1.65 ms of the 2.4 ms token ANN on the full debian-pkgs index). Mode 3
        # shares the query tokens among the threads inside the call (1.0 ms); each
        # token is still scanned whole by one thread, so the results are the same.
        ivf.parallel_mode = PARALLEL_OVER_QUERIES
        self._graph: Any | None = None
        self._lock = threading.Lock()

    def _built(self) -> Any:
        if self._graph is None:
            with self._lock:
                if self._graph is None:
                    centroids = self.ivf.quantizer.reconstruct_n(0, self.ivf.nlist)
                    graph = faiss.IndexHNSWFlat(
                        centroids.shape[1], GRAPH_M, faiss.METRIC_INNER_PRODUCT
                    )
                    graph.hnsw.efConstruction = GRAPH_EF_CONSTRUCTION
                    # one thread: FAISS inserts in parallel in an order that varies
                    # from run to run, and the graph (so the lists found) with it;
                    # OpenMP's thread count is this thread's own setting
                    before = faiss.omp_get_max_threads()
                    faiss.omp_set_num_threads(1)
                    try:
                        graph.add(np.ascontiguousarray(centroids, dtype=np.float32))
                    finally:
                        faiss.omp_set_num_threads(before)
                    self._graph = graph
        return self._graph

    def nearest(self, Q: np.ndarray, n: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` lists the graph finds nearest each row of ``Q`` (float32,
        C-order), best first: ``(sims [nq, n] float32, lists [nq, n] int64)``, -1
        where none. The graph is searched as wide as ``nprobe`` lists need
        (:func:`coarse_ef`) or ``n``, if wider: FAISS keeps the ``ef`` best lists it
        reached and returns the first ``n`` of them, so the first ``nprobe`` of a
        wider answer are the lists a search for ``nprobe`` alone visits."""
        graph = self._built()
        n = max(1, min(n, self.ivf.nlist))
        search = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        search.efSearch = max(coarse_ef(nprobe), n)
        sims, lists = graph.search(Q, n, params=search)
        return (
            np.ascontiguousarray(sims, dtype=np.float32),
            np.ascontiguousarray(lists, dtype=np.int64),
        )

    def search(
        self,
        Q: np.ndarray,
        k: int,
        nprobe: int,
        params: Any,
        near: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The IVF index's top ``k`` of each row of ``Q`` (float32, C-order) over the
        ``nprobe`` lists the graph finds (the first ``nprobe`` of ``near``, a
        :meth:`nearest` answer, when given): ``(sims, ids)`` as ``ivf.search``
        returns them; ``params`` (``SearchParametersIVF``) carries the selector."""
        nprobe = max(1, min(nprobe, self.ivf.nlist))
        coarse_sims, lists = near if near is not None else self.nearest(Q, nprobe, nprobe)
        coarse_sims = np.ascontiguousarray(coarse_sims[:, :nprobe])
        lists = np.ascontiguousarray(lists[:, :nprobe])  # -1 where none: skipped
        n = len(Q)
        sims = np.empty((n, k), np.float32)
        ids = np.empty((n, k), np.int64)
        params.nprobe = nprobe
        self.ivf.search_preassigned_c(
            n,
            faiss.swig_ptr(Q),
            k,
            faiss.swig_ptr(lists),
            faiss.swig_ptr(coarse_sims),
            faiss.swig_ptr(sims),
            faiss.swig_ptr(ids),
            False,
            params,
        )
        return sims, ids
