"""The search pipeline over an opened index folder.

For each query (a ``Q`` matrix of query-token vectors):

1. the token index returns the ``k_token`` nearest document tokens of every
   query token, for all query tokens in one FAISS call;
2. token rows map to documents; deleted and filtered-out documents drop out;
3. each candidate gets an approximate score: per query token, the best
   similarity seen for it, or, when none was seen, the lowest similarity
   returned for that query token (an upper bound of what was missed, as in
   XTR/WARP); summed over query tokens (steps 2 and 3:
   :mod:`sie_index.candidate_scores`, compiled with numba);
4. on a large index (``n_centroid`` above ``n_rerank``: the index's defaults set
   it from its size), the best ``n_centroid`` by that score are screened down to
   ``n_rerank`` by centroid interaction, every token of a candidate standing in
   for its inverted list's centroid (:mod:`sie_index.centroid_scores`); then the
   best ``n_rerank`` candidates are rescored by exact MaxSim
   over their stored vectors (float16 rows: a compiled kernel,
   :mod:`sie_index.fused_maxsim`; else a segment max);
5. the top ``k`` by exact score are returned, ties broken by internal id.

A hybrid search (``params.hybrid``, with the query's text) joins BM25's best
``lexical_k`` allowed documents (:mod:`sie_index.lexical`) to the candidates of
step 4, scores the union by exact MaxSim, and ranks it by the fused score
(:mod:`sie_index.fusion`); filters, ids and deletes bound both sides.

When few documents are allowed (a selective filter, or a small index: at most
``params.exact_below()``, by default ``8 * max(n_rerank, k)``), the ANN is
skipped and every allowed document is scored exactly, so a filter never
silently empties a list. A filter is evaluated once per snapshot and kept (the
snapshot never changes), so repeating it costs nothing.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from sie_index import candidate_scores, centroid_scores, core_parts, fused_maxsim
from sie_index.errors import InvalidInput, UnknownFilterField
from sie_index.filters import CompiledFilter, compile_filter
from sie_index.fusion import fuse
from sie_index.lexical import LexicalScorer, LexicalStats
from sie_index.params import Hit, MatchedToken, SearchParams
from sie_index.phases import PhaseTimes
from sie_index.scoring import segment_maxsim_explain, segment_maxsim_torch, token_blocks, top_k
from sie_index.search_defaults import derive_defaults
from storage import NearLists, Predicate, RowFilter, StoreSnapshot

__all__ = ["Ranked", "Searcher"]

FILTER_CACHE = 32
EXACT_CHUNK_TOKENS = 262_144
NEAR_LISTS = 64
"""Lists per query token whose centroid similarity a centroid screen uses (the rest
are credited with the least of these): on the 730k-document corpus 64 held MRR@10
as every list did, 16 lost 0.002 (:mod:`sie_index.centroid_scores`)."""


@dataclass(frozen=True)
class Ranked:
    """Internal ids and exact scores of one query's results, best first."""

    doc_ids: np.ndarray  # int64 [n]
    scores: np.ndarray  # float32 [n]; a hybrid search's: the fused scores, float64
    explain: list[tuple[MatchedToken, ...]] | None = None
    maxsim: np.ndarray | None = None
    """A hybrid search's: each result's exact MaxSim score."""
    bm25: np.ndarray | None = None
    """A hybrid search's: each result's BM25 score."""


@dataclass(frozen=True)
class _Job:
    """One query of a batch after the ANN: its token vectors, its text (hybrid), the
    ANN's rows, and the lists nearest its tokens (the batch's, and its slice)."""

    Q: np.ndarray
    text: tuple[str, LexicalStats | None] | None
    sims: np.ndarray
    rows: np.ndarray
    near: tuple[NearLists, int, int] | None


class _Allowed:
    """The documents a filter allows in one snapshot, and the FAISS selectors of their
    token rows (made on the first ANN search that needs them)."""

    def __init__(self, mask: np.ndarray, unknown: tuple[str, ...] = ()) -> None:
        self.mask = mask
        self.rows: RowFilter | None = None
        self.unknown = unknown  # fields no document has, when the mask is empty


KEEP_BLAS_ENV = "SIE_INDEX_KEEP_BLAS_THREADS"
_blas_lock = threading.Lock()
_product_lock = threading.Lock()  # the exact rerank's products, one at a time (see _exact)
_blas_done = False


