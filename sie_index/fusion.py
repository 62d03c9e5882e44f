"""How hybrid search turns two scores of the same candidates into one ranking.

Every candidate (the token ANN's and BM25's, joined) has an exact MaxSim score
and a BM25 score (0 where it holds no query term). ``fusion`` picks the final score:

- ``"maxsim"``: MaxSim alone; BM25 only widened the candidates;
- ``"rrf"``: reciprocal rank fusion, ``1 / (60 + rank)`` by MaxSim plus the same
  by BM25 (candidates without a query term get no BM25 part), ranks within the
  candidates, ties to the smaller internal id;
- ``"weighted"``: ``weight * MaxSim' + (1 - weight) * BM25'``, each min-max
  normalized over the candidates (a score that is the same for all normalizes to 0).

The functions take the candidates in ascending internal-id order, so a ranking
never depends on the order candidates were found in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_FUSION", "DEFAULT_WEIGHT", "FUSIONS", "RRF_K", "fuse"]

FUSIONS = ("maxsim", "rrf", "weighted")
DEFAULT_FUSION = "weighted"
DEFAULT_WEIGHT = 0.8
RRF_K = 60


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each score, best first, ties to the earlier position."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def _minmax(scores: np.ndarray) -> np.ndarray:
    lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(len(scores), np.float64)
    return (scores - lo) / (hi - lo)


def fuse(maxsim: np.ndarray, lexical: np.ndarray, fusion: str, weight: float) -> np.ndarray:
    """The final scores (float64) of candidates with these MaxSim and BM25 scores."""
    maxsim = np.asarray(maxsim, np.float64)
    lexical = np.asarray(lexical, np.float64)
    if fusion == "maxsim":
        return maxsim
    if fusion == "rrf":
        rrf = 1.0 / (RRF_K + _ranks(maxsim))
        return rrf + np.where(lexical > 0, 1.0 / (RRF_K + _ranks(lexical)), 0.0)
    if fusion == "weighted":
        return weight * _minmax(maxsim) + (1.0 - weight) * _minmax(lexical)
    raise ValueError(f"unknown fusion {fusion!r}")  # SearchParams checked it
