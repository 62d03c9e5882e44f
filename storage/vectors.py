"""The token-vector store: ``tokens.f16`` and ``token_doc.i32``.

``tokens.f16`` holds every document token vector as little-endian float16 rows
``[n_tokens, dim]``, append-only, no header. ``token_doc.i32`` holds, for each
row, the internal id of the document it belongs to (the map used after the
token ANN). Both are written by appending and fsyncing.

A reader opens each file once and keeps it open, so it reads the bytes it was
opened on whatever is renamed or removed on disk later. The token map is
verified against its block checksums at open and then read through a read-only
memory map (4 bytes a token, never copied). The vector file is verified block
by block the first time a read touches a block, or all at once when asked
(``verify=True``): skipping verification at open only defers it. Scattered reads
of a few documents (the rerank) use ``preadv`` into one buffer instead of the
map: one system call a document, no page-table work.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from storage.codec import VectorCodec
from storage.errors import CorruptIndex, read_failure
from storage.fsio import BLOCK_SIZE, block_lengths, open_at, verify_block, verify_bytes

__all__ = [
    "TOKENS_NAME",
    "TOKEN_DOC_NAME",
    "TokenReader",
    "TokenWriter",
    "check_spans",
]

TOKENS_NAME = "tokens.f16"
TOKEN_DOC_NAME = "token_doc.i32"  # noqa: S105 (a file name)
VECTOR_DTYPE = np.dtype("<f2")
DOC_DTYPE = np.dtype("<i4")


class TokenWriter:
    """Appends stored token rows and their document ids; :meth:`sync` makes them durable.

    Rows are ``width`` values of ``dtype`` (float16 vectors, or a codec's byte
    codes) written to ``file_name``.
    """

    def __init__(
        self,
        folder: Path,
        width: int,
        *,
        file_name: str = TOKENS_NAME,
        dtype: np.dtype = VECTOR_DTYPE,
    ) -> None:
        self.folder = Path(folder)
        self.dim = width
        self.dtype = np.dtype(dtype)
        self.file_name = file_name
        self._vec = open(self.folder / file_name, "ab")  # noqa: SIM115
        self._doc = open(self.folder / TOKEN_DOC_NAME, "ab")  # noqa: SIM115
        self.rows = self._vec.tell() // (width * self.dtype.itemsize)

    def append(self, vectors: np.ndarray, doc_ids: np.ndarray) -> int:
        """Append rows; returns the row number of the first one."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(doc_ids):
            raise ValueError("vectors and doc_ids do not line up")  # a programming error
        first = self.rows
        self._vec.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
        self._doc.write(np.ascontiguousarray(doc_ids, dtype=DOC_DTYPE).tobytes())
        self.rows += len(vectors)
        return first

    def sync(self) -> None:
        for fh in (self._vec, self._doc):
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        if self._vec.closed:
            return
        self.sync()
        self._vec.close()
        self._doc.close()