def limit_numpy_blas() -> None:
    """Limit NumPy's own BLAS (OpenBLAS on pthreads) to one thread, once a process.

    Its threads busy-wait for a while after each product: the exact MaxSim's small
    products (NumPy's until the rerank moved to torch's) left them spinning on the
    cores FAISS's threads needed next, which doubled the ANN's time (8 -> 15 ms a
    query on 2 cores); explanations and the exhaustive oracle still use NumPy. One
    thread loses little on products this size, and a batch runs its queries on
    threads of its own. A scoped limit does not help: restoring the thread count
    wakes the threads, which spin again. So the limit stays for the process (the
    first search sets it) unless the environment variable
    ``SIE_INDEX_KEEP_BLAS_THREADS`` is set. FAISS's BLAS (OpenMP, waiting passively)
    is left alone."""
    global _blas_done
    with _blas_lock:
        if _blas_done or os.environ.get(KEEP_BLAS_ENV):
            return
        controller = ThreadpoolController()
        for info in controller.info():
            if info["user_api"] == "blas" and f"{os.sep}numpy" in info["filepath"]:
                controller.select(filepath=info["filepath"]).limit(limits=1)
        _blas_done = True


def _phase(timings: PhaseTimes | None, name: str) -> AbstractContextManager[None]:
    return nullcontext() if timings is None else timings.phase(name)


