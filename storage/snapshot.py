"""Opening an index: one committed generation, verified, held for the reader's whole life.

:meth:`StoreSnapshot.open` reads ``CURRENT``, takes a lease on the generation it
names (so no writer removes it while it is in use), and opens each of that
generation's files once, through the generation folder's descriptor:

1. the manifest, checked against the SHA-256 in ``CURRENT``, then parsed strictly;
2. the FAISS file, read once into memory and checked block by block before
   FAISS parses a byte, then checked against the manifest's kind and counts;
3. the token map, checked at once; the vector file, at once with
   ``verify_vectors``, else block by block on first read (never skipped);
4. the document database, every row's span checksum verified, the spans
   checked against the token count.

Nothing a writer does afterwards (a new commit, a rebuild of the same path,
removing the folder) changes what the snapshot reads. Every damaged or missing
file is :class:`CorruptIndex` naming it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

from storage.builder import DATA_FILES
from storage.docstore import DOCS_NAME, DocReader, DocSpans
from storage.errors import CorruptIndex, FormatVersionMismatch, NotAnIndex
from storage.fsio import read_at, sha256_hex, verify_bytes
from storage.generations import Lease, Pointer, read_pointer
from storage.manifest import MANIFEST_NAME, Manifest
from storage.token_index import TOKEN_INDEX_NAME, TokenIndex, TokenIndexPlan
from storage.vectors import TOKEN_DOC_NAME, TOKENS_NAME, TokenReader

__all__ = ["StoreSnapshot", "read_manifest"]

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_OPEN_ATTEMPTS = 100


def _hold_current(folder: Path) -> tuple[Pointer, Lease]:
    """Read ``CURRENT`` and lease the generation it names, following concurrent commits."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotAnIndex(f"{folder} is not a folder, so it is not a sie-index index") from exc
    try:
        return _lease_current(folder, folder_fd)
    finally:
        os.close(folder_fd)


def _lease_current(folder: Path, folder_fd: int) -> tuple[Pointer, Lease]:
    where = str(folder)
    previous: Pointer | None = None
    for attempt in range(_OPEN_ATTEMPTS):
        pointer = read_pointer(folder_fd, where)
        if pointer is None:
            if os.path.exists(folder / MANIFEST_NAME):
                raise FormatVersionMismatch(
                    f"{folder} holds an index of format version 1; this release of sie-index "
                    "reads format version 2. Rebuild the index (overwrite)."
                )
            raise NotAnIndex(
                f"{folder} is not a sie-index index: it has no committed generation (CURRENT)"
            )
        lease = Lease.acquire(folder_fd, pointer.generation)
        if lease is not None:
            return pointer, lease
        if pointer == previous:
            # The same pointer twice and its folder still not there: no commit raced
            # us (a commit replaces CURRENT before it removes anything).
            raise CorruptIndex(f"{where}/CURRENT names {pointer.dirname}, which is missing")
        previous = pointer
        time.sleep(min(0.001 * attempt, 0.05))
    raise CorruptIndex(f"{where}: CURRENT kept changing while the index was being opened")


def _read_manifest(folder: Path, pointer: Pointer, lease: Lease) -> tuple[Manifest, int]:
    """The verified manifest of the leased generation, and its size in bytes."""
    where = str(folder / pointer.dirname)
    data = read_at(lease.fd, MANIFEST_NAME, where, max_bytes=MAX_MANIFEST_BYTES)
    if sha256_hex(data) != pointer.manifest_sha256:
        raise CorruptIndex(f"{where}/{MANIFEST_NAME} does not match its checksum in CURRENT")
    manifest = Manifest.from_bytes(data, f"{where}/{MANIFEST_NAME}", file_names=DATA_FILES)
    if manifest.generation != pointer.generation:
        raise CorruptIndex(f"{where}/{MANIFEST_NAME} belongs to another generation")
    return manifest, len(data)


def read_manifest(folder: Path) -> Manifest:
    """The verified manifest of the committed generation of ``folder``, without opening
    its data files (to learn, say, which encoder to make before opening the index)."""
    folder = Path(folder)
    pointer, lease = _hold_current(folder)
    try:
        return _read_manifest(folder, pointer, lease)[0]
    finally:
        lease.release()


