"""The wire format: pydantic models of every request and answer body.

A search is ``{"query": "text"}`` or ``{"vectors": [[...], ...]}`` plus ``k`` and
the search settings of :class:`~sie_index.SearchParams`; it answers
``{"hits": [{"id", "doc_id", "score", "shard"?, "text"?, "metadata"?, "explain"?}]}``, a
batch one such list per query. Unknown fields are refused (a typo is a 422, not
a silently ignored setting).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sie_index.params import WIRE_PARAMS, Hit, MatchedToken, SearchParams

__all__ = [
    "ChangeOut",
    "CompactRequest",
    "DeleteRequest",
    "DeleteWhereRequest",
    "DocumentIn",
    "ErrorOut",
    "HitOut",
    "SearchBatchRequest",
    "SearchBatchResponse",
    "SearchRequest",
    "SearchResponse",
    "WriteRequest",
]

Matrix = list[list[float]]
PARAM_FIELDS = WIRE_PARAMS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchSettings(_Strict):
    """How to search (see :class:`~sie_index.SearchParams`) and what hits carry."""

    k: int = Field(10, ge=1, description="hits per query")
    k_token: int | None = Field(None, ge=1)
    n_rerank: int | None = Field(None, ge=1)
    nprobe: int | None = Field(None, ge=1)
    n_centroid: int | None = Field(None, ge=0)
    ef_search: int | None = Field(None, ge=1)
    exact_threshold: int | None = Field(None, ge=0)
    hybrid: bool | None = Field(None, description="add BM25 candidates, fuse the scores")
    fusion: str | None = Field(None, description="maxsim, rrf or weighted")
    fusion_weight: float | None = Field(None, ge=0, le=1)
    lexical_k: int | None = Field(None, ge=1)
    filter: dict[str, Any] | None = Field(None, description="the filter language")
    ids: list[str] | None = Field(None, description="only documents with these ids")
    filter_sql: str | None = Field(None, description="raw SQL predicate (if the server allows)")
    text: bool = False
    metadata: bool = False
    explain: bool = False

    def params(self) -> SearchParams:
        """The :class:`SearchParams` these settings ask for."""
        given = {f: getattr(self, f) for f in PARAM_FIELDS if getattr(self, f) is not None}
        return SearchParams(
            **given,
            filter=self.filter,
            ids=tuple(self.ids) if self.ids is not None else None,
            filter_sql=self.filter_sql,
        )


class SearchRequest(SearchSettings):
    """One query: text, or a query multivector ``[n_tokens, dim]``."""

    query: str | None = None
    vectors: Matrix | None = None

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.query is None) == (self.vectors is None):
            raise ValueError("give exactly one of query (text) and vectors")
        return self


class SearchBatchRequest(SearchSettings):
    """Many queries, each text or a query multivector, searched with the same settings."""

    queries: list[str | Matrix] = Field(min_length=1)


class MatchedTokenOut(_Strict):
    query_token: int
    doc_token: int
    similarity: float
    query_text: str | None = None
    doc_text: str | None = None
    merged_tokens: list[int] | None = None
    merged_texts: list[str] | None = None


class HitOut(_Strict):
    """One hit: ``id`` is the document's own id, ``doc_id`` the index's internal one
    (internal to ``shard``, on a sharded index)."""

    id: str
    doc_id: int
    score: float
    shard: int | None = None
    maxsim: float | None = None
    bm25: float | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None
    explain: list[MatchedTokenOut] | None = None

    @classmethod
    def of(cls, hit: Hit) -> HitOut:
        # Hit.to_dict is the one JSON form of a hit (the CLI's --json prints it too)
        return cls.model_validate(hit.to_dict())

    def hit(self) -> Hit:
        """The :class:`~sie_index.Hit` this answer describes."""
        explain = None
        if self.explain is not None:
            explain = tuple(MatchedToken(**m.model_dump(exclude_none=True)) for m in self.explain)
        return Hit(
            doc_id=self.doc_id,
            external_id=self.id,
            score=self.score,
            text=self.text,
            metadata=self.metadata,
            explain=explain,
            shard=self.shard,
            maxsim=self.maxsim,
            bm25=self.bm25,
        )


class SearchResponse(_Strict):
    hits: list[HitOut]


class SearchBatchResponse(_Strict):
    hits: list[list[HitOut]]


class DocumentIn(_Strict):
    """A document to add: text (encoded by the index's encoder), or vectors (with the
    text to store beside them, if any)."""

    id: str = Field(min_length=1)
    text: str | None = None
    vectors: Matrix | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _something(self) -> DocumentIn:
        if self.vectors is None and not (self.text or "").strip():
            raise ValueError("a document needs vectors or a non-empty text")
        return self


class WriteRequest(_Strict):
    """Documents to add (``mode: add``: an id already there is an error) or upsert
    (replace those whose ids are there), in one commit. All carry vectors, or none."""

    documents: list[DocumentIn] = Field(min_length=1)
    mode: Literal["add", "upsert"] = "add"

    @model_validator(mode="after")
    def _one_kind(self) -> WriteRequest:
        kinds = {d.vectors is not None for d in self.documents}
        if len(kinds) > 1:
            raise ValueError("either every document carries vectors, or none does")
        return self


class DeleteRequest(_Strict):
    """Documents to delete by id; ``missing: error`` makes an unknown id a 404 (and
    deletes nothing), ``ignore`` (the default) skips unknown ids."""

    ids: list[str] = Field(min_length=1)
    missing: Literal["ignore", "error"] = "ignore"


class DeleteWhereRequest(_Strict):
    """Delete every document matching the filter (all that are given must hold)."""

    filter: dict[str, Any] | None = None
    ids: list[str] | None = None
    filter_sql: str | None = None


class CompactRequest(_Strict):
    retrain: bool = False


class ChangeOut(_Strict):
    """What a write did. ``added``, ``replaced`` and ``deleted`` count this request's
    documents; ``generation``, ``tokens``, ``documents`` (live after it) and the
    seconds describe the commit that carried it, which may carry other requests."""

    generation: int
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    tokens: int = 0
    documents: int = 0
    encode_seconds: float = 0.0
    store_seconds: float = 0.0
    outgrown: float | None = None
    """Set on the commit that took the index past its growth threshold: the factor."""


class ErrorDetail(_Strict):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(_Strict):
    """Every error answer."""

    error: ErrorDetail
