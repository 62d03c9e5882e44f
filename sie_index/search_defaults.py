"""Search settings derived from the index's size: the defaults that scale.

``k_token``, ``nprobe``, ``n_rerank`` and ``n_centroid`` left unset in
:class:`SearchParams` (None) take the values :func:`derive_defaults` gives for the
index searched, made once a
snapshot from what its manifest records; any value a caller sets wins. The values
and what they came from are reported by ``Index.info()["search_defaults"]``.

Why these values (sweeps of settings against exhaustive MaxSim, probe scripts
over the dev queries; the README's tables come from ``scripts/bench.py scale`` and
``phases``). On the full debian-pkgs index (4.8M tokens, IVF8192), 2,000 dev queries
against exhaustive MaxSim over the same index:

- k=10 (MRR@10): 64 / 8 / 64 held 0.999x; 64 / 8 / 32 0.994x, 64 / 8 / 24 0.990x,
  64 / 8 / 16 0.983x; 128 / 8 / 32 0.997x. A candidate reranked costs about 30 us
  (its float16 rows read and multiplied), so 32 candidates in place of 64 save
  about 1 ms a query, and ``k_token`` 128 (0.2 ms more of ANN) buys back the MRR.
  ``nprobe`` 4 in place of 8 kept it (0.997x) and scans half the codes: 2.9 ms
  against 3.2 ms a query (``rank``, one at a time).
- k=100 (R@100): 64 / 8 / 100 held 0.978x, 128 / 8 / 100 0.981x, 128 / 8 / 120
  0.988x (and MRR@10 1.001x), 128 / 6 / 120 0.987x, 128 / 4 / 120 0.984x,
  64 / 8 / 150 0.988x: the candidates beyond ``k``
  keep R@k, since at ``n_rerank = k`` a document the approximate score ranks just
  below the cut is lost however exact the rerank.

Why they must scale, and how (the same probes on the mixed corpus: debian-pkgs
plus 670,111 pypi-summaries, 730,692 documents, 14.4M tokens, 500 dev queries
against exhaustive MaxSim over all of it). At the fixed 64 / 16 / 100 the index
retrained on it held MRR@10 at 0.973x and R@100 at 0.922x, the index grown to it
by adds 0.969x and 0.914x: three times the tokens, and the distractor tokens stand
between a query token and the tokens of the document it should find, so each
query token must fetch more of its nearest (``k_token``) and more candidates must
be reranked (``n_rerank``). At k=100: 128 / 8 / 200 gave 0.985x and 0.953x,
256 / 8 / 300 0.994x and 0.972x, 373 / 8 / 323 0.997x and 0.983x, 373 / 8 / 405
0.9985x and 0.985x, 512 / 8 / 500 0.999x and 0.998x; more is not always better:
747 / 8 / 323 held R@100 at 0.974x only (the lowest similarity a query token
returns is what a document it missed is credited with, and a deeper list lowers
it). At k=10: 385 / 8 / 187 held MRR@10 at 0.993x, 385 / 8 / 128 0.991x,
373 / 8 / 96 0.987x. ``nprobe`` 16 or 32 instead of 8 gained nothing at the same
``k_token``; fewer lost a little: 385 / 4 / 324 held 0.996x and 0.981x, 385 / 6 / 324
0.997x and 0.983x, as 8 did. With ``s`` the live tokens over :data:`REFERENCE_TOKENS` (at least 1,
at most :data:`MAX_SCALE`), fitted on these two sizes:

- ``k_token`` = 128 s (385 at the mixed corpus), at most :data:`MAX_K_TOKEN`;
- ``n_rerank`` = at least 32 s^1.6 (187), and at least 1.2 s^0.9 times ``k``
  (323 at k=100 on the mixed corpus, 120 on the full debian-pkgs index);
- ``nprobe`` = 4 s^0.37 (4 at the reference, 6 at the mixed corpus); on the index
  grown 3x by adds (lists three times the size training made them) 14 lists
  instead of 8 gained 0.003 of MRR@10 for 4.6 ms, so list growth adds none.
- ``n_rerank`` times g^0.5 for an index whose lists hold g times the tokens its
  quantizer was trained on (an index grown by adds with the retrain policy off:
  the policy retrains at g = 2). The codes of tokens added to lists trained on
  others score them worse, so more candidates must be reranked: on the mixed
  corpus grown 3x, 385 / 6 / 324 held MRR@10 at 0.992x and R@100 at 0.972x at
  k=100 (405: 0.998x and 0.985x; nprobe 8 or 10 changed nothing), and 385 / 6 / 187
  0.985x at k=10 (250: 0.989x, 324: 0.992x, 400: 0.998x); g^0.5 = 1.73 gives 561
  and 324.

The screen (``n_centroid``, :mod:`sie_index.centroid_scores`). On the mixed corpus
the approximate score is a loose screen: the rank it gives the documents exhaustive
MaxSim puts in its top 10 is past 187 for 43 of 1,693 relevant ones, so the depth
above grows as s^1.6, and each candidate reranked reads and multiplies its float16
rows (about 13 us). From :data:`SCREEN_MIN_SCALE` (below it a screen would drop
fewer than half its candidates) the defaults screen ``s^0.56`` times that depth
down to a depth that grows far slower, by centroid interaction, which reads no
vectors. Fitted on the mixed corpus, 2,000 dev queries against MaxSim over the best
1,500 candidates (which equals exhaustive MaxSim on the 500 queries both have):

- k=10: 346 screened to 62 held MRR@10 at 0.996x (187 unscreened: 0.992x; 300 to
  64 0.996x, 300 to 48 0.996x, 300 to 40 0.993x, 300 to 32 0.992x; 600 to 64
  0.997x); the query took 1.70x the 60k index's, side by side, where 187
  unscreened took 2.18x (800 queries, ``nprobe`` 4; 1.85x at ``nprobe`` 6).
- k=100: 600 screened to 150 held MRR@10 at 0.998x and R@100 at 0.981x (324
  unscreened: 0.995x and 0.979x; 600 to 200 0.998x and 0.985x; 800 to 200 0.988x).
- ``nprobe`` stays at 4 behind a screen: the rows found need only reach the
  candidates; the screen and MaxSim order them (k=10: 0.996x at 4 as at 6; k=100:
  R@100 0.981x at 4, 0.983x at 6, for 1 ms less a query at k=10). ``k_token`` 256
  instead of 385 lost 0.001 to 0.003 and saved nothing measurable.
- The index grown 3x by adds needs no deeper rerank behind the screen (62 held
  MRR@10 at 0.998x, the 108 its list growth would add 0.998x); the screen's own
  depth still grows with the lists (g^0.5), since the approximate score it screens
  reads their codes.

Two sizes fit a curve, they do not prove it: past them it is an extrapolation,
capped, and ``info`` shows what an index derived so it can be checked against
``sie-index evaluate --sweep`` on its own queries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SearchDefaults", "derive_defaults"]

BASE_K_TOKEN = 128
BASE_NPROBE = 4
BASE_N_RERANK = 32
REFERENCE_TOKENS = 4_800_000
RERANK_PER_HIT = 1.2
K_TOKEN_EXPONENT = 1.0
NPROBE_EXPONENT = 0.37
FILTERED_NPROBE_FACTOR = 2
RERANK_FLOOR_EXPONENT = 1.6
RERANK_EXPONENT = 0.9
GROWTH_EXPONENT = 0.5  # n_rerank grows with the lists' growth since training
SCREEN_EXPONENT = 0.56  # n_centroid over the no-screen n_rerank: 1.85x at the mixed corpus
SCREENED_RERANK_EXPONENT = 0.6  # the n_rerank floor behind the screen: 62 there
SCREENED_PER_HIT_EXPONENT = 0.2  # and per hit: 1.49 there
SCREEN_MIN_SCALE = 1.5  # below, a screen would drop fewer than about half its candidates
MAX_SCALE = 16.0  # past 16x the reference, grow no further: a sharded index splits it
MAX_GROWTH = 4.0  # lists past 4x their training (the policy retrains at 2x) add no more
MAX_K_TOKEN = 2048


@dataclass(frozen=True)
class SearchDefaults:
    """The index's own ``k_token``, ``nprobe``, ``n_rerank`` floor and ``n_centroid``
    floor (with their per-hit rates), and their basis."""

    k_token: int
    nprobe: int
    n_rerank: int
    rerank_per_hit: float
    n_centroid: int
    """Candidates screened by centroid interaction down to ``n_rerank`` (0: none)."""
    centroid_per_hit: float
    tokens: int
    """Live tokens the values were derived from."""
    list_growth: float
    """Tokens a list now holds over what it held when the quantizer was trained (1.0
    when unknown or not an inverted file)."""
    unscreened: SearchDefaults | None = field(default=None, compare=False)
    """The same index's defaults without the screen, where these screen: what a
    search that turns the screen off (``n_centroid=0``) takes."""

    def without_screen(self) -> SearchDefaults:
        """These defaults, or where they screen, the same index's without the screen."""
        return self.unscreened or self

    def nprobe_for(self, *, filtered: bool) -> int:
        """Inverted lists a search visits: twice as many for a filtered search. The
        ANN is filtered (a selector over the allowed rows), so a list holds fewer
        allowed tokens and a query token needs more lists to find its nearest: on a
        test corpus where a filter allows 2% of the documents, 4 lists found 86% of
        the true top 5, 8 lists 98% (tests/test_filters.py)."""
        return self.nprobe * (FILTERED_NPROBE_FACTOR if filtered else 1)

    def n_rerank_for(self, k: int) -> int:
        """Candidates reranked for ``k`` hits: the floor, or ``rerank_per_hit * k``."""
        return max(self.n_rerank, math.ceil(self.rerank_per_hit * k))

    def n_centroid_for(self, k: int) -> int:
        """Candidates screened for ``k`` hits (0: no screen)."""
        if not self.n_centroid:
            return 0
        return max(self.n_centroid, math.ceil(self.centroid_per_hit * k))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive_defaults(
    tokens: int, tokens_at_training: int | None, *, screen: bool = True
) -> SearchDefaults:
    """The defaults for an index of ``tokens`` live tokens whose quantizer was trained
    on ``tokens_at_training`` (None: not an inverted file, or not recorded);
    ``screen=False``: the defaults without a screen, at any size (an index without
    inverted lists, whose tokens have no list to stand in for them)."""
    scale = min(MAX_SCALE, max(1.0, tokens / REFERENCE_TOKENS))
    growth = 1.0
    if tokens_at_training:
        growth = max(1.0, tokens / tokens_at_training)
    widen = min(growth, MAX_GROWTH) ** GROWTH_EXPONENT  # more candidates for outgrown lists
    # the depth without a screen (the rule the sweeps above fitted) ...
    floor = BASE_N_RERANK * scale**RERANK_FLOOR_EXPONENT * widen
    per_hit = RERANK_PER_HIT * scale**RERANK_EXPONENT * widen
    # ... screened from s^0.56 times it down to a depth that grows far slower (and
    # not with the lists' growth: the centroid score reads no codes)
    wider = scale**SCREEN_EXPONENT
    screened = screen and scale >= SCREEN_MIN_SCALE
    return SearchDefaults(
        unscreened=derive_defaults(tokens, tokens_at_training, screen=False) if screened else None,
        k_token=min(MAX_K_TOKEN, round(BASE_K_TOKEN * scale**K_TOKEN_EXPONENT)),
        # behind a screen the rows need only reach the candidates, not order them
        nprobe=BASE_NPROBE if screened else round(BASE_NPROBE * scale**NPROBE_EXPONENT),
        n_rerank=round(BASE_N_RERANK * scale**SCREENED_RERANK_EXPONENT if screened else floor),
        rerank_per_hit=round(
            RERANK_PER_HIT * scale**SCREENED_PER_HIT_EXPONENT if screened else per_hit,
            3,
        ),
        n_centroid=round(floor * wider) if screened else 0,
        centroid_per_hit=round(per_hit * wider, 3) if screened else 0.0,
        tokens=tokens,
        list_growth=growth,
    )
