""":class:`ShardedIndex`: the :class:`~sie_index.index.Index` API over a folder of shards.

A sharded index is a folder of ordinary indexes plus a shard map
(:mod:`storage.shard_map`). An id lives in the shard its hash routes it to, so
every add, upsert or delete of it reaches that one shard. A query is encoded
once and sent to every shard (:mod:`sie_index.executors`: threads here, or one
Ray actor a shard); each shard answers its own top ``k`` by exact MaxSim and the
merge keeps the global top ``k`` by score (ties by shard, then internal id).
Since the scores are exact, the merge equals one index over the same documents
whenever each shard's answer equals its exhaustive top ``k``.

Writes go from this process to the shard folders (each shard's own writer and
commit; a change that spans shards is one commit a shard), then every shard's
reader refreshes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast, overload

import numpy as np

from sie_index.corpus_items import Corpus
from sie_index.encoders.base import Encoder, EncoderSpec
from sie_index.encoders.precomputed import PrecomputedEncoder
from sie_index.errors import IndexClosed, InvalidInput, NotAnIndex, UnknownFilterField
from sie_index.executors import LocalExecutor, RayExecutor, ShardExecutor
from sie_index.index import Index, Query
from sie_index.lexical import LexicalStats
from sie_index.params import Hits, SearchParams
from sie_index.query_batch import texts_of_batch
from sie_index.scoring import check_query
from sie_index.search_defaults import SearchDefaults, derive_defaults
from sie_index.shard_merge import fuse_hits, merge_hits
from sie_index.sharded_build import build_sharded_index, reshard_index
from sie_index.sharded_writer import ShardedWriter, _naming_shard
from sie_index.updates import ChangeReport, UpdateReport
from sie_index.writer import BuildReport
from storage import (
    ShardMap,
    read_manifest,
    read_shard_map,
    shard_of,
    verify_index,
)

__all__ = ["ShardedIndex", "open_index"]

_T = TypeVar("_T")


class ShardedIndex:
    """An opened sharded index. Make one with :meth:`open`, :meth:`build` or
    :meth:`from_vectors`; it answers as :class:`Index` does."""

    def __init__(
        self,
        path: Path,
        shard_map: ShardMap,
        executor: ShardExecutor,
        encoder: Encoder | None = None,
        *,
        ray: bool = False,
        ray_address: str | None = None,
    ) -> None:
        self._path = path
        self._ray = (ray or ray_address is not None, ray_address)
        self.shard_map = shard_map
        self._executor: ShardExecutor | None = executor
        self.spec = EncoderSpec.from_dict(read_manifest(self.shard_paths[0]).encoder)
        self._encoder = encoder
        if encoder is not None:
            self.spec.check_query_encoder(encoder.spec)
        self.build_report: BuildReport | None = None

    # -- making one ----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        encoder: Encoder | None = None,
        verify: bool = True,
        ray: bool = False,
        ray_address: str | None = None,
    ) -> ShardedIndex:
        """Open the sharded index at ``path``; with ``ray`` (or ``ray_address``) each
        shard is served by a Ray actor (``pip install 'sie-index[ray]'``)."""
        path = Path(path)
        shard_map = read_shard_map(path)
        if shard_map is None:
            raise NotAnIndex(f"{path} is not a sharded sie-index index: it has no shard map")
        paths = [path / name for name in shard_map.shards]
        executor: ShardExecutor
        if ray or ray_address is not None:
            executor = RayExecutor(paths, verify=verify, address=ray_address)
        else:
            executor = LocalExecutor(paths, verify=verify)
        return cls(path, shard_map, executor, encoder, ray=ray, ray_address=ray_address)

    @classmethod
    def build(
        cls,
        path: str | Path,
        corpus: Corpus,
        *,
        shards: int,
        encoder: Encoder | None = None,
        ray: bool = False,
        ray_address: str | None = None,
        encode_actors: int | None = None,
        resume: bool = False,
        **options: Any,
    ) -> ShardedIndex:
        """Build a sharded index of ``shards`` shards and open it. ``options`` are
        :meth:`Index.build`'s (``index_kind``, ``codec``, ``limit``, ``on_error``,
        ``overwrite``...); ``resume`` continues a build that failed or was killed;
        ``ray`` encodes in a Ray Data actor pool and serves shards from actors."""
        if encoder is None:
            from sie_index.encoders.token_states import TokenStatesEncoder

            encoder = TokenStatesEncoder()
        if ray_address is not None:
            _init_ray(ray_address)
        report = build_sharded_index(
            path,
            corpus,
            encoder,
            shards=shards,
            resume=resume,
            ray=ray or ray_address is not None,
            encode_actors=encode_actors,
            **options,
        )
        query_encoder = None if isinstance(encoder, PrecomputedEncoder) else encoder
        index = cls.open(
            path, encoder=query_encoder, verify=False, ray=ray, ray_address=ray_address
        )
        index.build_report = report
        return index

    @classmethod
    def from_vectors(
        cls,
        path: str | Path,
        ids: Sequence[str],
        vectors: Sequence[Any],
        *,
        shards: int,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        model: str = "precomputed",
        normalize: bool = True,
        query_encoder: Encoder | None = None,
        ray: bool = False,
        **options: Any,
    ) -> ShardedIndex:
        """A sharded index of multivectors the user already has (see :meth:`Index.from_vectors`)."""
        encoder, docs = Index.precomputed_documents(
            ids,
            vectors,
            texts=texts,
            metadata=metadata,
            model=model,
            normalize=normalize,
            query_encoder=query_encoder,
        )
        options.setdefault("store_text", texts is not None)
        options.setdefault("progress", False)
        index = cls.build(path, docs, shards=shards, encoder=encoder, ray=ray, **options)
        index._encoder = encoder
        return index

    @classmethod
    def from_index(
        cls,
        source: str | Path,
        path: str | Path,
        *,
        shards: int,
        ray: bool = False,
        **options: Any,
    ) -> ShardedIndex:
        """Reshard: a sharded index of the live documents of the index at ``source``,
        from its stored vectors (nothing encoded again; see
        :func:`~sie_index.sharded_build.reshard_index` for ``options``)."""
        report = reshard_index(source, path, shards=shards, **options)
        index = cls.open(path, verify=False, ray=ray)
        index.build_report = report
        return index

    # -- using one -------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def shard_paths(self) -> list[Path]:
        return [self._path / name for name in self.shard_map.shards]

    @property
    def encoder(self) -> Encoder:
        """The query encoder (made from the shards' recorded spec on first use)."""
        if self._encoder is None:
            from sie_index.encoders.registry import encoder_from_spec

            self._encoder = encoder_from_spec(self.spec)
        return self._encoder

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Query multivectors for ``texts`` with the index's query encoder."""
        return self.encoder.encode_queries(list(texts))

    def _live_executor(self) -> ShardExecutor:
        if self._executor is None:
            raise IndexClosed(f"the sharded index at {self._path} is closed")
        return self._executor

    def _query_matrices(self, queries: Sequence[Query]) -> list[np.ndarray]:
        texts = [q for q in queries if isinstance(q, str)]
        encoded = iter(self.encode_queries(texts) if texts else [])
        dim = self.spec.dim
        return [
            next(encoded) if isinstance(q, str) else check_query(q, f"query {i}", dim)
            for i, q in enumerate(queries)
        ]

    @overload
    def search(self, query: Query, k: int | None = None, **options: Any) -> Hits: ...

    @overload
    def search(
        self, query: list[str] | tuple[str, ...], k: int | None = None, **options: Any
    ) -> list[Hits]: ...

    def search(
        self,
        query: Query | list[str] | tuple[str, ...],
        k: int | None = None,
        *,
        params: SearchParams | None = None,
        text: bool = False,
        metadata: bool = False,
        explain: bool = False,
        deadline_s: float | None = None,
        allow_partial: bool = False,
        **overrides: Any,
    ) -> Hits | list[Hits]:
        """One query against every shard, merged (see :meth:`search_batch`); a list or
        tuple of texts is a batch, answered as :meth:`search_batch` answers it."""
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
            deadline_s=deadline_s,
            allow_partial=allow_partial,
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
        deadline_s: float | None = None,
        allow_partial: bool = False,
        threads: int | None = None,
        **overrides: Any,
    ) -> list[Hits]:
        """Many queries, each encoded once and answered by every shard, merged.

        ``threads`` is each shard's, as :meth:`Index.search_batch` takes it. A shard
        that fails or does not answer within ``deadline_s`` raises its error
        (naming the shard); with ``allow_partial`` the merge of the shards that
        answered comes back instead, its ``missing`` naming the others.
        """
        if isinstance(queries, str | np.ndarray):
            raise InvalidInput("search_batch takes a sequence of queries; use search for one")
        if deadline_s is not None and (
            isinstance(deadline_s, bool)
            or not isinstance(deadline_s, int | float)
            or not 0 < deadline_s < float("inf")
        ):
            raise InvalidInput(
                f"deadline_s must be a positive number of seconds, not {deadline_s!r}"
            )
        params = (params or SearchParams()).with_(k=k, **overrides)
        executor = self._live_executor()
        texts = stats = None
        shard_params = params
        if params.hybrid:
            texts, stats = self._lexical_stats(queries, deadline_s, allow_partial)
            # each shard answers all its candidates (the ANN's and BM25's, or every
            # allowed document where it scores them all); they are fused here, together
            # (at the settings the largest shard resolves, so at those of the whole)
            whole = params.resolved(self.search_defaults)
            every = max(whole.rerank_depth() + params.lexical_k, whole.exact_below())
            shard_params = params.with_(
                fusion="maxsim",
                k=every,
                n_rerank=whole.rerank_depth(),
                n_centroid=whole.n_centroid,
            )
        matrices = self._query_matrices(queries)
        answers = executor.run(
            "search",
            matrices,
            shard_params,
            text,
            metadata,
            explain,
            threads,
            texts,
            stats,
            deadline_s=deadline_s,
        )
        answers = self._answered(answers, len(matrices), allow_partial)
        missing = tuple(i for i, a in enumerate(answers) if isinstance(a, BaseException))
        per_query = [
            [None if isinstance(a, BaseException) else a[q] for a in answers]
            for q in range(len(matrices))
        ]
        if params.hybrid:
            return [fuse_hits(hits, params, missing) for hits in per_query]
        return [merge_hits(hits, params.k, missing) for hits in per_query]

    @property
    def search_defaults(self) -> SearchDefaults:
        """The search defaults of an index the size of all the shards together (a
        shard resolves its unset settings itself, at its own size: behind a screen a
        large whole may rerank fewer than a small shard, which screens none)."""
        tokens = 0
        lists = True
        for path in self.shard_paths:
            m = read_manifest(path)
            tokens += int(m.tokens)
            lists = lists and str(m.token_index.get("kind", "")).startswith("ivf")
        return derive_defaults(tokens, None, screen=lists)

    def _answered(self, answers: list[Any], n_queries: int, allow_partial: bool) -> list[Any]:
        """The shards' answers, or the first shard's error (naming the shard) where
        one failed and ``allow_partial`` is not set."""
        answers = _unknown_fields_answered(answers, n_queries)
        missing = [i for i, a in enumerate(answers) if isinstance(a, BaseException)]
        if missing and not allow_partial:
            error = answers[missing[0]]
            assert isinstance(error, BaseException)
            raise _naming_shard(error, missing[0], self.shard_map.shards[missing[0]]) from error
        return answers

    def _lexical_stats(
        self, queries: Sequence[Query], deadline_s: float | None, allow_partial: bool
    ) -> tuple[list[str], list[LexicalStats]]:
        """The query texts and their BM25 statistics over every shard's live documents."""
        texts = [q for q in queries if isinstance(q, str)]
        if len(texts) != len(queries):
            raise InvalidInput("hybrid search needs each query's text, not only its vectors")
        answers = self._answered(
            self._live_executor().run("lexical_stats", texts, deadline_s=deadline_s),
            len(texts),
            allow_partial,
        )
        parts = [a for a in answers if not isinstance(a, BaseException)]
        return texts, [LexicalStats.combine([p[q] for p in parts]) for q in range(len(texts))]

    # -- changing it -------------------------------------------------------------

    def writer(self) -> ShardedWriter:
        """The sharded index's writer (holds the sharded folder's lock until closed),
        on the shards the committed map names now."""
        self._live_executor()
        writer = ShardedWriter(self._path, self.shard_map, self._encoder)
        try:
            if self._follow_map():
                writer.close()
                writer = ShardedWriter(self._path, self.shard_map, self._encoder)
        except BaseException:
            writer.close()
            raise
        return writer

    def _change(self, fn: Callable[[ShardedWriter], _T]) -> _T:
        with self.writer() as w:
            try:
                return fn(w)
            finally:
                self.refresh()

    def add(self, corpus: Corpus, **options: Any) -> UpdateReport:
        """Add documents, each to its shard (one commit a shard that gets any)."""
        return self._change(lambda w: w.add(corpus, **options))

    def upsert(self, corpus: Corpus, **options: Any) -> UpdateReport:
        """Add documents, replacing those whose ids are in the index (in their shard)."""
        return self._change(lambda w: w.upsert(corpus, **options))

    def add_vectors(
        self, ids: Sequence[str], vectors: Sequence[Any], **options: Any
    ) -> ChangeReport:
        """Add (``replace=True``: upsert) documents from multivectors, each in its shard."""
        return self._change(lambda w: w.add_vectors(ids, vectors, **options))

    def delete(self, ids: Iterable[str]) -> ChangeReport:
        """Delete documents by id, each in the shard its id routes to."""
        return self._change(lambda w: w.delete(ids))

    def delete_where(
        self,
        flt: Mapping[str, Any] | None = None,
        *,
        ids: Sequence[str] | None = None,
        filter_sql: str | None = None,
    ) -> ChangeReport:
        """Delete the documents matching a filter, in every shard."""
        return self._change(lambda w: w.delete_where(flt, ids=ids, filter_sql=filter_sql))

    def compact(
        self, *, retrain: bool = False, lexical_fields: Sequence[str] | None = None
    ) -> ChangeReport:
        """Compact every shard with the shared quantizer (see :meth:`ShardedWriter.compact`)."""
        return self._change(lambda w: w.compact(retrain=retrain, lexical_fields=lexical_fields))

    def refresh(self) -> bool:
        """Move to the latest committed shard map (a rebuild) and every shard to its
        latest committed generation; True if anything changed."""
        rebuilt = self._follow_map()
        answers = self._live_executor().run("refresh")
        for position, a in enumerate(answers):
            if isinstance(a, BaseException):
                raise _naming_shard(a, position, self.shard_map.shards[position]) from a
        return rebuilt or any(answers)

    def _follow_map(self) -> bool:
        """Open the shards of a newer committed map (another process rebuilt the index);
        True if there was one."""
        current = read_shard_map(self._path)
        if current is None:
            raise NotAnIndex(f"{self._path} no longer holds a sharded index")
        if current == self.shard_map:
            return False
        fresh = self._open_executor(current)
        old, self._executor, self.shard_map = self._executor, fresh, current
        if old is not None:
            old.close()
        return True

    def _open_executor(self, shard_map: ShardMap) -> ShardExecutor:
        paths = [self._path / name for name in shard_map.shards]
        on_ray, address = self._ray
        if on_ray:
            return RayExecutor(paths, verify=False, address=address)
        return LocalExecutor(paths, verify=False)

    # -- describing it -------------------------------------------------------------

    def __len__(self) -> int:
        total = 0
        for position, a in enumerate(self._live_executor().run("len")):
            if isinstance(a, BaseException):
                raise _naming_shard(a, position, self.shard_map.shards[position]) from a
            total += int(a)
        return total

    def info(self, *, growth: bool = True) -> dict[str, Any]:
        """The shards (each with its growth since training), their sizes and the shared plan."""
        self._live_executor()
        shards = []
        for path in self.shard_paths:
            if growth:
                with Index.open(path, verify=False) as shard:
                    shard_info = shard.info()
            else:
                m = read_manifest(path)
                shard_info = {
                    "path": str(path),
                    "documents": m.live_documents,
                    "tokens": m.tokens,
                    "segments": len(m.segments),
                    "generation": m.generation,
                }
            keys = ("path", "documents", "tokens", "segments", "generation", "growth")
            shards.append({key: shard_info[key] for key in keys if key in shard_info})
        return {
            "path": str(self._path),
            "shards": shards,
            "documents": sum(s["documents"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "segments": sum(s["segments"] for s in shards),
            "generation": self.shard_map.generation,
            "encoder": self.spec.to_dict(),
            "token_index": self.shard_map.token_index,
        }

    def verify(self) -> dict[str, Any]:
        """Verify every shard (checksums, invariants) and that every live id sits in the
        shard its id routes to; ``ok`` is True when all holds."""
        self._live_executor()
        problems = []
        warnings = []
        for position, path in enumerate(self.shard_paths):
            report = verify_index(path)
            if not report.ok:
                problems.append(f"shard {position}: {report.problem}")
                continue
            warnings += [f"shard {position}: {w}" for w in report.warnings]
            with Index.open(path, verify=False) as shard:
                live_ids = shard.lookup(shard.external_ids())
                wrong = [e for e in live_ids if shard_of(e, len(self.shard_paths)) != position]
                if wrong:
                    problems.append(f"shard {position} holds {wrong[0]!r}, which routes elsewhere")
        return {
            "path": str(self._path),
            "ok": not problems,
            "problems": problems,
            "warnings": warnings,
        }

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedIndex({str(self._path)!r}, shards={len(self.shard_map.shards)})"


def _init_ray(address: str) -> None:
    from sie_index.executors import _ray

    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)


def _unknown_fields_answered(answers: list[Any], n_queries: int) -> list[Any]:
    """Shard answers with each :class:`UnknownFilterField` taken as no hits: a shard
    raises it for a filter that matches none of its documents and names a field none
    of them has, but another shard may have it. Only a field that no shard has (each
    raised, naming it) is an error."""
    unknown = [a for a in answers if isinstance(a, UnknownFilterField)]
    if not unknown:
        return answers
    if len(unknown) == len(answers):
        everywhere = set.intersection(*(set(a.fields) for a in unknown))
        if everywhere:
            raise UnknownFilterField([f for f in unknown[0].fields if f in everywhere])
    return [
        [[] for _ in range(n_queries)] if isinstance(a, UnknownFilterField) else a for a in answers
    ]


def open_index(
    path: str | Path,
    *,
    encoder: Encoder | None = None,
    verify: bool = True,
    ray: bool = False,
    ray_address: str | None = None,
) -> Index | ShardedIndex:
    """Open the index at ``path``, sharded or not (the faces take either)."""
    if read_shard_map(Path(path)) is not None:
        return ShardedIndex.open(
            path, encoder=encoder, verify=verify, ray=ray, ray_address=ray_address
        )
    if ray or ray_address is not None:
        raise InvalidInput(f"{path} is not a sharded index; Ray serves the shards of one")
    return Index.open(path, encoder=encoder, verify=verify)
