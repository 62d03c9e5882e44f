"""The token-vector store: ``tokens.f16`` and ``token_doc.i32``.

``tokens.f16`` holds every document token vector as little-endian float16 rows
``[n_tokens, dim]``, append-only, no header. ``token_doc.i32`` holds, for each
row, the internal id of the document it belongs to (the map used after the
token ANN). Both are written by appending and fsyncing, and read through
read-only memory maps of the committed prefix only, so bytes past the last
commit are never seen by a reader and a mapped region is never rewritten.
Scattered reads of a few documents (the rerank) use ``preadv`` into one
buffer instead of the map: one system call a document, no page-table work.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sie_index.errors import CorruptIndex

__all__ = [
    "TOKENS_NAME",
    "TOKEN_DOC_NAME",
    "TokenReader",
    "TokenWriter",
]

TOKENS_NAME = "tokens.f16"
TOKEN_DOC_NAME = "token_doc.i32"  # noqa: S105 (a file name)
VECTOR_DTYPE = np.dtype("<f2")
DOC_DTYPE = np.dtype("<i4")


class TokenWriter:
    """Appends token vectors and their document ids; :meth:`sync` makes them durable."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = Path(folder)
        self.dim = dim
        self._vec = open(self.folder / TOKENS_NAME, "ab")  # noqa: SIM115
        self._doc = open(self.folder / TOKEN_DOC_NAME, "ab")  # noqa: SIM115
        self.rows = self._vec.tell() // (dim * VECTOR_DTYPE.itemsize)

    def append(self, vectors: np.ndarray, doc_ids: np.ndarray) -> int:
        """Append rows; returns the row number of the first one."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(doc_ids):
            raise ValueError("vectors and doc_ids do not line up")  # a programming error
        first = self.rows
        self._vec.write(np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE).tobytes())
        self._doc.write(np.ascontiguousarray(doc_ids, dtype=DOC_DTYPE).tobytes())
        self.rows += len(vectors)
        return first

    def sync(self) -> None:
        for fh in (self._vec, self._doc):
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        self.sync()
        self._vec.close()
        self._doc.close()


class TokenReader:
    """Read-only maps of the committed token rows."""

    def __init__(self, folder: Path, dim: int, n_tokens: int) -> None:
        self.folder = Path(folder)
        self.dim = dim
        self.n_tokens = n_tokens
        vec_path = self.folder / TOKENS_NAME
        doc_path = self.folder / TOKEN_DOC_NAME
        for path, row_bytes in ((vec_path, dim * VECTOR_DTYPE.itemsize), (doc_path, 4)):
            size = path.stat().st_size if path.exists() else -1
            if size < n_tokens * row_bytes:
                raise CorruptIndex(
                    f"{path.name} holds {max(size, 0)} bytes, fewer than the "
                    f"{n_tokens} committed rows need"
                )
        self._row_bytes = dim * VECTOR_DTYPE.itemsize
        self._fd = os.open(vec_path, os.O_RDONLY)
        if n_tokens == 0:
            self.vectors = np.zeros((0, dim), VECTOR_DTYPE)
            self.token_doc = np.zeros(0, DOC_DTYPE)
        else:
            self.vectors = np.memmap(vec_path, VECTOR_DTYPE, "r", shape=(n_tokens, dim))
            self.token_doc = np.memmap(doc_path, DOC_DTYPE, "r", shape=(n_tokens,))

    def read_spans(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Float16 vectors of the concatenated spans ``[start, start + count)``."""
        out = np.empty((int(np.sum(counts)), self.dim), VECTOR_DTYPE)
        buf = memoryview(out.data).cast("B")
        pos = 0
        for start, count in zip(
            np.asarray(starts).tolist(), np.asarray(counts).tolist(), strict=True
        ):
            if start < 0 or count < 0 or start + count > self.n_tokens:
                raise CorruptIndex(
                    f"token span {start}+{count} is outside the {self.n_tokens} rows"
                )
            end, offset = pos + count * self._row_bytes, start * self._row_bytes
            while pos < end:  # preadv may return less than asked for very large reads
                got = os.preadv(self._fd, [buf[pos:end]], offset)
                if got <= 0:
                    raise CorruptIndex(f"{TOKENS_NAME} ended before row {start + count}")
                pos, offset = pos + got, offset + got
        return out

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Float16 rows ``start .. stop-1``, read (not mapped), so a full pass over the
        store leaves no mapped pages behind in the reader's memory."""
        return self.read_spans(np.array([start]), np.array([stop - start]))

    def sample_rows(self, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
        """Float32 vectors of the sorted ``rows``, read chunk by chunk."""
        out = np.empty((len(rows), self.dim), np.float32)
        for start, stop in self.chunks(chunk_rows):
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                out[lo:hi] = self.read_rows(start, stop)[rows[lo:hi] - start]
        return out

    def spans(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Vectors of the concatenated spans as float32."""
        return self.read_spans(starts, counts).astype(np.float32)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def chunks(self, chunk_rows: int) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges covering the store in pieces of ``chunk_rows``."""
        return [
            (s, min(s + chunk_rows, self.n_tokens)) for s in range(0, self.n_tokens, chunk_rows)
        ]