class StoreSnapshot:
    """One committed generation of an index folder, opened read-only and verified."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        docs: DocReader,
        tokens: TokenReader,
        token_index: TokenIndex,
        spans: DocSpans,
        lease: Lease,
        file_sizes: dict[str, int],
    ) -> None:
        self.folder = folder
        self.file_sizes = file_sizes
        """Bytes of each file of the generation, as opened."""
        self.manifest = manifest
        self.docs = docs
        self.tokens = tokens
        self.token_index = token_index
        self.spans = spans
        self._lease = lease

    @classmethod
    def open(cls, folder: Path, *, verify_vectors: bool = True) -> StoreSnapshot:
        """Open the committed generation of ``folder``.

        Every file but the vector file is verified now; the vector file now when
        ``verify_vectors``, else each block the first time a read needs it.
        """
        folder = Path(folder)
        pointer, lease = _hold_current(folder)
        try:
            return cls._open_generation(folder, pointer, lease, verify_vectors)
        except BaseException:
            lease.release()
            raise

    @classmethod
    def _open_generation(
        cls, folder: Path, pointer: Pointer, lease: Lease, verify_vectors: bool
    ) -> StoreSnapshot:
        where = str(folder / pointer.dirname)
        manifest, manifest_bytes = _read_manifest(folder, pointer, lease)
        manifest.check_size(TOKENS_NAME, manifest.tokens * manifest.dim * 2, where)
        manifest.check_size(TOKEN_DOC_NAME, manifest.tokens * 4, where)
        plan = TokenIndexPlan.from_dict(manifest.token_index, f"{where}/{MANIFEST_NAME}")

        record = manifest.files[TOKEN_INDEX_NAME]
        raw = read_at(lease.fd, TOKEN_INDEX_NAME, where, max_bytes=record.bytes)
        if len(raw) != record.bytes:
            raise CorruptIndex(f"{TOKEN_INDEX_NAME} in {where} was truncated")
        verify_bytes(raw, record.sha256_blocks, TOKEN_INDEX_NAME)
        token_index = TokenIndex.from_bytes(
            raw, plan, dim=manifest.dim, ntotal=manifest.tokens, where=f"{where}/{TOKEN_INDEX_NAME}"
        )
        del raw

        tokens = TokenReader(
            Path(where),
            manifest.dim,
            manifest.tokens,
            dir_fd=lease.fd,
            vector_blocks=manifest.files[TOKENS_NAME].sha256_blocks,
            doc_blocks=manifest.files[TOKEN_DOC_NAME].sha256_blocks,
            verify=verify_vectors,
        )
        docs = None
        try:
            docs = DocReader(folder / pointer.dirname / DOCS_NAME)
            spans = docs.spans(manifest.documents)
            cls._check_spans(where, manifest, spans, tokens)
        except BaseException:
            tokens.close()
            if docs is not None:
                docs.close()
            raise
        sizes = {name: record.bytes for name, record in manifest.files.items()}
        sizes[MANIFEST_NAME] = manifest_bytes
        sizes[DOCS_NAME] = docs.size
        return cls(
            folder, manifest, docs, tokens, token_index, spans, lease, dict(sorted(sizes.items()))
        )

    @staticmethod
    def _check_spans(where: str, manifest: Manifest, spans: DocSpans, tokens: TokenReader) -> None:
        n = len(spans.token_start)
        ends = spans.token_start + spans.token_count
        contiguous = n == 0 or (
            spans.token_start[0] == 0 and np.array_equal(spans.token_start[1:], ends[:-1])
        )
        total = int(ends[-1]) if n else 0
        if not contiguous or total != manifest.tokens or (spans.token_count <= 0).any():
            raise CorruptIndex(f"{where}: document token spans disagree with the token count")
        # the token map (verified) must say the same as the spans (verified)
        expected = np.repeat(np.arange(n, dtype=np.int32), spans.token_count)
        if not np.array_equal(tokens.token_doc, expected):
            raise CorruptIndex(f"{where}: {TOKEN_DOC_NAME} disagrees with the document spans")

    def __enter__(self) -> StoreSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.docs.close()
        self.tokens.close()
        self._lease.release()
