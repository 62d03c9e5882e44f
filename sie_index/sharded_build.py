"""Building a sharded index: the corpus read once and streamed, encoded in this
process or by a Ray Data actor pool, each document stored in the shard its id
routes to (:class:`storage.ShardedBuilder`), the shard map committed last."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from sie_index.corpus import batched
from sie_index.corpus_items import Corpus
from sie_index.encoders.base import Encoder
from sie_index.errors import InvalidInput
from sie_index.writer import (
    BuildReport,
    CorpusFeed,
    EncodeAhead,
    Timing,
    encoder_for,
    open_corpus,
    pending_batches,
)
from storage import CodecChoice, PendingDoc, ShardedBuilder, check_build_options

__all__ = ["build_sharded_index", "reshard_index"]

log = logging.getLogger(__name__)


def build_sharded_index(
    path: str | Path,
    corpus: Corpus,
    encoder: Encoder,
    *,
    shards: int,
    index_kind: str = "auto",
    index_options: Mapping[str, Any] | None = None,
    codec: str = "auto",
    limit: int | None = None,
    batch_size: int = 256,
    on_error: Literal["raise", "skip"] = "raise",
    overwrite: bool = False,
    resume: bool = False,
    store_text: bool = True,
    progress: bool | None = None,
    ray: bool = False,
    encode_actors: int | None = None,
) -> BuildReport:
    """Encode ``corpus`` and write a sharded index of ``shards`` shards at ``path``.

    With ``resume`` after a failed or killed build, the shards that committed are
    kept and only the documents of the others are encoded again. With ``ray``,
    encoding runs in a Ray Data actor pool of ``encode_actors`` actors (one model
    load each; see :mod:`sie_index.ray_encoding`).
    """
    t0 = time.perf_counter()
    spec = encoder.spec
    choice = CodecChoice(codec)
    check_build_options(spec.to_dict(), index_kind, index_options, choice, spec.dim)
    feed = open_corpus(corpus, on_error=on_error, limit=limit)
    timing = Timing()
    disable = None if progress is None else not progress
    request = {
        "encoder": {k: v for k, v in spec.to_dict().items() if k != "runtime"},
        "index_kind": index_kind,
        "index_options": dict(index_options or {}),
        "codec": codec,
    }
    with ShardedBuilder(
        Path(path),
        shards,
        spec.dim,
        codec=choice,
        overwrite=overwrite,
        resume=resume,
        request=request,
    ) as builder:
        wanted = CorpusFeed(
            documents=(d for d in feed.documents if builder.wants(_checked_id(d))),
            total=feed.total,
            bad_lines=feed.bad_lines,
        )
        bar = tqdm(total=feed.total, desc="encoding", unit="doc", disable=disable)
        for batch in _encoded(
            wanted, encoder, batch_size, store_text, timing, bar, ray, encode_actors
        ):
            builder.add(batch)
        bar.close()
        t = time.perf_counter()
        shard_map = builder.finish(
            encoder_spec=spec.to_dict(), index_kind=index_kind, index_options=index_options
        )
        index_s = time.perf_counter() - t
    documents = tokens = 0
    from storage import read_manifest

    for name in shard_map.shards:
        manifest = read_manifest(Path(path) / name)
        documents += manifest.documents
        tokens += manifest.tokens
    report = BuildReport(
        documents=documents,
        tokens=tokens,
        encode_seconds=timing.encode_seconds,
        store_seconds=timing.store_seconds,
        index_seconds=index_s,
        total_seconds=time.perf_counter() - t0,
        bad_lines=feed.bad_lines,
    )
    log.info("built %s: %d shards, %d documents", path, shards, documents)
    return report


def _checked_id(doc: Any) -> str:
    """The id routing needs, before the encoder's own checks see the document."""
    from sie_index.writer import _check_document

    return _check_document(doc).id


def _encoded(
    feed: CorpusFeed,
    encoder: Encoder,
    batch_size: int,
    store_text: bool,
    timing: Timing,
    bar: Any,
    ray: bool,
    encode_actors: int | None,
) -> Iterator[list[PendingDoc]]:
    if ray:
        from sie_index.ray_encoding import ray_encoded_batches

        yield from ray_encoded_batches(
            feed,
            encoder,
            batch_size=batch_size,
            store_text=store_text,
            timing=timing,
            bar=bar,
            actors=encode_actors,
        )
        return
    with EncodeAhead(batched(feed.documents, batch_size), encoder_for(encoder)) as encoded:
        yield from pending_batches(
            feed, encoder, encoded, store_text=store_text, timing=timing, bar=bar
        )


def reshard_index(
    source: str | Path,
    path: str | Path,
    *,
    shards: int,
    overwrite: bool = False,
    chunk_docs: int = 2048,
) -> BuildReport:
    """A sharded index of the live documents of the index at ``source``, from its
    stored vectors (nothing is encoded again) and with its trained quantizer and
    codec (nothing is trained again): float16 vectors are moved as they are, so a
    search of the result equals a search of the source."""
    from storage import StoreSnapshot

    t0 = time.perf_counter()
    timing = Timing()
    with StoreSnapshot.open(Path(source), verify_vectors=False) as snap:
        spec = dict(snap.manifest.encoder)
        if snap.manifest.dim != spec["dim"]:
            raise InvalidInput(
                f"{source} stores {snap.manifest.dim}-dim projections of {spec['dim']}-dim "
                "vectors; a sharded index shares no projection: reshard an unprojected index"
            )
        if snap.manifest.pool_factor != 1:
            # its shards would record no factor (adds would not pool) and no token sources
            raise InvalidInput(
                f"{source} is pooled (pool_factor {snap.manifest.pool_factor}); "
                "a sharded index cannot be pooled yet: reshard an unpooled index"
            )
        choice = CodecChoice(snap.manifest.codec)
        with ShardedBuilder(
            Path(path), shards, int(spec["dim"]), codec=choice, overwrite=overwrite
        ) as builder:
            live = ~snap.spans.deleted
            batches = snap.live_documents(chunk_docs=chunk_docs)
            while True:
                t = time.perf_counter()  # reading stored vectors stands in for encoding
                batch = next(batches, None)
                timing.encode_seconds += time.perf_counter() - t
                if batch is None:
                    break
                t = time.perf_counter()
                builder.add(batch)
                timing.store_seconds += time.perf_counter() - t
            t = time.perf_counter()
            shard_map = builder.finish(encoder_spec=spec, quantizer_of=Path(source))
            index_s = time.perf_counter() - t
    del shard_map
    return BuildReport(
        documents=int(live.sum()),
        tokens=int(snap.spans.token_count[live].sum()),
        encode_seconds=timing.encode_seconds,
        store_seconds=timing.store_seconds,
        index_seconds=index_s,
        total_seconds=time.perf_counter() - t0,
        bad_lines=[],
    )
