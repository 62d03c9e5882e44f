"""BM25 over the live documents of one snapshot: the lexical side of hybrid search.

The scores are SQLite FTS5's ``bm25()`` (k1 1.2, b 0.75, idf
``log((N - n + 0.5) / (n + 0.5))``, at least 1e-6) for a query of the query's
terms OR-ed, each term counted as often as the query holds it; but ``N``, each
term's document count ``n`` and the average length are those of the snapshot's
live documents across all its segments, never of one segment or of deleted
documents. So an index changed by any sequence of adds, deletes, merges and
compactions scores exactly as a fresh build of the same live documents; the
tests compare against an FTS5 table of those documents built from scratch.

The postings come from each segment's lexicon (:mod:`storage.lexicon`): only the
query's terms are read, verified, and kept in a small cache per snapshot (the
snapshot never changes).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from sie_index.errors import NoLexicon
from sie_index.scoring import top_k
from storage import StoreSnapshot, query_terms

__all__ = ["K1", "B", "LexicalScorer"]

K1 = 1.2
B = 0.75
MIN_IDF = 1e-6
"""FTS5's floor for the idf of a term in at least half the documents."""
POSTINGS_CACHE = 2_000_000
"""Postings (documents) the per-snapshot cache of query terms holds, about 48 MB."""


class _Live(NamedTuple):
    """A term's postings among the live documents: ids, counts, document lengths."""

    docs: np.ndarray
    tfs: np.ndarray
    lengths: np.ndarray


@dataclass(frozen=True)
class LexicalStats:
    """What BM25 counts over a collection, for one query: live documents, their total
    length in terms, and how many of them hold each of the query's terms."""

    documents: int
    length: int
    df: dict[str, int]

    @classmethod
    def combine(cls, parts: Sequence[LexicalStats]) -> LexicalStats:
        """The statistics of the collection made of ``parts`` (disjoint shards)."""
        df: Counter[str] = Counter()
        for p in parts:
            df.update(p.df)
        return cls(
            documents=sum(p.documents for p in parts),
            length=sum(p.length for p in parts),
            df=dict(df),
        )


class LexicalScorer:
    """BM25 of queries against one snapshot's live documents. Safe to share between threads."""

    def __init__(self, snapshot: StoreSnapshot, live: np.ndarray) -> None:
        if snapshot.manifest.lexical_fields is None or not snapshot.docs.lexical:
            raise NoLexicon.of(str(snapshot.folder))
        self.docs = snapshot.docs
        self.live = live
        self.lengths = self.docs.lexicon_lengths()
        self.n_live = int(live.sum())
        self.total_length = int(self.lengths[live].sum())
        self._cache: OrderedDict[str, _Live] = OrderedDict()
        self._cached = 0  # postings held by the cache
        self._lock = threading.Lock()

    def _postings(self, terms: list[str]) -> dict[str, _Live]:
        """Live postings of ``terms`` (empty for a term no live document holds)."""
        out: dict[str, _Live] = {}
        with self._lock:
            for t in terms:
                if t in self._cache:
                    self._cache.move_to_end(t)
                    out[t] = self._cache[t]
        missing = [t for t in terms if t not in out]
        if missing:
            read = self.docs.postings(missing)
            with self._lock:
                for t in missing:
                    docs, tfs = read.get(t, (np.zeros(0, np.int64), np.zeros(0)))
                    keep = self.live[docs]
                    docs = docs[keep]
                    out[t] = _Live(docs, tfs[keep], self.lengths[docs].astype(np.float64))
                    if t not in self._cache:
                        self._cache[t] = out[t]
                        self._cached += len(docs)
                while self._cached > POSTINGS_CACHE and len(self._cache) > 1:
                    self._cached -= len(self._cache.popitem(last=False)[1].docs)
        return out

    def stats(self, text: str) -> LexicalStats:
        """This snapshot's share of the statistics a query's BM25 needs (a sharded
        index adds its shards' up, so every shard scores as one index would)."""
        terms = sorted(set(query_terms(text)))
        return self._own_stats(self._postings(terms))

    def _own_stats(self, postings: dict[str, _Live]) -> LexicalStats:
        """This snapshot's statistics for the terms of ``postings``."""
        return LexicalStats(
            documents=self.n_live,
            length=self.total_length,
            df={t: len(p.docs) for t, p in postings.items()},
        )

    def scores(
        self, text: str, stats: LexicalStats | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids (ascending) and BM25 scores of every live document holding a
        term of ``text`` (and ``allowed``, where given); a text without terms matches
        nothing. ``stats``: the collection's statistics when it is more than this
        snapshot (shards)."""
        counts = Counter(query_terms(text))
        postings = self._postings(sorted(counts))
        if stats is None:
            stats = self._own_stats(postings)
        if not counts or not stats.length or not stats.documents:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        avgdl = stats.length / stats.documents
        # one dense accumulator: a term's postings name each document once, so a
        # fancy-indexed add is exact, and costs the postings, not a sort of them
        acc = np.zeros(len(self.lengths), np.float64)
        for term, times in counts.items():
            p = postings[term]
            if not len(p.docs):
                continue
            n = stats.df.get(term, len(p.docs))
            idf = math.log((stats.documents - n + 0.5) / (n + 0.5))
            idf = idf if idf > 0 else MIN_IDF
            # the length part of BM25's denominator, a document
            norm = K1 * (1 - B + B * p.lengths / avgdl)
            acc[p.docs] += times * idf * (p.tfs * (K1 + 1)) / (p.tfs + norm)
        if allowed is not None:
            np.multiply(acc, allowed, out=acc)
        ids = np.flatnonzero(acc)  # every term's part is positive
        return ids, acc[ids]

    def top(
        self, text: str, allowed: np.ndarray, n: int, stats: LexicalStats | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``n`` best allowed documents by BM25 (ascending ids), with every
        allowed matching document's ids and scores (ascending ids) to look others up."""
        ids, scores = self.scores(text, stats, allowed)
        best = np.sort(top_k(scores, ids, n)[1]) if len(ids) > n else ids
        return best, ids, scores