class Searcher:
    """Runs queries against one :class:`StoreSnapshot`. Safe to share between threads."""

    def __init__(self, snapshot: StoreSnapshot) -> None:
        self.snapshot = snapshot
        # mapped int32, never copied: 4 bytes a token stay in the page cache, not the heap
        self.token_doc = snapshot.tokens.token_doc
        spans = snapshot.spans
        self.token_start = spans.token_start
        self.token_count = spans.token_count
        self.live = ~spans.deleted
        self.n_docs = len(spans.token_start)
        self._masks: OrderedDict[str, _Allowed] = OrderedDict()
        self._masks_lock = threading.Lock()
        self._lexical: LexicalScorer | None = None
        trained = (snapshot.manifest.token_index.get("trained") or {}).get("tokens")
        if not snapshot.plan.kind.startswith("ivf") or not isinstance(trained, int):
            trained = None  # only an inverted file's lists outgrow their training
        live_tokens = int(self.token_count[self.live].sum())
        # only an inverted file's tokens have lists to stand in for them (the screen)
        self.defaults = derive_defaults(
            live_tokens, trained, screen=snapshot.plan.kind.startswith("ivf")
        )
        """The ``k_token``, ``nprobe``, ``n_rerank`` and ``n_centroid`` a search leaves
        unset takes."""

    def lexical(self) -> LexicalScorer:
        """BM25 over this snapshot's live documents, made on first use
        (:class:`NoLexicon` for an index that keeps none)."""
        if self._lexical is None:
            with self._masks_lock:
                if self._lexical is None:
                    self._lexical = LexicalScorer(self.snapshot, self.live)
        return self._lexical

    # -- filters -------------------------------------------------------------

    def _filtered(self, flt: CompiledFilter | None, budget_s: float) -> _Allowed:
        """The documents a filter allows, kept for the snapshot's life (the last
        ``FILTER_CACHE`` filters); evaluating it may take ``budget_s`` seconds."""
        if flt is None:
            return _Allowed(self.live)
        with self._masks_lock:
            entry = self._masks.get(flt.key)
            if entry is not None:
                self._masks.move_to_end(flt.key)
        if entry is None:
            mask = self._mask(flt.predicate, budget_s)
            # only an empty answer is checked: a filter that matches documents is
            # no typo, and the check costs a scan of the metadata a field
            unknown = () if mask.any() else self._unknown_fields(flt.fields, budget_s)
            entry = _Allowed(mask, unknown)
            with self._masks_lock:
                self._masks[flt.key] = entry
                while len(self._masks) > FILTER_CACHE:
                    self._masks.popitem(last=False)
        if entry.unknown:
            raise UnknownFilterField(entry.unknown)
        return entry

    def _mask(self, predicate: Predicate, budget_s: float) -> np.ndarray:
        ids = self.snapshot.docs.doc_ids_where(predicate, budget_s=budget_s)
        mask = np.zeros(self.n_docs, dtype=bool)
        mask[ids] = True  # storage checked every id is a document of its segment
        mask &= self.live
        mask.flags.writeable = False
        return mask

    def _unknown_fields(self, fields: Sequence[str], budget_s: float) -> tuple[str, ...]:
        """The fields no live document of this snapshot has."""
        unknown = []
        for name in fields:
            exists = compile_filter({name: {"$exists": True}})
            assert exists is not None
            if not self._mask(exists.predicate, budget_s).any():
                unknown.append(name)
        return tuple(unknown)

    def _row_filter(self, allowed: _Allowed) -> RowFilter:
        """Selectors for the token rows of allowed documents, made once per filter: a
        filtered ANN returns the nearest allowed tokens, not the nearest tokens of
        which a filter then leaves few."""
        if allowed.rows is None:
            docs = self.token_doc
            rows = np.zeros(len(docs), dtype=bool)
            ok = docs >= 0
            rows[ok] = allowed.mask[docs[ok]]
            allowed.rows = self.snapshot.token_index.row_filter(rows)
        return allowed.rows

    # -- the pipeline ----------------------------------------------------------

    def rank(
        self,
        queries: Sequence[np.ndarray],
        params: SearchParams,
        *,
        explain: bool = False,
        threads: int | None = None,
        timings: PhaseTimes | None = None,
        texts: Sequence[str | None] | None = None,
        lexical_stats: Sequence[LexicalStats] | None = None,
    ) -> list[Ranked]:
        """Exact-MaxSim rankings of many queries (each ``Q`` float32 ``[nq, dim]``);
        ``timings`` gathers the seconds of each phase. A hybrid search
        (``params.hybrid``) needs each query's text in ``texts``; ``lexical_stats``,
        each query's BM25 statistics of a collection larger than this snapshot (a
        shard's: the whole sharded index's)."""
        if not queries:
            return []
        params = params.resolved(self.defaults)
        # each query's text and BM25 statistics, for a hybrid search
        words: list[tuple[str, LexicalStats | None] | None] = [None] * len(queries)
        if params.hybrid:
            if texts is None or len(texts) != len(queries) or any(t is None for t in texts):
                raise InvalidInput("hybrid search needs each query's text, not only its vectors")
            self.lexical()  # an index without a lexicon fails here, before any work
            stats: Sequence[LexicalStats | None] = lexical_stats or [None] * len(queries)
            words = [(str(t), st) for t, st in zip(texts, stats, strict=True)]
        limit_numpy_blas()
        codec = self.snapshot.codec
        if codec.projection is not None:  # queries go where the stored vectors are
            queries = [codec.project(Q) for Q in queries]
        flt = params.compiled_filter()
        filtered = self._filtered(flt, params.filter_budget_s)
        allowed = filtered.mask
        n_allowed = int(allowed.sum())
        if n_allowed == 0:
            empty = Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), [] if explain else None)
            return [empty for _ in queries]
        if n_allowed <= params.exact_below():
            candidates = np.flatnonzero(allowed)
            return self._map(
                lambda job: self._final(
                    job[0], job[1], candidates, allowed, params, explain, timings
                ),
                list(zip(queries, words, strict=True)),
                threads,
            )
        lengths = [len(Q) for Q in queries]
        stacked = np.concatenate(queries).astype(np.float32, copy=False)
        assert params.k_token is not None and params.nprobe is not None  # resolved
        screen = params.screen_depth()
        with _phase(timings, "ann"):
            sims, rows, near = self.snapshot.token_index.search_with_lists(
                stacked,
                params.k_token,
                lists=max(NEAR_LISTS, params.nprobe) if screen else 0,
                nprobe=params.nprobe,
                ef_search=params.ef_search,
                rows=None if flt is None else self._row_filter(filtered),
            )
        bounds = np.cumsum([0, *lengths])
        jobs = [
            _Job(
                queries[i],
                words[i],
                sims[bounds[i] : bounds[i + 1]],
                rows[bounds[i] : bounds[i + 1]],
                None if near is None else (near, int(bounds[i]), int(bounds[i + 1])),
            )
            for i in range(len(queries))
        ]
        return self._map(
            lambda job: self._rerank(job, allowed, params, explain, timings), jobs, threads
        )

    @staticmethod
    def _map(fn: Any, items: Sequence[Any], threads: int | None) -> list[Ranked]:
        workers = threads or min(len(items), os.cpu_count() or 1)
        if workers <= 1 or len(items) == 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, items))

    def candidates(
        self, sims: np.ndarray, rows: np.ndarray, allowed: np.ndarray, n_rerank: int
    ) -> np.ndarray:
        """The best ``n_rerank`` documents by approximate score, by internal id
        (:mod:`sie_index.candidate_scores`)."""
        return candidate_scores.best(sims, rows, self.token_doc, allowed, n_rerank)

    def _rerank(
        self,
        job: _Job,
        allowed: np.ndarray,
        params: SearchParams,
        explain: bool,
        timings: PhaseTimes | None,
    ) -> Ranked:
        screen = params.screen_depth() if job.near is not None else 0
        with _phase(timings, "candidates"):
            cand = self.candidates(job.sims, job.rows, allowed, screen or params.rerank_depth())
        if screen:
            with _phase(timings, "centroids"):
                cand = self.screened(cand, job.near, params.rerank_depth())
        return self._final(job.Q, job.text, cand, allowed, params, explain, timings)

    def screened(
        self, cand: np.ndarray, near: tuple[NearLists, int, int] | None, n_rerank: int
    ) -> np.ndarray:
        """The best ``n_rerank`` of ``cand`` by centroid score
        (:mod:`sie_index.centroid_scores`), for the query tokens ``first:stop`` of
        ``near``; ``cand`` itself without lists to score by."""
        row_lists = self.snapshot.token_index.row_lists()
        if near is None or row_lists is None:
            return cand
        lists, first, stop = near
        return centroid_scores.best(
            cand, self.token_start, self.token_count, row_lists, lists, first, stop, n_rerank
        )

    def _final(
        self,
        Q: np.ndarray,
        text: tuple[str, LexicalStats | None] | None,
        cand: np.ndarray,
        allowed: np.ndarray,
        params: SearchParams,
        explain: bool,
        timings: PhaseTimes | None,
    ) -> Ranked:
        """The top ``k`` of ``cand`` by exact MaxSim; with a query ``text`` (a hybrid
        search), of ``cand`` joined by BM25's best, by the fused score."""
        if text is None:
            return self._exact(Q, cand, params.k, explain, timings)
        with _phase(timings, "lexical"):
            best, ids, scores = self.lexical().top(text[0], allowed, params.lexical_k, text[1])
            union = np.union1d(cand, best)
            bm25 = np.zeros(len(union), np.float64)
            if len(ids):
                at = np.minimum(np.searchsorted(ids, union), len(ids) - 1)
                found = ids[at] == union
                bm25[found] = scores[at[found]]
        maxsim = self._maxsim(Q, union, timings)
        fused = fuse(maxsim, bm25, params.fusion, params.fusion_weight)
        top_scores, doc_ids = top_k(fused, union.astype(np.int64), params.k)
        pick = np.searchsorted(union, doc_ids)
        return Ranked(
            doc_ids,
            top_scores,
            self._explain(np.ascontiguousarray(Q, dtype=np.float32), doc_ids) if explain else None,
            maxsim=maxsim[pick],
            bm25=bm25[pick],
        )

    def _vectors(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Stored vectors of whole documents as float32, decoded by the codec: only
        the candidates the rerank scores are ever decoded. Float16 rows are widened
        by torch, about three times faster than NumPy, which would dominate the rerank."""
        D = self.snapshot.tokens.read_spans(starts, counts)
        if D.dtype != np.float16:
            return D
        import torch

        widened: np.ndarray = torch.from_numpy(np.ascontiguousarray(D)).float().numpy()
        return widened

    def _exact(
        self,
        Q: np.ndarray,
        cand: np.ndarray,
        k: int,
        explain: bool,
        timings: PhaseTimes | None = None,
    ) -> Ranked:
        """Exact MaxSim of ``cand`` documents, top ``k``."""
        scores = self._maxsim(Q, cand, timings)
        with _phase(timings, "maxsim"):
            top_scores, doc_ids = top_k(scores, cand.astype(np.int64), k)
        matched = None
        if explain:
            matched = self._explain(np.ascontiguousarray(Q, dtype=np.float32), doc_ids)
        return Ranked(doc_ids, top_scores, matched)

    def _maxsim(self, Q: np.ndarray, cand: np.ndarray, timings: PhaseTimes | None) -> np.ndarray:
        """Exact MaxSim of each of ``cand`` documents (float32)."""
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        scores = np.empty(len(cand), np.float32)
        counts = self.token_count[cand]
        # float16 rows as stored: the compiled kernel, for a query it scores exactly
        fused = self.snapshot.codec.name == "f16" and fused_maxsim.fits(Q)
        run = fused_maxsim.kernel() if fused else None
        # bounded memory: score candidates in groups of about EXACT_CHUNK_TOKENS tokens
        for start, stop in token_blocks(counts, EXACT_CHUNK_TOKENS):
            group, group_counts = cand[start:stop], counts[start:stop]
            if run is not None:
                scores[start:stop] = self._fused(Q, group, group_counts, run, timings)
                continue
            with _phase(timings, "reads"):
                D = self._vectors(self.token_start[group], group_counts)
            with _phase(timings, "maxsim"), _product_lock:
                # torch's product on its own pool of a thread a core: one product at a
                # time, so a batch's threads never multiply into threads x cores (they
                # read and pick candidates meanwhile), and every product runs on the
                # same pool, so batch and single scores are identical
                scores[start:stop] = segment_maxsim_torch(Q, D, group_counts)
        return scores

    def _fused(
        self,
        Q: np.ndarray,
        cand: np.ndarray,
        counts: np.ndarray,
        run: fused_maxsim.Kernel,
        timings: PhaseTimes | None,
    ) -> np.ndarray:
        """Exact MaxSim of float16 rows by the compiled kernel, in parts of about equal
        tokens scored side by side, one a core (:mod:`sie_index.core_parts`). The rows
        are read in one call: split between threads too, the reads took as long at
        k=100 and 0.1 ms longer at k=10 (the thread handoff)."""
        with _phase(timings, "reads"):
            rows = self.snapshot.tokens.read_spans(self.token_start[cand], counts)
        ends = np.concatenate([[0], np.cumsum(counts)])
        with _phase(timings, "maxsim"), _product_lock:
            # one product at a time, as torch's: a batch's threads read meanwhile
            best = core_parts.on_cores(
                lambda part: fused_maxsim.maxima(
                    Q, rows[ends[part[0]] : ends[part[1]]], counts[part[0] : part[1]], run
                ),
                core_parts.split(counts),
            )
        # each document's row of maxima sums in the same (pairwise) order as NumPy's
        summed: np.ndarray = np.concatenate(best).sum(axis=1)
        return summed

    def _explain(self, Q: np.ndarray, doc_ids: np.ndarray) -> list[tuple[MatchedToken, ...]]:
        if len(doc_ids) == 0:
            return []
        counts = self.token_count[doc_ids]
        D = self._vectors(self.token_start[doc_ids], counts)
        _, best_row, best_sim = segment_maxsim_explain(Q, D, counts)
        offsets = np.cumsum(counts) - counts
        # a pooled document's rows each stand for the tokens its sources name
        sources = self.token_sources(doc_ids)
        out = []
        for d, doc_id in enumerate(doc_ids.tolist()):
            src = sources.get(doc_id)
            matched = []
            for qi in range(len(Q)):
                row = int(best_row[d, qi] - offsets[d])
                merged = None if src is None else tuple(np.flatnonzero(src == row).tolist())
                matched.append(
                    MatchedToken(
                        query_token=qi,
                        doc_token=row,
                        similarity=float(best_sim[d, qi]),
                        merged_tokens=merged,
                    )
                )
            out.append(tuple(matched))
        return out

    def token_sources(self, doc_ids: np.ndarray) -> dict[int, np.ndarray]:
        """Of the pooled documents among ``doc_ids``: the stored row (within the
        document) each original token was merged into (see :mod:`sie_index.pooling`)."""
        if self.snapshot.manifest.pool_factor == 1:
            return {}
        return self.snapshot.docs.sources(doc_ids.tolist())

    # -- hits ------------------------------------------------------------------

    def hits(
        self,
        rankings: Sequence[Ranked],
        *,
        text: bool = False,
        metadata: bool = False,
        timings: PhaseTimes | None = None,
    ) -> list[list[Hit]]:
        """Turn rankings into hit lists: external ids from the snapshot's table (read
        and checked at open), text and metadata, when asked for, from SQLite once for
        all of them (a document several queries found is read once)."""
        with _phase(timings, "sqlite"):
            wanted = sorted({d for ranked in rankings for d in ranked.doc_ids.tolist()})
            external = dict(zip(wanted, self.snapshot.external_ids.of(wanted), strict=True))
            stored = (
                self.snapshot.docs.fetch(wanted, text=text, metadata=metadata)
                if text or metadata
                else {}
            )
        return [
            [
                Hit(
                    doc_id=doc_id,
                    external_id=external[doc_id],
                    score=float(score),
                    text=stored[doc_id].text if text else None,
                    metadata=stored[doc_id].metadata if metadata else None,
                    explain=ranked.explain[i] if ranked.explain is not None else None,
                    maxsim=float(ranked.maxsim[i]) if ranked.maxsim is not None else None,
                    bm25=float(ranked.bm25[i]) if ranked.bm25 is not None else None,
                )
                for i, (doc_id, score) in enumerate(
                    zip(ranked.doc_ids.tolist(), ranked.scores.tolist(), strict=True)
                )
            ]
            for ranked in rankings
        ]
