"""Search settings derived from the index's size: the defaults that scale.

``k_token``, ``nprobe`` and ``n_rerank`` left unset in :class:`SearchParams` (None)
take the values :func:`derive_defaults` gives for the index searched, made once a
snapshot from what its manifest records; any value a caller sets wins. The values
and what they came from are reported by ``Index.info()["search_defaults"]``.

Why these values (a sweep of settings against exhaustive MaxSim, this session's
probe; the README's tables come from ``scripts/bench.py scale``). On the full
debian-pkgs index (4.8M tokens, IVF8192), 1,000 dev queries against exhaustive
MaxSim, k=100: the old fixed 64 / 16 / 100 held R@100 at 0.981x; ``nprobe`` 8
loses 0.002 of it and halves the lists scanned; ``n_rerank`` 125 (1.25 k) lifts it
to 0.9875x and 160 to 0.990x: the candidates beyond ``k`` keep R@k, since at
``n_rerank = k`` a document the approximate score ranks just below the cut is
lost however exact the rerank. At k=10, 64 / 8 / 48 held MRR@10 at 1.000x and
64 / 8 / 32 at 0.996x; 64 stays the floor (the synthetic test corpora lose recall
below it).

Why they must scale: with a fixed 64 / 16 / 64, the full index grown 12x by adds
lost a fifth of its R@100. The more tokens an index holds, the more distractor
tokens stand between a query token and the tokens of the document it should
find, so each query token must fetch more of its nearest (``k_token``), and more
candidates must be reranked (``n_rerank``); and when an inverted file holds more
tokens per list than its quantizer was trained for, its lists are coarser.

- ``k_token`` grows with the square root of the live tokens past
  :data:`REFERENCE_TOKENS` (the full debian-pkgs corpus);
- ``n_rerank`` likewise, and is at least :data:`RERANK_PER_HIT` times ``k``;
- ``nprobe`` stays 8 while lists are the size the quantizer made them, and grows
  with the square root of the lists' growth since training (an index grown by
  adds), up to :data:`MAX_NPROBE`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SearchDefaults", "derive_defaults"]

BASE_K_TOKEN = 64
BASE_NPROBE = 8
BASE_N_RERANK = 64
REFERENCE_TOKENS = 4_800_000
RERANK_PER_HIT = 1.5
MAX_SCALE = 8.0  # past 64x the reference, grow no further: a sharded index splits it
MAX_NPROBE = 64


@dataclass(frozen=True)
class SearchDefaults:
    """The index's own ``k_token``, ``nprobe`` and ``n_rerank`` floor, and their basis."""

    k_token: int
    nprobe: int
    n_rerank: int
    rerank_per_hit: float
    tokens: int
    """Live tokens the values were derived from."""
    list_growth: float
    """Tokens a list now holds over what it held when the quantizer was trained (1.0
    when unknown or not an inverted file)."""

    def n_rerank_for(self, k: int) -> int:
        """Candidates reranked for ``k`` hits: the floor, or ``rerank_per_hit * k``."""
        return max(self.n_rerank, math.ceil(self.rerank_per_hit * k))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive_defaults(tokens: int, tokens_at_training: int | None) -> SearchDefaults:
    """The defaults for an index of ``tokens`` live tokens whose quantizer was trained
    on ``tokens_at_training`` (None: not an inverted file, or not recorded)."""
    scale = min(MAX_SCALE, math.sqrt(max(1.0, tokens / REFERENCE_TOKENS)))
    growth = 1.0
    if tokens_at_training:
        growth = max(1.0, tokens / tokens_at_training)
    nprobe = min(MAX_NPROBE, round(BASE_NPROBE * math.sqrt(growth)))
    return SearchDefaults(
        k_token=round(BASE_K_TOKEN * scale),
        nprobe=nprobe,
        n_rerank=round(BASE_N_RERANK * scale),
        rerank_per_hit=RERANK_PER_HIT,
        tokens=tokens,
        list_growth=growth,
    )
