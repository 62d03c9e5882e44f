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

Why they must scale, and how (the same probe on the mixed corpus: debian-pkgs
plus 670,111 pypi-summaries, 730,692 documents, 14.4M tokens, 500 dev queries
against exhaustive MaxSim over all of it, k=100). At the fixed 64 / 16 / 100 the
index retrained on it held MRR@10 at 0.973x and R@100 at 0.922x, the index grown
to it by adds 0.969x and 0.914x: three times the tokens, and the distractor
tokens stand between a query token and the tokens of the document it should
find, so each query token must fetch many more of its nearest (``k_token``) and
more candidates must be reranked (``n_rerank``). ``k_token`` was what mattered:
128 / 8 / 200 gave 0.985x and 0.953x, 256 / 8 / 300 0.994x and 0.972x, 384 / 8 / 400
0.9985x and 0.987x (12.4 ms a query against about 8 at 60k), 512 / 8 / 500 0.999x
and 0.998x; ``nprobe`` 16 or 32 instead of 8 gained nothing at the same k_token.
With ``s`` the live tokens over :data:`REFERENCE_TOKENS` (at least 1, at most
:data:`MAX_SCALE`), fitted on these two sizes:

- ``k_token`` = 64 s^1.6 (373 at the mixed corpus), at most :data:`MAX_K_TOKEN`;
- ``n_rerank`` = at least 64 s, and at least 1.5 s^0.9 times ``k`` (405 at k=100
  on the mixed corpus);
- ``nprobe`` stays 8: on the index grown 3x by adds (lists three times the size
  training made them) 14 lists instead of 8 gained 0.003 of MRR@10 for 4.6 ms.

Two sizes fit a curve, they do not prove it: past them it is an extrapolation,
capped, and ``info`` shows what an index derived so it can be checked against
``sie-index evaluate --sweep`` on its own queries.
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
K_TOKEN_EXPONENT = 1.6
RERANK_EXPONENT = 0.9
MAX_SCALE = 16.0  # past 16x the reference, grow no further: a sharded index splits it
MAX_K_TOKEN = 2048


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
    scale = min(MAX_SCALE, max(1.0, tokens / REFERENCE_TOKENS))
    growth = 1.0
    if tokens_at_training:
        growth = max(1.0, tokens / tokens_at_training)
    return SearchDefaults(
        k_token=min(MAX_K_TOKEN, round(BASE_K_TOKEN * scale**K_TOKEN_EXPONENT)),
        nprobe=BASE_NPROBE,
        n_rerank=round(BASE_N_RERANK * scale),
        rerank_per_hit=round(RERANK_PER_HIT * scale**RERANK_EXPONENT, 3),
        tokens=tokens,
        list_growth=growth,
    )
