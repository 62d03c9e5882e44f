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

import numpy as np

from sie_index.errors import NoLexicon
from sie_index.scoring import top_k
from storage import StoreSnapshot, query_terms

__all__ = ["K1", "B", "LexicalScorer"]

K1 = 1.2
B = 0.75
MIN_IDF = 1e-6
"""FTS5's floor for the idf of a term in at least half the documents."""
POSTINGS_CACHE = 4096


class LexicalScorer:
    """BM25 of queries against one snapshot's live documents. Safe to share between threads."""

    def __init__(self, snapshot: StoreSnapshot, live: np.ndarray) -> None:
        if snapshot.manifest.lexical_fields is None or not snapshot.docs.lexical:
            raise NoLexicon(str(snapshot.folder))
        self.docs = snapshot.docs
        self.live = live
        lengths = self.docs.lexicon_lengths()
        self.n_live = int(live.sum())
        total = float(lengths[live].sum())
        self.avgdl = total / self.n_live if self.n_live else 0.0
        # the length part of BM25's denominator, a document
        self._norm = K1 * (1 - B + B * lengths / self.avgdl) if self.avgdl else None
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _postings(self, terms: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Live postings of ``terms`` (the ones any live document holds)."""
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
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
                    out[t] = (docs[keep], tfs[keep])
                    self._cache[t] = out[t]
                while len(self._cache) > POSTINGS_CACHE:
                    self._cache.popitem(last=False)
        return out

    def scores(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids (ascending) and BM25 scores of every live document holding a
        term of ``text``; a text without terms matches nothing."""
        counts = Counter(query_terms(text))
        if not counts or self._norm is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        norm = self._norm
        postings = self._postings(sorted(counts))
        ids, parts = [], []
        for term, times in counts.items():
            docs, tfs = postings[term]
            if not len(docs):
                continue
            n = len(docs)
            idf = math.log((self.n_live - n + 0.5) / (n + 0.5))
            idf = idf if idf > 0 else MIN_IDF
            ids.append(docs)
            parts.append(times * idf * (tfs * (K1 + 1)) / (tfs + norm[docs]))
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        uniq, inverse = np.unique(np.concatenate(ids), return_inverse=True)
        return uniq, np.bincount(inverse, weights=np.concatenate(parts), minlength=len(uniq))

    def top(
        self, text: str, allowed: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``n`` best allowed documents by BM25 (ascending ids), with every
        allowed matching document's ids and scores (ascending ids) to look others up."""
        ids, scores = self.scores(text)
        keep = allowed[ids]
        ids, scores = ids[keep], scores[keep]
        best = np.sort(top_k(scores, ids, n)[1]) if len(ids) > n else ids
        return best, ids, scores