def _open(folder: Path, name: str, dir_fd: int | None) -> int:
    if dir_fd is not None:
        return open_at(dir_fd, name, str(folder))
    try:
        return os.open(folder / name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise read_failure(exc, f"{name} in {folder} cannot be opened: {exc}") from exc


def _read_whole(fd: int, length: int, name: str) -> np.ndarray:
    """The first ``length`` bytes of the open file ``fd``, as a uint8 array."""
    out = np.empty(length, np.uint8)
    view, pos = out.data, 0
    while pos < length:
        got = os.preadv(fd, [view[pos:]], pos)
        if got <= 0:
            raise CorruptIndex(f"{name} ended after {pos} of {length} bytes")
        pos += got
    return out


def check_spans(
    starts: np.ndarray, counts: np.ndarray, n_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """``starts`` and ``counts`` as int64, once every span ``[start, start + count)``
    is inside the ``n_tokens`` committed rows."""
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    # ``start > n - count`` rather than ``start + count > n``: no int64 wrap
    if len(starts) and (
        (starts < 0).any() or (counts < 0).any() or (starts > n_tokens - counts).any()
    ):
        raise CorruptIndex(f"a token span is outside the {n_tokens} rows")
    return starts, counts


def _map(fd: int, length: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if length == 0:
        return np.zeros(shape, dtype)
    region = mmap.mmap(fd, length, prot=mmap.PROT_READ)
    return np.frombuffer(region, dtype=dtype).reshape(shape)


class TokenReader:
    """Read-only access to the committed token rows of one folder.

    ``codec`` says how rows are stored (by default float16 vectors of ``dim``;
    see :mod:`storage.codec`) and ``file_name`` overrides its file (a build
    reading back its float16 scratch). ``dir_fd`` opens the files relative to a
    folder descriptor (``folder`` then only names it in errors). ``vector_blocks``
    and ``doc_blocks`` are the manifest's block checksums of the two files: the
    token map is verified at once, the vectors lazily, or at once with
    ``verify``. Without checksums (a build reading back its own files) nothing is
    verified.

    :meth:`read_raw` returns stored rows as they are; :meth:`read_spans`,
    :meth:`read_rows` and :meth:`spans` return vectors (decoded by the codec; the
    float16 codec's rows are already vectors).
    """

    def __init__(
        self,
        folder: Path,
        dim: int,
        n_tokens: int,
        *,
        codec: VectorCodec | None = None,
        file_name: str | None = None,
        dir_fd: int | None = None,
        vector_blocks: Sequence[str] | None = None,
        doc_blocks: Sequence[str] | None = None,
        verify: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.codec = codec if codec is not None else VectorCodec("f16", dim, dim)
        if self.codec.dim != dim:
            raise ValueError("the codec's dimension is not the reader's")  # a programming error
        self.dim = dim
        self.n_tokens = n_tokens
        self.file_name = file_name or self.codec.file_name
        self._row_bytes = self.codec.row_bytes
        self._fd = _open(self.folder, self.file_name, dir_fd)
        doc_fd = -1
        try:
            doc_fd = _open(self.folder, TOKEN_DOC_NAME, dir_fd)
            for fd, name, need in (
                (self._fd, self.file_name, n_tokens * self._row_bytes),
                (doc_fd, TOKEN_DOC_NAME, n_tokens * DOC_DTYPE.itemsize),
            ):
                size = os.fstat(fd).st_size
                if size < need:
                    raise CorruptIndex(
                        f"{name} holds {size} bytes, fewer than the {n_tokens} committed "
                        f"rows need ({need}): it was truncated"
                    )
            # read, not mapped: Python's mmap keeps a duplicate descriptor for each
            # map, and a reader must hold few per segment (4 bytes a token in memory)
            self.token_doc = _read_whole(doc_fd, n_tokens * DOC_DTYPE.itemsize, TOKEN_DOC_NAME)
            self.token_doc = self.token_doc.view(DOC_DTYPE)
            self.token_doc.flags.writeable = False
            if doc_blocks is not None:
                verify_bytes(self.token_doc.view(np.uint8).data, doc_blocks, TOKEN_DOC_NAME)
            self._map: np.ndarray | None = None
        except BaseException:
            os.close(self._fd)
            raise
        finally:
            if doc_fd >= 0:
                os.close(doc_fd)  # the map keeps what it needs
        size = n_tokens * self._row_bytes
        self._blocks = list(vector_blocks) if vector_blocks is not None else None
        self._lengths = block_lengths(size)
        if self._blocks is not None and len(self._blocks) != len(self._lengths):
            raise CorruptIndex(f"{self.file_name}: the manifest's checksums do not cover it")
        self._verified = np.full(len(self._lengths), self._blocks is None)
        self._verify_lock = threading.Lock()
        if verify:
            self.verify_all()

    # -- verification --------------------------------------------------------------

    def _verify_blocks(self, blocks: np.ndarray) -> None:
        todo = blocks[~self._verified[blocks]]
        if not todo.size:
            return
        assert self._blocks is not None  # everything is verified when there are none
        with self._verify_lock:
            for b in todo.tolist():
                if not self._verified[b]:
                    verify_block(self._fd, b, self._lengths[b], self._blocks[b], self.file_name)
                    self._verified[b] = True

    def verify_all(self) -> None:
        """Verify every block of the vector file not verified yet."""
        self._verify_blocks(np.arange(len(self._lengths)))

    def _verify_spans(self, starts: np.ndarray, counts: np.ndarray) -> None:
        if self._verified.all():
            return
        keep = counts > 0
        first = starts[keep] * self._row_bytes // BLOCK_SIZE
        last = ((starts[keep] + counts[keep]) * self._row_bytes - 1) // BLOCK_SIZE
        if (last - first <= 1).all() and self._verified[first].all() and self._verified[last].all():
            return  # every block the spans touch is verified (a rerank's usual case)
        blocks = [np.unique(np.concatenate([first, last]))]
        blocks += [np.arange(f + 1, g) for f, g in zip(first, last, strict=True) if g - f > 1]
        self._verify_blocks(np.unique(np.concatenate(blocks)).astype(np.int64))

    @property
    def raw(self) -> np.ndarray:
        """All committed rows as stored, a read-only map ``[n_tokens, width]`` (verified;
        mapped on first use: only whole-store scans need it)."""
        self.verify_all()
        if self._map is None:
            self._map = _map(
                self._fd,
                self.n_tokens * self._row_bytes,
                self.codec.row_dtype,
                (self.n_tokens, self.codec.row_width),
            )
        return self._map

    @property
    def vectors(self) -> np.ndarray:
        """All committed vectors: the float16 file's read-only map itself, or for a
        compressed codec every row decoded into memory (float32, verified)."""
        if self.codec.name == "f16":
            return self.raw
        out = np.empty((self.n_tokens, self.dim), np.float32)
        for start, stop in self.chunks(65_536):
            out[start:stop] = self.read_rows(start, stop)
        out.flags.writeable = False
        return out

    # -- reads ---------------------------------------------------------------------

    def read_raw(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Stored rows of the concatenated spans ``[start, start + count)``."""
        starts, counts = check_spans(starts, counts, self.n_tokens)
        self._verify_spans(starts, counts)
        out = np.empty((int(np.sum(counts)), self.codec.row_width), self.codec.row_dtype)
        buf = memoryview(out.data).cast("B")
        pos = 0
        for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
            end, offset = pos + count * self._row_bytes, start * self._row_bytes
            while pos < end:  # preadv may return less than asked for very large reads
                got = os.preadv(self._fd, [buf[pos:end]], offset)
                if got <= 0:
                    raise CorruptIndex(f"{self.file_name} ended before row {start + count}")
                pos, offset = pos + got, offset + got
        return out

    def read_spans(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Vectors of the concatenated spans: float16 as stored for the ``f16`` codec,
        else decoded float32."""
        raw = self.read_raw(starts, counts)
        return raw if self.codec.name == "f16" else self.codec.decode(raw)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Vectors of rows ``start .. stop-1``, read (not mapped), so a full pass over the
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
        return self.codec.decode(self.read_raw(starts, counts))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def chunks(self, chunk_rows: int) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges covering the store in pieces of ``chunk_rows``."""
        return [
            (s, min(s + chunk_rows, self.n_tokens)) for s in range(0, self.n_tokens, chunk_rows)
        ]
