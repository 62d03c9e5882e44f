"""The :class:`Index` facade: build, open, search, describe.

Writing (:mod:`sie_index.writer`) and searching (:mod:`sie_index.search`) are
separate code paths; this class only wires them to an index folder and an
encoder.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, overload

import numpy as np

from sie_index.corpus import Document
from sie_index.corpus_items import Corpus
from sie_index.encoders.base import Encoder, EncoderSpec, TokenTexts
from sie_index.encoders.precomputed import PrecomputedEncoder
from sie_index.errors import EncoderError, IndexClosed, InvalidInput
from sie_index.exhaustive import ResidentScan, exhaustive_search
from sie_index.lexical import LexicalStats
from sie_index.params import Hit, MatchedToken, SearchParams
from sie_index.phases import PhaseTimes
from sie_index.query_batch import texts_of_batch
from sie_index.scoring import check_query
from sie_index.search import Ranked, Searcher
from sie_index.search_defaults import SearchDefaults
from sie_index.updates import ChangeReport, IndexWriter, UpdateReport, vector_docs
from sie_index.writer import BuildReport, build_index
from storage import StoreSnapshot, measure_growth

__all__ = ["Index", "Query"]

Query = str | np.ndarray
_T = TypeVar("_T")


class Index:
    """An opened index folder. Make one with :meth:`open`, :meth:`build` or :meth:`from_vectors`."""

    def __init__(self, snapshot: StoreSnapshot, encoder: Encoder | None = None) -> None:
        # one attribute holds the snapshot and its searcher, so a refresh swaps
        # both at once for every thread
        self._current: Searcher | None = _searcher_of(snapshot)
        self._path = snapshot.folder
        self._refresh_lock = threading.Lock()
        self.spec = EncoderSpec.from_dict(snapshot.manifest.encoder)
        self._encoder = encoder
        if encoder is not None:
            self.spec.check_query_encoder(encoder.spec)
        self.build_report: BuildReport | None = None
        # growth measured on a generation, which never changes: by generation number
        self._growth: tuple[int, dict[str, Any]] | None = None

    # -- making one ----------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | Path, *, encoder: Encoder | None = None, verify: bool = True
    ) -> Index:
        """Open the index at ``path``.

        ``encoder`` encodes text queries; by default the index's own encoder is
        made on first use, when sie-index can make it. Every file is verified
        against its checksums before it is used; ``verify=False`` defers the
        (large) token-vector file's check to the first read of each block, so
        opening is fast and nothing is ever read unchecked.
        """
        return cls(StoreSnapshot.open(Path(path), verify_vectors=verify), encoder)

    @classmethod
    def build(
        cls,
        path: str | Path,
        corpus: Corpus,
        *,
        encoder: Encoder | None = None,
        index_kind: str = "auto",
        index_options: Mapping[str, Any] | None = None,
        codec: str = "auto",
        dim: int | None = None,
        limit: int | None = None,
        batch_size: int = 256,
        on_error: Literal["raise", "skip"] = "raise",
        overwrite: bool = False,
        store_text: bool = True,
        progress: bool | None = None,
        resume: bool = False,
        pool_factor: int = 1,
        lexical_fields: Sequence[str] | None = (),
    ) -> Index:
        """Build a new index at ``path`` from a corpus and open it.

        ``corpus``: a JSONL or JSONL.gz file (``{"id", "text"}``, BEIR's
        ``{"_id", "title", "text"}``, Pyserini's ``{"id", "contents"}``), a TSV file
        (ColBERT's ``collection.tsv``: ``id<TAB>text`` lines), a BEIR folder, or
        the documents themselves: Documents, dicts with a JSONL line's fields, or
        plain texts, whose ids are their positions (``"0"``, ``"1"``, ...; see
        :mod:`sie_index.corpus_items`).
        ``encoder``: defaults to the embedded all-MiniLM-L6-v2 token-state encoder.
        ``index_kind``: ``auto``, ``flat``, ``ivf-flat``, ``ivf-sq8``, ``ivf-pq``
        or ``hnsw`` (see :mod:`storage.token_index`). ``codec``: how token vectors
        are stored, ``f16``, ``sq8`` or ``pq``, or ``auto`` by corpus size; ``dim``:
        keep that many dimensions through a projection fitted at build time (see
        :mod:`storage.codec`). The report of the build is on the returned index's
        ``build_report``. A build that fails or is killed keeps the batches it
        encoded: ``resume=True``, with the same corpus and settings, encodes only the
        rest (see :func:`sie_index.writer.build_index`). ``pool_factor`` above 1
        merges each document's token vectors into about one in ``pool_factor``
        (Ward clustering, :mod:`sie_index.pooling`), and adds pool alike. The
        index keeps a lexicon of each document's text and of the metadata
        ``lexical_fields`` for ``search(..., hybrid=True)``.
        """
        if encoder is None:
            from sie_index.encoders.token_states import TokenStatesEncoder

            encoder = TokenStatesEncoder()
        report = build_index(
            path,
            corpus,
            encoder,
            index_kind=index_kind,
            index_options=index_options,
            codec=codec,
            dim=dim,
            limit=limit,
            batch_size=batch_size,
            on_error=on_error,
            overwrite=overwrite,
            store_text=store_text,
            progress=progress,
            resume=resume,
            pool_factor=pool_factor,
            lexical_fields=lexical_fields,
        )
        query_encoder = None if isinstance(encoder, PrecomputedEncoder) else encoder
        index = cls.open(path, encoder=query_encoder, verify=False)
        index.build_report = report
        return index

    @classmethod
    def from_vectors(
        cls,
        path: str | Path,
        ids: Iterable[str],
        vectors: Iterable[Any],
        *,
        texts: Iterable[str] | None = None,
        metadata: Iterable[Mapping[str, Any] | None] | None = None,
        model: str = "precomputed",
        normalize: bool = True,
        index_kind: str = "auto",
        index_options: Mapping[str, Any] | None = None,
        codec: str = "auto",
        dim: int | None = None,
        overwrite: bool = False,
        query_encoder: Encoder | None = None,
        pool_factor: int = 1,
    ) -> Index:
        """Build an index from multivectors the user already has (one array per id;
        each argument one item per document, in any iterable, read once);
        ``pool_factor`` pools them as :meth:`build` does."""
        encoder, docs = cls.precomputed_documents(
            ids,
            vectors,
            texts=texts,
            metadata=metadata,
            model=model,
            normalize=normalize,
            query_encoder=query_encoder,
        )
        index = cls.build(
            path,
            docs,
            encoder=encoder,
            index_kind=index_kind,
            index_options=index_options,
            codec=codec,
            dim=dim,
            overwrite=overwrite,
            store_text=texts is not None,
            progress=False,
            pool_factor=pool_factor,
        )
        index._encoder = encoder
        return index

    @staticmethod
    def precomputed_documents(
        ids: Iterable[str],
        vectors: Iterable[Any],
        *,
        texts: Iterable[str] | None = None,
        metadata: Iterable[Mapping[str, Any] | None] | None = None,
        model: str = "precomputed",
        normalize: bool = True,
        query_encoder: Encoder | None = None,
    ) -> tuple[PrecomputedEncoder, list[Document]]:
        """The encoder and documents :meth:`from_vectors` builds from (one array per
        id; each argument one item per document, in any iterable, read once)."""
        given = vector_docs(ids, vectors, texts, metadata)
        by_id = dict(zip(given.ids, given.vectors, strict=True))
        dims = {v.shape[1] for v in given.vectors if v.ndim == 2}
        encoder = PrecomputedEncoder(
            by_id,
            dim=dims.pop() if len(dims) == 1 else None,
            model=model,
            normalize=normalize,
            query_encoder=query_encoder,
        )
        docs = [
            Document(
                id=ext,
                text=(given.texts[i] or "") if given.texts is not None else ext,
                metadata=dict(given.metadata[i] or {}) or None if given.metadata else None,
            )
            for i, ext in enumerate(given.ids)
        ]
        return encoder, docs

    # -- using one -------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def encoder(self) -> Encoder:
        """The query encoder (made from the manifest's spec on first use)."""
        if self._encoder is None:
            from sie_index.encoders.registry import encoder_from_spec

            self._encoder = encoder_from_spec(self.spec)
        return self._encoder

    def __len__(self) -> int:
        return int(self._searcher.live.sum())

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Query multivectors for ``texts`` with the index's query encoder."""
        return self.encoder.encode_queries(list(texts))

    def _query_matrices(self, queries: Sequence[Query]) -> list[np.ndarray]:
        texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
        out: list[np.ndarray | None] = [None] * len(queries)
        if texts:
            encoded = self.encode_queries([q for _, q in texts])
            for (i, _), Q in zip(texts, encoded, strict=True):
                out[i] = Q
        dim = self._snapshot.codec.input_dim
        for i, q in enumerate(queries):
            if out[i] is not None:
                continue
            out[i] = check_query(q, f"query {i}", dim)
        return [Q for Q in out if Q is not None]

    def rank(
        self,
        queries: Sequence[Query],
        params: SearchParams | None = None,
        *,
        explain: bool = False,
        threads: int | None = None,
        timings: PhaseTimes | None = None,
        texts: Sequence[str | None] | None = None,
    ) -> list[Ranked]:
        """Internal ids and scores, without reading documents (for evaluation loops).
        ``timings`` gathers the seconds of each phase (see :mod:`sie_index.phases`).
        ``texts``: the texts of queries given as vectors, for a hybrid search (a
        query given as text is its own)."""
        return self._searcher.rank(
            self._query_matrices(queries),
            params or SearchParams(),
            explain=explain,
            threads=threads,
            timings=timings,
            texts=_texts(queries, texts),
        )

    def lexical_stats(self, texts: Sequence[str]) -> list[LexicalStats]:
        """Each text's BM25 statistics over this index's live documents (what a
        sharded index adds up over its shards, so each scores as one index would)."""
        lexical = self._searcher.lexical()
        return [lexical.stats(t) for t in texts]

    @overload
    def search(self, query: Query, k: int | None = None, **options: Any) -> list[Hit]: ...

    @overload
    def search(
        self, query: list[str] | tuple[str, ...], k: int | None = None, **options: Any
    ) -> list[list[Hit]]: ...

    def search(
        self,
        query: Query | list[str] | tuple[str, ...],
        k: int | None = None,
        *,
        params: SearchParams | None = None,
        text: bool = False,
        metadata: bool = False,
        explain: bool = False,
        timings: PhaseTimes | None = None,
        **overrides: Any,
    ) -> list[Hit] | list[list[Hit]]:
        """Search with one query: text, or a query multivector ``[n_tokens, dim]``.

        A list or tuple of texts is a batch: the answer is :meth:`search_batch`'s,
        one hit list per query. ``params`` (or keyword overrides such as
        ``k_token=128, filter={...}``) tune the pipeline; ``text``/``metadata`` add
        the stored fields to hits (without ``text=True`` a hit's ``text`` is None);
        ``explain`` adds, per query token, the best-matching document token;
        ``hybrid=True`` adds BM25's best documents to the candidates and fuses the
        two scores (``fusion``, ``fusion_weight``, ``lexical_k``: see
        :class:`SearchParams`), each hit carrying ``maxsim`` and ``bm25``;
        ``timings`` gathers the seconds of each phase (see :mod:`sie_index.phases`).
        """
        texts = texts_of_batch(query)
        # one query that is no text is a matrix (an array or nested lists), checked later
        queries: Sequence[Query] = [cast(Query, query)] if texts is None else texts
        results = self.search_batch(
            queries,
            k,
            params=params,
            text=text,
            metadata=metadata,
            explain=explain,
            timings=timings,
            **overrides,
        )
        return results[0] if texts is None else results

    def search_batch(
        self,
        queries: Sequence[Query],
        k: int | None = None,
        *,
        params: SearchParams | None = None,
        text: bool = False,
        metadata: bool = False,
        explain: bool = False,
        threads: int | None = None,
        timings: PhaseTimes | None = None,
        texts: Sequence[str | None] | None = None,
        lexical_stats: Sequence[LexicalStats] | None = None,
        **overrides: Any,
    ) -> list[list[Hit]]:
        """Search with many queries at once, on all cores; one hit list per query.

        ``k`` (default: ``params.k``, 10) is the number of hits per query;
        ``timings`` gathers the seconds of each phase (see :mod:`sie_index.phases`).
        ``texts``: the texts of queries given as vectors, for a hybrid search;
        ``lexical_stats``: each query's BM25 statistics of a larger collection (a
        sharded index's, see :meth:`lexical_stats`).
        """
        if isinstance(queries, str | np.ndarray):
            raise InvalidInput("search_batch takes a sequence of queries; use search for one")
        params = (params or SearchParams()).with_(k=k, **overrides)
        searcher = self._searcher  # one snapshot for the whole call, whatever refresh does
        ranked = searcher.rank(
            self._query_matrices(queries),
            params,
            explain=explain,
            threads=threads,
            timings=timings,
            texts=_texts(queries, texts),
            lexical_stats=lexical_stats,
        )
        results = searcher.hits(ranked, text=text or explain, metadata=metadata, timings=timings)
        if explain:
            results = [
                self._name_tokens(searcher, q, hits)
                for q, hits in zip(queries, results, strict=True)
            ]
        if explain and not text:
            results = [[dataclasses.replace(h, text=None) for h in hits] for hits in results]
        return results

    def _name_tokens(self, searcher: Searcher, query: Query, hits: list[Hit]) -> list[Hit]:
        """Hits whose explanations name the query and document tokens, where the
        encoder can tokenize (an encoder without a tokenizer leaves them None)."""
        try:
            encoder = self.encoder
        except EncoderError:  # query vectors, and no encoder here to name tokens with
            return hits
        if not isinstance(encoder, TokenTexts):
            return hits
        q_texts = encoder.token_texts([query], is_query=True)[0] if isinstance(query, str) else None
        if q_texts is not None and hits and len(q_texts) != len(hits[0].explain or ()):
            q_texts = None  # not the rows the query encoded to: say nothing rather than guess
        by_hit = iter(encoder.token_texts([h.text for h in hits if h.text], is_query=False))
        # a pooled document's original tokens, and the stored row each went to
        sources = searcher.token_sources(np.asarray([h.doc_id for h in hits], np.int64))
        out = []
        for hit in hits:
            tokens = next(by_hit) if hit.text else None
            src = sources.get(hit.doc_id)
            if src is None:
                src = np.arange(searcher.token_count[hit.doc_id])
            if tokens is not None and len(tokens) != len(src):
                tokens = None  # not the text that was encoded: say nothing rather than guess
            named = tuple(
                dataclasses.replace(
                    m,
                    query_text=q_texts[m.query_token] if q_texts is not None else None,
                    **_doc_texts(m, tokens),
                )
                for m in hit.explain or ()
            )
            out.append(dataclasses.replace(hit, explain=named))
        return out

    # -- changing it -------------------------------------------------------------

    def refresh(self) -> bool:
        """Move to the index's latest committed generation; True if it changed.

        Until then the index answers from the snapshot it opened, whatever is
        committed meanwhile. A search running in another thread finishes on the
        snapshot it started with, which is closed when no search holds it.
        """
        with self._refresh_lock:
            return self._refresh()

    @property
    def _searcher(self) -> Searcher:
        """The current searcher; a caller keeps it for a whole call (refresh may swap it)."""
        searcher = self._current
        if searcher is None:
            raise IndexClosed(f"the index at {self._path} is closed; open it again to use it")
        return searcher

    @property
    def _snapshot(self) -> StoreSnapshot:
        return self._searcher.snapshot

    def _refresh(self) -> bool:
        fresh = StoreSnapshot.open(self.path, verify_vectors=False, previous=self._snapshot)
        if fresh.manifest == self._snapshot.manifest:
            fresh.close()
            return False
        spec = EncoderSpec.from_dict(fresh.manifest.encoder)
        if spec != self.spec:  # rebuilt with another encoder: this one may not fit
            try:
                if self._encoder is not None:
                    spec.check_query_encoder(self._encoder.spec)
            except BaseException:
                fresh.close()
                raise
            self.spec = spec
        # the old snapshot closes when the last search using its searcher lets go
        self._current = _searcher_of(fresh)
        return True

    def writer(self) -> IndexWriter:
        """An :class:`IndexWriter` on this index's folder, with this index's encoder
        (holds the write lock until closed)."""
        return IndexWriter(self.path, encoder=self._encoder)

    def _change(self, fn: Callable[[IndexWriter], _T]) -> _T:
        self._searcher  # noqa: B018 (raises IndexClosed on a closed index)
        with self.writer() as w:
            out = fn(w)
        self.refresh()
        return out

    def add(self, corpus: Corpus, **options: Any) -> UpdateReport:
        """Encode and add new documents (a corpus as :meth:`build` takes it) in one
        commit, then :meth:`refresh` (options as :meth:`IndexWriter.add`)."""
        return self._change(lambda w: w.add(corpus, **options))

    def upsert(self, corpus: Corpus, **options: Any) -> UpdateReport:
        """Add documents, replacing those whose ids are in the index, in one commit."""
        return self._change(lambda w: w.upsert(corpus, **options))

    def add_vectors(
        self, ids: Sequence[str], vectors: Sequence[Any], **options: Any
    ) -> ChangeReport:
        """Add (``replace=True``: upsert) documents from multivectors, in one commit."""
        return self._change(lambda w: w.add_vectors(ids, vectors, **options))

    def delete(self, ids: Iterable[str]) -> ChangeReport:
        """Delete documents by id in one commit (unknown ids are ignored), then refresh."""
        return self._change(lambda w: w.delete(ids))

    def delete_where(
        self,
        flt: Mapping[str, Any] | None = None,
        *,
        ids: Sequence[str] | None = None,
        filter_sql: str | None = None,
    ) -> ChangeReport:
        """Delete the documents matching a filter (see :mod:`sie_index.filters`) in one
        commit, then refresh."""
        return self._change(lambda w: w.delete_where(flt, ids=ids, filter_sql=filter_sql))

    def compact(
        self, *, retrain: bool = False, lexical_fields: Sequence[str] | None = None
    ) -> ChangeReport:
        """Purge deleted documents (one new segment), then refresh. ``lexical_fields``
        (None: keep the index's) gives the index a lexicon of its text and those
        metadata fields, for hybrid search."""
        return self._change(lambda w: w.compact(retrain=retrain, lexical_fields=lexical_fields))

    # -- reading it whole -----------------------------------------------------------

    def external_ids(self) -> list[str]:
        """Every stored document's external id, by internal id (deleted ones too, so
        ``external_ids()[hit.doc_id]`` maps any result), checksums verified."""
        return self._snapshot.docs.external_ids()

    def lookup(self, external_ids: Sequence[str]) -> dict[str, int]:
        """Internal ids of the live documents among ``external_ids``."""
        return self._snapshot.lookup(list(external_ids))

    def exhaustive(self, queries: Sequence[Query], k: int) -> list[Ranked]:
        """The exact answer: top ``k`` live documents by MaxSim over every stored token
        (no ANN), streamed in blocks; the oracle the search is measured against."""
        snap = self._snapshot
        scores, doc_ids = exhaustive_search(
            self._query_matrices(queries),
            snap.tokens,
            snap.spans.token_start,
            snap.spans.token_count,
            k,
            live=~snap.spans.deleted,
        )
        return [Ranked(doc_ids=d, scores=s) for d, s in zip(doc_ids, scores, strict=True)]

    def resident_scan(self) -> ResidentScan:
        """Every stored vector loaded into memory for brute-force MaxSim (the latency
        baseline of evaluation); needs ``tokens * dim * 2`` bytes."""
        snap = self._snapshot
        return ResidentScan(snap.tokens, snap.spans.token_start, snap.spans.token_count)

    # -- describing it -------------------------------------------------------------

    @property
    def search_defaults(self) -> SearchDefaults:
        """The ``k_token``, ``nprobe``, ``n_rerank`` and ``n_centroid`` a search that
        leaves them unset takes, derived from this index's size
        (:mod:`sie_index.search_defaults`)."""
        return self._searcher.defaults

    def info(self, *, growth: bool = True) -> dict[str, Any]:
        """What the index holds, how big it is on disk, and (``growth``) how far it has
        grown since its quantizer was trained: tokens then and now, the growth factor,
        the inverted lists' imbalance, the share of sampled tokens far from every
        centroid (see :class:`storage.Growth`; unknown for an index written before
        training was recorded). It is measured once a generation; ``growth=False``
        leaves it out (a metrics scrape)."""
        snapshot = self._snapshot
        m = snapshot.manifest
        files = snapshot.file_sizes
        total = sum(files.values())
        out = {
            "path": str(self.path),
            "format_version": m.format_version,
            "generation": m.generation,
            "documents": m.live_documents,
            "deleted_documents": m.deleted_count,
            "segments": len(m.segments),
            "tokens": m.tokens,
            "dim": m.dim,
            "encoder": m.encoder,
            "token_index": m.token_index,
            "codec": m.codec,
            "vector_bytes_per_token": snapshot.codec.row_bytes,
            "pool_factor": m.pool_factor,
            "created_at": m.created_at,
            "files_bytes": files,
            "total_bytes": total,
            "bytes_per_token": total / m.tokens if m.tokens else 0.0,
            "search_defaults": self.search_defaults.to_dict(),
        }
        if growth:
            cached = self._growth
            if cached is None or cached[0] != m.generation:
                cached = (m.generation, measure_growth(snapshot).to_dict())
                self._growth = cached
            out["growth"] = dict(cached[1])
        return out

    def close(self) -> None:
        """Let the index go: later calls raise :class:`IndexClosed`. A search running
        in another thread finishes first, on the snapshot it started with, which
        closes (its files and descriptors released) when the last such search ends;
        an index dropped without ``close`` releases them the same way."""
        with self._refresh_lock:
            self._current = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._current is None:
            return f"Index({str(self._path)!r}, closed)"
        m = self._snapshot.manifest
        return (
            f"Index({str(self.path)!r}, documents={m.live_documents}, tokens={m.tokens}, "
            f"dim={m.dim})"
        )


def _doc_texts(m: MatchedToken, tokens: list[str] | None) -> dict[str, Any]:
    """The text fields of one match: its token's text, or a pooled vector's tokens'."""
    if tokens is None:
        return {"doc_text": None}
    if m.merged_tokens is not None:
        texts = tuple(tokens[i] for i in m.merged_tokens)
        return {"doc_text": " + ".join(texts), "merged_texts": texts}
    return {"doc_text": tokens[m.doc_token]}


def _texts(queries: Sequence[Query], texts: Sequence[str | None] | None = None) -> list[str | None]:
    """Each query's text, for hybrid search: its own, else the one ``texts`` gives
    (None for a query given as vectors alone)."""
    own = [q if isinstance(q, str) else None for q in queries]
    if texts is None:
        return own
    if len(texts) != len(queries):
        raise InvalidInput(f"{len(texts)} texts for {len(queries)} queries")
    return [o if o is not None else t for o, t in zip(own, texts, strict=True)]


def _searcher_of(snapshot: StoreSnapshot) -> Searcher:
    """A searcher whose snapshot closes once nothing refers to the searcher any more."""
    searcher = Searcher(snapshot)
    weakref.finalize(searcher, snapshot.close)
    return searcher
