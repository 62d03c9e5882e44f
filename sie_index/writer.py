"""Building an index: corpus -> encoder -> storage, in batches, with a report.

A corpus file is checked in full before anything is encoded (a bad line fails
the build in seconds, not after an hour of encoding); then documents stream
through the encoder in batches, and each batch is committed to the store as a
whole. Encoding runs one batch ahead on a background thread
(:class:`EncodeAhead`), so the encoder (a local model, or a remote server) is
working on the next batch while the last one is stored. The token index is
trained and filled from the stored vectors at the end, and the finished folder
replaces the target in one rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from sie_index.corpus import BadLine, Document, batched, read_documents, validate_corpus
from sie_index.corpus_items import Corpus, documents_of
from sie_index.encoders.base import Encoder, check_encoder_output
from sie_index.errors import InvalidInput
from sie_index.pooling import Pooled, check_pool_factor, pool_encoded
from storage import (
    CodecChoice,
    PendingDoc,
    StoreBuilder,
    check_build_options,
    check_document,
    check_lexical_fields,
)

__all__ = [
    "BuildReport",
    "CorpusFeed",
    "EncodeAhead",
    "Timing",
    "batch_digest",
    "build_index",
    "encoder_for",
    "open_corpus",
    "pending_batches",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BuildReport:
    """What a build did and how long each part took (seconds)."""

    documents: int
    tokens: int
    encode_seconds: float
    store_seconds: float
    index_seconds: float
    total_seconds: float
    bad_lines: list[BadLine] = field(default_factory=list)
    resumed_documents: int = 0
    """Documents an interrupted build had stored, kept rather than encoded again."""


def _check_document(doc: Any) -> Document:
    """A document before it is encoded: what the store would refuse fails now."""
    if not isinstance(doc, Document):
        raise InvalidInput(f"expected a sie_index.Document, got {type(doc).__name__}")
    check_document(doc.id, doc.text, doc.metadata)
    if doc.text is None or not doc.text.strip():
        raise InvalidInput("document text is empty", doc_id=doc.id)
    return doc


EncodedBatch = tuple[list[Document], list[np.ndarray], float]


class EncodeAhead:
    """Encode batches on one background thread, at most ``depth`` batches ahead.

    Iterating yields ``(documents, vectors, encode_seconds)`` in corpus order; an
    error raised while reading or encoding is raised here, in the consumer's
    thread. :meth:`close` (also on leaving a ``with`` block) stops the thread
    after the batch it is encoding.
    """

    _DONE = object()

    def __init__(
        self,
        batches: Iterable[list[Document]],
        encode: Callable[[list[Document]], list[np.ndarray]],
        *,
        depth: int = 2,
    ) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(batches, encode), name="sie-index-encode", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(
        self,
        batches: Iterable[list[Document]],
        encode: Callable[[list[Document]], list[np.ndarray]],
    ) -> None:
        try:
            for batch in batches:
                if self._stop.is_set():
                    return
                t = time.perf_counter()
                vectors = encode(batch)
                if not self._put((batch, vectors, time.perf_counter() - t)):
                    return
        except Exception as exc:  # handed to the consumer, raised in its thread
            self._put(exc)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[EncodedBatch]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self, wait: float | None = None) -> None:
        """Stop after the batch being encoded; wait for it (at most ``wait`` seconds)."""
        self._stop.set()
        self._thread.join(wait)

    def __enter__(self) -> EncodeAhead:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # On an error or Ctrl-C, do not wait out a slow encoder's request (an SIE
        # server's deadline can be minutes): the daemon thread stops on its own
        # once the request returns, and nothing it does after touches the store.
        self.close(wait=None if exc_type is None else 1.0)


@dataclass
class CorpusFeed:
    """Documents of a corpus, checked, on their way to the encoder."""

    documents: Iterable[Document]
    total: int | None
    bad_lines: list[BadLine]


def open_corpus(
    corpus: Corpus,
    *,
    on_error: Literal["raise", "skip"] = "raise",
    limit: int | None = None,
) -> CorpusFeed:
    """A corpus file (checked in full first, naming a bad line's file and line) or
    in-memory items (Documents, dicts, texts: see :mod:`sie_index.corpus_items`;
    a bad one raises, naming its position), as a stream of documents."""
    if isinstance(corpus, str | Path):
        stats = validate_corpus(corpus, on_error=on_error, limit=limit)
        docs = read_documents(
            corpus, on_error="skip" if on_error == "skip" else "raise", limit=limit, bad_lines=[]
        )
        return CorpusFeed(documents=docs, total=stats.documents, bad_lines=stats.bad_lines)
    docs_iter = documents_of(corpus)
    if limit is not None:
        docs_iter = islice(docs_iter, limit)
    return CorpusFeed(documents=docs_iter, total=None, bad_lines=[])


@dataclass
class Timing:
    encode_seconds: float = 0.0
    store_seconds: float = 0.0


def pending_batches(
    feed: CorpusFeed,
    encoder: Encoder,
    encoded: EncodeAhead,
    *,
    store_text: bool,
    timing: Timing,
    bar: Any,
) -> Iterator[list[PendingDoc]]:
    """Batches ready for the store from an :class:`EncodeAhead` over ``feed``; the
    time the store takes between two batches counts as store time."""
    for batch, vectors, seconds in encoded:
        timing.encode_seconds += seconds
        t = time.perf_counter()
        yield [
            PendingDoc(
                external_id=d.id,
                text=d.text if store_text else None,
                metadata=d.metadata,
                vectors=v.vectors if isinstance(v, Pooled) else v,
                sources=v.sources if isinstance(v, Pooled) else None,
            )
            for d, v in zip(batch, vectors, strict=True)
        ]
        timing.store_seconds += time.perf_counter() - t
        bar.update(len(batch))


def encoder_for(
    encoder: Encoder, pool_factor: int = 1
) -> Callable[[list[Document]], list[np.ndarray]]:
    """The batch encoding function: checked documents in, checked vectors out, each
    document's pooled by ``pool_factor`` (:mod:`sie_index.pooling`: then an item is a
    :class:`~sie_index.pooling.Pooled`, vectors and sources, where pooling merged
    tokens), on the encoding thread."""
    key = getattr(encoder, "document_key", "text")
    spec = encoder.spec

    def encode(batch: list[Document]) -> list[np.ndarray]:
        batch[:] = [_check_document(d) for d in batch]
        vectors = encoder.encode_documents([d.id if key == "id" else d.text for d in batch])
        if key == "id":  # the user's own vectors: the store checks them, naming each id
            if len(vectors) != len(batch):
                raise InvalidInput(f"{len(vectors)} vector arrays for {len(batch)} documents")
            return pool_encoded(vectors, pool_factor)
        checked = check_encoder_output(vectors, len(batch), spec.dim, who=f"{spec.kind} encoder")
        return pool_encoded(checked, pool_factor)

    return encode


def batch_digest(batch: Sequence[Document]) -> str:
    """A digest of a batch's documents as a build reads them (ids, texts, metadata):
    what a resumed build checks the corpus against (:mod:`storage.build_journal`)."""
    h = hashlib.blake2b(digest_size=16)
    for d in batch:
        # metadata as the store writes it (NumPy scalars as their values)
        meta = check_document(d.id, d.text, d.metadata)
        h.update(json.dumps([d.id, d.text, meta]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _skip_resumed(
    batches: Iterator[list[Document]], builder: StoreBuilder
) -> Iterator[list[Document]]:
    """The batches a resumed build still has to encode: the first ones, which it
    kept, are read and checked against what it recorded of them, not encoded."""
    for position in range(len(builder.resumed)):
        batch = next(batches, None)
        if batch is None or len(batch) != builder.resumed[position].docs:
            raise InvalidInput(
                f"{builder.target}: the corpus is shorter than what the interrupted build "
                "read; resume with the same corpus, or rebuild it from the start (overwrite=True)"
            )
        builder.check_resumed(position, batch_digest(batch))
    return batches


def _phase(bar: Any, text: str, started: float) -> None:
    """Say which indexing step runs (training shows no progress of its own)."""
    line = f"indexing: {text} ({time.perf_counter() - started:.1f} s so far)"
    log.info(line)
    if not bar.disable:
        bar.set_description_str(text)
        bar.write(line)


def build_index(
    path: str | Path,
    corpus: Corpus,
    encoder: Encoder,
    *,
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
) -> BuildReport:
    """Encode ``corpus`` with ``encoder`` and write a new index at ``path``.

    ``corpus`` is a JSONL / JSONL.gz / TSV file, a BEIR folder, or in-memory
    Documents, dicts or texts (see :mod:`sie_index.corpus_items`).
    ``on_error="skip"`` leaves bad corpus lines out and reports them; ``"raise"``
    fails on the first one, naming file and line, before anything is encoded.
    ``progress`` None shows bars only on a terminal. ``codec`` and ``dim``: how the
    vectors are stored (:mod:`storage.codec`; ``auto`` picks by corpus size).

    Every batch is stored as it is encoded, so a build that fails or is killed
    keeps what it encoded: ``resume=True`` (same corpus and settings) encodes only
    the rest and makes the index an uninterrupted build makes; the corpus is
    checked against digests of what was kept. Without an interrupted build to
    resume, ``resume=True`` builds from the start.

    ``pool_factor`` above 1 stores each document's token vectors merged into about
    one in ``pool_factor`` (:mod:`sie_index.pooling`), recorded in the manifest so
    that adds pool alike; 1 (the default) stores every token vector.

    The index gets a lexicon for hybrid search (:mod:`storage.lexicon`) of each
    document's text and of the metadata ``lexical_fields``; with ``store_text=False``
    it keeps no text, and so no lexicon.
    """
    t0 = time.perf_counter()
    pool_factor = check_pool_factor(pool_factor)
    fields = check_lexical_fields(lexical_fields) if store_text else None
    spec = encoder.spec
    choice = CodecChoice(codec, dim)
    check_build_options(spec.to_dict(), index_kind, index_options, choice, spec.dim)
    feed = open_corpus(corpus, on_error=on_error, limit=limit)
    timing = Timing()
    disable = None if progress is None else not progress
    request = {
        "encoder": spec.to_dict(),
        "index_kind": index_kind,
        "index_options": dict(index_options or {}),
        "codec": codec,
        "dim": dim,
        "limit": limit,
        "batch_size": batch_size,
        "on_error": on_error,
        "store_text": store_text,
        "pool_factor": pool_factor,
        "lexical_fields": None if fields is None else list(fields),
    }
    with StoreBuilder(
        Path(path),
        spec.dim,
        overwrite=overwrite,
        codec=choice,
        request=request,
        resume=resume,
        lexical_fields=fields,
    ) as builder:
        kept = builder.n_docs
        todo = _skip_resumed(iter(batched(feed.documents, batch_size)), builder)
        if kept:
            log.info("%s: resuming an interrupted build: %d documents kept", path, kept)
        encode = encoder_for(encoder, pool_factor)
        digests: deque[str] = deque()  # one a batch, in order, from the encoding thread

        def encode_and_digest(batch: list[Document]) -> list[np.ndarray]:
            vectors = encode(batch)
            digests.append(batch_digest(batch))
            return vectors

        with EncodeAhead(todo, encode_and_digest) as encoded:
            bar = tqdm(total=feed.total, initial=kept, desc="encoding", unit="doc", disable=disable)
            for batch in pending_batches(
                feed, encoder, encoded, store_text=store_text, timing=timing, bar=bar
            ):
                builder.add(batch, input_digest=digests.popleft())
            bar.close()
        t = time.perf_counter()
        ibar = tqdm(total=builder.n_tokens, desc="indexing", unit="tok", disable=disable)
        manifest = builder.finish(
            encoder_spec=spec.to_dict(),
            index_kind=index_kind,
            index_options=index_options,
            progress=ibar.update,
            phase=lambda text: _phase(ibar, text, t),
            pool_factor=pool_factor,
        )
        ibar.close()
        index_s = time.perf_counter() - t
    report = BuildReport(
        documents=manifest.documents,
        tokens=manifest.tokens,
        encode_seconds=timing.encode_seconds,
        store_seconds=timing.store_seconds,
        index_seconds=index_s,
        total_seconds=time.perf_counter() - t0,
        bad_lines=feed.bad_lines,
        resumed_documents=kept,
    )
    log.info("built %s: %d documents, %d tokens", path, report.documents, report.tokens)
    return report
