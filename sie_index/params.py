"""Search parameters and search hits: small frozen value objects."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sie_index.errors import InvalidInput
from sie_index.filters import CompiledFilter, compile_filter
from sie_index.fusion import DEFAULT_FUSION, DEFAULT_WEIGHT, FUSIONS
from sie_index.search_defaults import SearchDefaults
from storage import FILTER_BUDGET_S

__all__ = ["WIRE_PARAMS", "Hit", "Hits", "MatchedToken", "SearchParams"]

EXACT_FILTER_FACTOR = 8
EXACT_MIN_DEPTH = 64
DERIVED = ("k_token", "n_rerank", "nprobe", "n_centroid")  # None: the index's own (search_defaults)


@dataclass(frozen=True, kw_only=True)
class SearchParams:
    """How a search runs.

    - ``k``: hits returned per query.
    - ``k_token``: document tokens fetched from the token index per query token.
    - ``n_rerank``: candidates, best by approximate score, rescored by exact MaxSim
      (at least ``k``).
    - ``nprobe``: inverted lists visited per query token (IVF kinds).
    - ``n_centroid``: candidates, best by approximate score, screened down to
      ``n_rerank`` by centroid interaction (:mod:`sie_index.centroid_scores`; IVF
      kinds) before exact MaxSim; at most ``n_rerank``: no screen; 0: no screen,
      and the unset settings take the index's unscreened defaults.

      These four, left None, take the index's own defaults, derived from its size
      (:mod:`sie_index.search_defaults`; ``Index.info()["search_defaults"]``).
    - ``ef_search``: HNSW search breadth (HNSW kind).
    - ``filter``: keep only documents matching it, in the filter language of
      :mod:`sie_index.filters` (``{"section": "libs"}``,
      ``{"year": {"$gte": 2020}}``, ``{"$or": [...]}``).
    - ``ids``: keep only documents with these external ids.
    - ``filter_sql``: the escape hatch, a raw SQL condition on a row of the
      ``documents`` table, run read-only (``filter`` is safer and typed); each row
      must get true, false or NULL from it.
    - ``filter_budget_s``: how long evaluating the filter may take, over all the
      index's segments together (a new filter is evaluated once per snapshot).
    - ``exact_threshold``: when at most this many documents are allowed (a small
      index, a selective filter), skip the token ANN and score every allowed
      document exactly; ``None`` means ``8 * max(n_rerank, k)``, 0 always runs
      the ANN.
    - ``hybrid``: add BM25's best ``lexical_k`` documents (:mod:`sie_index.lexical`)
      to the token ANN's candidates, score them all by exact MaxSim, and rank by
      ``fusion`` (:mod:`sie_index.fusion`: ``"maxsim"``, ``"rrf"`` or
      ``"weighted"`` with ``fusion_weight`` on MaxSim). Needs the query's text.
    """

    k: int = 10
    k_token: int | None = None
    n_rerank: int | None = None
    nprobe: int | None = None
    n_centroid: int | None = None
    ef_search: int = 64
    filter: Mapping[str, Any] | None = field(default=None, hash=False)
    ids: tuple[str, ...] | None = None
    filter_sql: str | None = None
    filter_budget_s: float = FILTER_BUDGET_S
    exact_threshold: int | None = None
    hybrid: bool = False
    fusion: str = DEFAULT_FUSION
    fusion_weight: float = DEFAULT_WEIGHT
    lexical_k: int = 50
    _compiled: CompiledFilter | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("k", "k_token", "n_rerank", "nprobe", "ef_search", "lexical_k"):
            value = getattr(self, name)
            if value is None and name in DERIVED:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"SearchParams.{name} must be a positive integer, got {value!r}")
        screen = self.n_centroid
        if screen is not None and (
            not isinstance(screen, int) or isinstance(screen, bool) or screen < 0
        ):
            raise InvalidInput(f"SearchParams.n_centroid must be None or >= 0, got {screen!r}")
        budget = self.filter_budget_s
        if (
            not isinstance(budget, int | float)
            or isinstance(budget, bool)
            or not math.isfinite(budget)
            or budget <= 0
        ):
            raise InvalidInput(
                f"SearchParams.filter_budget_s must be a positive number of seconds, got {budget!r}"
            )
        if not isinstance(self.hybrid, bool):
            raise InvalidInput(f"SearchParams.hybrid must be true or false, got {self.hybrid!r}")
        if self.fusion not in FUSIONS:
            raise InvalidInput(
                f"SearchParams.fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}"
            )
        w = self.fusion_weight
        if not isinstance(w, int | float) or isinstance(w, bool) or not 0 <= w <= 1:
            raise InvalidInput(f"SearchParams.fusion_weight must be in 0..1, got {w!r}")
        t = self.exact_threshold
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 0):
            raise InvalidInput(f"SearchParams.exact_threshold must be None or >= 0, got {t!r}")
        if self.ids is not None and not isinstance(self.ids, str):
            object.__setattr__(self, "ids", tuple(self.ids))
        # compiled once: a bad filter fails here, naming what is wrong
        compiled = compile_filter(self.filter, ids=self.ids, filter_sql=self.filter_sql)
        object.__setattr__(self, "_compiled", compiled)

    def compiled_filter(self) -> CompiledFilter | None:
        """The filter, ids and raw predicate as one SQL predicate (None: no filter)."""
        return self._compiled

    def resolved(self, defaults: SearchDefaults) -> SearchParams:
        """These settings with the unset ``k_token``, ``nprobe``, ``n_rerank`` and
        ``n_centroid`` taken from an index's ``defaults``, and ``n_rerank`` at least
        ``k``."""
        if (
            self.k_token
            and self.nprobe
            and self.n_rerank
            and self.n_rerank >= self.k
            and self.n_centroid is not None
        ):
            return self  # nothing to fill: no copy (a copy compiles the filter again)
        if self.n_centroid == 0:  # the screen turned off: the index's unscreened depth
            defaults = defaults.without_screen()
        n_rerank = max(self.n_rerank or defaults.n_rerank_for(self.k), self.k)
        filtered = self.compiled_filter() is not None
        exact = self.exact_threshold
        if exact is None and self.n_rerank is None:
            # the index's own depth: a small index or a selective filter is still
            # scored exactly up to 8 x 64 documents, as before the defaults went
            # down to 32 candidates at k=10; a depth the caller sets keeps 8 x it.
            # Behind a screen, the depth it screens from: the unscreened one
            bare = max(defaults.without_screen().n_rerank_for(self.k), self.k)
            exact = EXACT_FILTER_FACTOR * max(EXACT_MIN_DEPTH, bare)
        return replace(
            self,
            k_token=self.k_token or defaults.k_token,
            nprobe=self.nprobe or defaults.nprobe_for(filtered=filtered),
            n_rerank=n_rerank,
            n_centroid=self.n_centroid
            if self.n_centroid is not None
            else defaults.n_centroid_for(self.k),
            exact_threshold=exact,
        )

    def rerank_depth(self) -> int:
        """Candidates a resolved search reranks (see :meth:`resolved`)."""
        assert self.n_rerank is not None, "resolve the settings first"
        return max(self.n_rerank, self.k)

    def screen_depth(self) -> int:
        """Candidates a resolved search screens by centroid interaction down to
        :meth:`rerank_depth` (0: none, the candidates go straight to MaxSim)."""
        assert self.n_centroid is not None, "resolve the settings first"
        return self.n_centroid if self.n_centroid > self.rerank_depth() else 0

    def exact_below(self) -> int:
        """Allowed documents up to which a resolved search scores every one exactly."""
        if self.exact_threshold is not None:
            return self.exact_threshold
        return EXACT_FILTER_FACTOR * self.rerank_depth()

    def with_(self, **changes: Any) -> SearchParams:
        """A copy with some fields changed (None values are ignored); a name that is
        not a field is :class:`InvalidInput` listing the fields."""
        names = [f.name for f in fields(self) if f.init]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise InvalidInput(
                f"unknown search parameter(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(names)}"
            )
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


WIRE_PARAMS = (
    "k",
    "k_token",
    "n_rerank",
    "nprobe",
    "n_centroid",
    "ef_search",
    "exact_threshold",
    "hybrid",
    "fusion",
    "fusion_weight",
    "lexical_k",
)
"""The scalar :class:`SearchParams` fields a search request carries over HTTP (the
filter, ids and raw SQL travel as their own fields)."""


@dataclass(frozen=True, kw_only=True)
class MatchedToken:
    """For one query token: the document token that matched it best, and how well."""

    query_token: int
    doc_token: int
    similarity: float
    query_text: str | None = None
    """The query token's text, where the encoder has a tokenizer and the query was text."""
    doc_text: str | None = None
    """The document token's text, where the encoder has a tokenizer and the text is stored
    (of a pooled vector: its tokens' texts joined by ``" + "``)."""
    merged_tokens: tuple[int, ...] | None = None
    """In a pooled document (``pool_factor`` above 1): the positions, among the
    document's original tokens, of the tokens the matched vector stands for (one or
    more; ``doc_token`` is then the stored vector's row). None where every stored
    vector is one token, at position ``doc_token``."""
    merged_texts: tuple[str, ...] | None = None
    """The texts of ``merged_tokens``, where ``doc_text`` can be named."""

    def __post_init__(self) -> None:
        # JSON brings lists (the client, the server's wire): hold tuples, hashable
        for name in ("merged_tokens", "merged_texts"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @property
    def pooled(self) -> bool:
        """Whether the matched vector merged several tokens of the document."""
        return self.merged_tokens is not None and len(self.merged_tokens) > 1

    def to_dict(self) -> dict[str, Any]:
        """The match as JSON-ready fields (the pooling fields only where pooled)."""
        out = asdict(self)
        for name in ("merged_tokens", "merged_texts"):
            if out[name] is None:
                del out[name]
            else:
                out[name] = list(out[name])
        return out


@dataclass(frozen=True, kw_only=True)
class Hit:
    """One search result. ``id`` (also ``external_id``) is the corpus id, ``doc_id``
    the index's internal one.

    ``text`` and ``metadata`` are filled only when the search asked for them
    (``search(..., text=True, metadata=True)``); otherwise they are None, as
    ``text`` is for an index built with ``store_text=False``. They stay plain
    fields rather than raising on read, so code that checks ``hit.text`` keeps
    working; :meth:`to_dict` leaves out what is None, so JSON never shows a
    ``"text": null`` that looks like an empty document.
    """

    doc_id: int
    external_id: str
    score: float
    text: str | None = None
    """The stored text, when the search ran with ``text=True`` (else None)."""
    metadata: dict[str, Any] | None = None
    """The stored metadata, when the search ran with ``metadata=True`` (else None)."""
    explain: tuple[MatchedToken, ...] | None = None
    shard: int | None = None
    """The shard that holds the document (a :class:`~sie_index.ShardedIndex`'s hits;
    ``doc_id`` is internal to that shard)."""
    maxsim: float | None = None
    """A hybrid search's hits: the exact MaxSim score (``score`` is the fused one)."""
    bm25: float | None = None
    """A hybrid search's hits: the BM25 score (0: no query term in the document)."""

    @property
    def id(self) -> str:
        """The document's corpus id: ``external_id``, by the name other libraries use."""
        return self.external_id

    def to_dict(self) -> dict[str, Any]:
        """The hit as a JSON-ready dict: ``id``, ``doc_id``, ``score``, and ``shard``,
        ``maxsim``, ``bm25``, ``text``, ``metadata``, ``explain`` (a list of dicts)
        where they are not None.
        The CLI's ``--json`` and the server's answers are made from it."""
        out: dict[str, Any] = {"id": self.external_id, "doc_id": self.doc_id, "score": self.score}
        if self.shard is not None:
            out["shard"] = self.shard
        if self.maxsim is not None:
            out["maxsim"] = self.maxsim
        if self.bm25 is not None:
            out["bm25"] = self.bm25
        if self.text is not None:
            out["text"] = self.text
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.explain is not None:
            out["explain"] = [m.to_dict() for m in self.explain]
        return out


class Hits(list[Hit]):
    """A sharded search's hits, best first; ``missing`` names the shards that did not
    answer (only with ``allow_partial``: otherwise their error is raised)."""

    def __init__(self, hits: Iterable[Hit] = (), *, missing: tuple[int, ...] = ()) -> None:
        super().__init__(hits)
        self.missing = missing

    @property
    def partial(self) -> bool:
        """Whether some shard's answer is missing from these hits."""
        return bool(self.missing)
