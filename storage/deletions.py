"""``deleted.i64``: the internal ids of a generation's deleted documents.

Segments are never rewritten, so a delete commits a new generation whose
``deleted.i64`` lists every deleted document: sorted, distinct, little-endian
int64, checksummed in the manifest like every other file. Deleted documents stay
in their segments (and their tokens in the FAISS index, masked out of every
search) until a compaction writes a segment without them.
"""

from __future__ import annotations

import numpy as np

from storage.errors import CorruptIndex

__all__ = ["DELETED_DTYPE", "decode_deleted", "encode_deleted"]

DELETED_DTYPE = np.dtype("<i8")


def encode_deleted(doc_ids: np.ndarray) -> bytes:
    """The file's bytes for a set of deleted internal ids."""
    return np.unique(np.asarray(doc_ids, dtype=np.int64)).astype(DELETED_DTYPE).tobytes()


def decode_deleted(data: bytes, documents: int, where: str) -> np.ndarray:
    """The deleted ids in ``data`` (verified against its checksum by the caller), checked
    to be sorted, distinct, and ids of the generation's ``documents``."""
    if len(data) % DELETED_DTYPE.itemsize:
        raise CorruptIndex(f"{where} does not hold whole int64 ids")
    ids = np.frombuffer(data, dtype=DELETED_DTYPE).astype(np.int64)
    if len(ids) and ((np.diff(ids) <= 0).any() or ids[0] < 0 or ids[-1] >= documents):
        raise CorruptIndex(f"{where} holds ids that are not sorted ids of the index's documents")
    return ids
