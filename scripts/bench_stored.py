"""Documents with their stored vectors, read back from an index in batches: what a
benchmark builds its variants from, so no variant encodes the corpus again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage import PendingDoc, StoreSnapshot

CHUNK_DOCS = 1024


def stored_batches(
    snap: StoreSnapshot, limit: int | None = None, chunk_docs: int = CHUNK_DOCS
) -> Iterator[list[PendingDoc]]:
    """The live documents of ``snap`` (the first ``limit`` of them), ``chunk_docs`` at a
    time: id, text, metadata and stored vectors (float32, decoded by the index's codec)."""
    import numpy as np

    from storage import PendingDoc

    live = np.flatnonzero(~snap.spans.deleted)[:limit]
    for lo in range(0, len(live), chunk_docs):
        chunk = live[lo : lo + chunk_docs]
        stored = snap.docs.fetch(chunk.tolist(), text=True, metadata=True)
        counts = snap.spans.token_count[chunk]
        vectors = snap.tokens.spans(snap.spans.token_start[chunk], counts)
        parts = np.split(vectors, np.cumsum(counts)[:-1])
        yield [
            PendingDoc(
                external_id=stored[d].external_id,
                text=stored[d].text,
                metadata=stored[d].metadata,
                vectors=v,
            )
            for d, v in zip(chunk.tolist(), parts, strict=True)
        ]
