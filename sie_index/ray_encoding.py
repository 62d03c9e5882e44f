"""Encoding a build's documents in a Ray Data actor pool.

The corpus is read once, in windows of :data:`WINDOW_DOCS` documents (so the
driver holds one window, whatever the corpus size). Each window becomes a Ray
Dataset of ids and texts, encoded by ``map_batches`` with a callable class: one
actor a worker, one model load each (``num_gpus=1`` an actor when the cluster
has GPUs; for an SIE encoder the actors are HTTP clients and the server is the
GPU pool). An actor answers a batch as one row: its ids, the token count of
each document and every token vector in one flat float16 array (Ray Data has
broken on ragged tensor columns), which is what the store keeps anyway. The
driver checks every answer as it checks a local encoder's, and joins metadata
back by id (only ids and texts travel).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from sie_index.corpus import Document, batched
from sie_index.encoders.base import Encoder, EncoderSpec, check_encoder_output
from sie_index.encoders.precomputed import PrecomputedEncoder
from sie_index.errors import InvalidInput
from sie_index.writer import CorpusFeed, EncodeAhead, Timing, encoder_for, pending_batches
from storage import PendingDoc

__all__ = ["WINDOW_DOCS", "ray_encoded_batches"]

log = logging.getLogger(__name__)

WINDOW_DOCS = 20_000


class _EncodeActor:
    """The callable class Ray Data makes its actor pool of: one encoder each."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from sie_index.encoders.registry import encoder_from_spec

        self.encoder = encoder_from_spec(EncoderSpec.from_dict(spec))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"].tolist()]
        vectors = self.encoder.encode_documents([str(t) for t in batch["text"].tolist()])
        lengths = np.array([len(v) for v in vectors], dtype=np.int64)
        flat = np.concatenate(vectors).astype(np.float16) if vectors else np.zeros(0, np.float16)
        return {
            "ids": np.array([json.dumps(ids)]),
            "lengths": np.array([lengths.tobytes()], dtype=object),
            "vectors": np.array([flat.tobytes()], dtype=object),
        }


def ray_encoded_batches(
    feed: CorpusFeed,
    encoder: Encoder,
    *,
    batch_size: int,
    store_text: bool,
    timing: Timing,
    bar: Any,
    actors: int | None = None,
) -> Iterator[list[PendingDoc]]:
    """Batches ready for the store, encoded by a Ray Data actor pool of ``actors``
    actors (default: one a CPU of the cluster, at most 8)."""
    from sie_index.executors import _ray

    ray = _ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    if isinstance(encoder, PrecomputedEncoder):
        # the user's own vectors: nothing to encode, and they live in this process
        log.info("precomputed vectors: encoded in this process, not on Ray")
        with EncodeAhead(batched(feed.documents, batch_size), encoder_for(encoder)) as encoded:
            yield from pending_batches(
                feed, encoder, encoded, store_text=store_text, timing=timing, bar=bar
            )
        return
    spec = encoder.spec
    resources = ray.cluster_resources()
    n_actors = actors or max(1, min(int(resources.get("CPU", 1)), 8))
    gpus = 1 if resources.get("GPU", 0) >= n_actors else 0
    from sie_index.writer import _check_document

    for window in batched(feed.documents, WINDOW_DOCS):
        docs: dict[str, Document] = {}
        for doc in (_check_document(d) for d in window):
            if doc.id in docs:  # the store would refuse it; say so before encoding
                raise InvalidInput("duplicate document id", doc_id=doc.id)
            docs[doc.id] = doc
        t = time.perf_counter()
        dataset = ray.data.from_items([{"id": d.id, "text": d.text} for d in docs.values()])
        encoded = dataset.map_batches(
            _EncodeActor,
            fn_constructor_kwargs={"spec": spec.to_dict()},
            batch_size=batch_size,
            concurrency=n_actors,
            num_gpus=gpus,
            batch_format="numpy",
        )
        for out in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            for ids_json, lengths_raw, flat_raw in zip(
                out["ids"], out["lengths"], out["vectors"], strict=True
            ):
                ids = json.loads(str(ids_json))
                lengths = np.frombuffer(lengths_raw, dtype=np.int64)
                flat = np.frombuffer(flat_raw, dtype=np.float16).reshape(-1, spec.dim)
                vectors = np.split(flat.astype(np.float32), np.cumsum(lengths)[:-1])
                vectors = check_encoder_output(
                    vectors, len(ids), spec.dim, who=f"{spec.kind} encoder on Ray"
                )
                timing.encode_seconds += time.perf_counter() - t
                batch = [
                    PendingDoc(
                        external_id=i,
                        text=docs[i].text if store_text else None,
                        metadata=docs[i].metadata,
                        vectors=v,
                    )
                    for i, v in zip(ids, vectors, strict=True)
                ]
                t = time.perf_counter()
                yield batch
                timing.store_seconds += time.perf_counter() - t
                bar.update(len(batch))
                t = time.perf_counter()
