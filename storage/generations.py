"""Which generation of an index is current, who reads which, and what is debris.

An index folder holds::

    CURRENT          the commit pointer: which generation folder is the index
    write.lock       the writer's lock (:mod:`storage.lock`)
    gen-000007/      one generation: manifest.json, deleted.i64 and ``lease``
    seg-000005/      a segment (:mod:`storage.segment`): documents, vectors and
    seg-000007/      FAISS data, immutable, shared by the generations naming it

A writer writes a new generation folder (and, for a build, an add or a
compaction, one new segment folder) beside the current ones and commits it by
replacing ``CURRENT`` atomically (write a temporary file, fsync, rename, fsync
the folder): at every instant the folder holds the old index or the new one.
``CURRENT`` carries the SHA-256 of the generation's manifest and a checksum of
itself, so neither can be damaged unnoticed.

Readers hold a shared ``flock`` on the ``lease`` file of the generation they
opened (:class:`Lease`), for as long as they use it. A writer removes a
generation that is no longer current only when it can take that lock
exclusively, and a segment only when neither the current generation nor one a
reader holds names it, so no reader ever loses a file it opened or is about to
open; the same sweep removes what dead writers left behind (:func:`remove_debris`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from storage.build_journal import JOURNAL_NAME, read_journal
from storage.errors import CorruptIndex, read_failure
from storage.failpoints import failpoint
from storage.fsio import TMP_SUFFIX, fsync_dir, sha256_hex
from storage.segment import SCRATCH_NAME

__all__ = [
    "CURRENT_NAME",
    "LEASE_NAME",
    "LEGACY_FILES",
    "Lease",
    "Pointer",
    "create_lease_file",
    "find_debris",
    "generation_numbers",
    "read_pointer",
    "remove_debris",
    "write_pointer",
]

CURRENT_NAME = "CURRENT"
LEASE_NAME = "lease"
POINTER_FORMAT = 2
LEGACY_FILES = (
    "manifest.json",
    "docs.sqlite",
    "docs.sqlite-wal",
    "docs.sqlite-shm",
    "tokens.f16",
    "token_doc.i32",
    "tokens.faiss",
)
"""Files of the format-1 layout, which kept one index directly in the folder."""

_GEN_DIR = re.compile(r"gen-(\d{6,})\Z")
_SEG_DIR = re.compile(r"seg-(\d{6,})\Z")
_POINTER_KEYS = {"format_version", "generation", "manifest_sha256", "sha256"}
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True, kw_only=True)
class Pointer:
    """The content of ``CURRENT``: the committed generation and its manifest's SHA-256."""

    generation: int
    manifest_sha256: str

    @property
    def dirname(self) -> str:
        return gen_dirname(self.generation)

    def _body(self) -> dict[str, object]:
        return {
            "format_version": POINTER_FORMAT,
            "generation": self.generation,
            "manifest_sha256": self.manifest_sha256,
        }

    def to_bytes(self) -> bytes:
        body = self._body()
        digest = sha256_hex(json.dumps(body, sort_keys=True).encode())
        return (json.dumps({**body, "sha256": digest}, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Pointer:
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptIndex(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or set(raw) != _POINTER_KEYS:
            raise CorruptIndex(f"{where} does not hold a commit pointer")
        gen, sha = raw["generation"], raw["manifest_sha256"]
        if type(gen) is not int or gen < 1 or not isinstance(sha, str) or not _HEX64.match(sha):
            raise CorruptIndex(f"{where} holds a malformed generation or manifest checksum")
        pointer = cls(generation=gen, manifest_sha256=sha)
        if raw["format_version"] != POINTER_FORMAT or type(raw["format_version"]) is not int:
            raise CorruptIndex(f"{where} has pointer format {raw['format_version']!r}")
        if pointer.to_bytes() != data:
            raise CorruptIndex(f"{where} does not match its own checksum")
        return pointer


def gen_dirname(generation: int) -> str:
    return f"gen-{generation:06d}"


def generation_numbers(folder: Path) -> list[int]:
    """Numbers of the generation folders present in ``folder``, ascending."""
    found = []
    for name in os.listdir(folder):
        match = _GEN_DIR.match(name)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def read_pointer(folder_fd: int, where: str) -> Pointer | None:
    """The committed pointer of the folder open as ``folder_fd``; None when there is none."""
    try:
        fd = os.open(CURRENT_NAME, os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError as exc:
        raise read_failure(exc, f"{where}/{CURRENT_NAME} cannot be read: {exc}") from exc
    finally:
        os.close(fd)
    return Pointer.from_bytes(data, f"{where}/{CURRENT_NAME}")


def write_pointer(folder: Path, pointer: Pointer) -> None:
    """Commit ``pointer``: the one atomic step that makes a generation the index."""
    target = folder / CURRENT_NAME
    tmp = folder / (CURRENT_NAME + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, pointer.to_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    failpoint("commit:before-rename")
    os.replace(tmp, target)
    failpoint("commit:after-rename")
    fsync_dir(folder)


class Lease:
    """A reader's shared hold on one generation folder, open as :attr:`fd`."""

    def __init__(self, fd: int, lease_fd: int) -> None:
        self.fd = fd
        self._lease_fd = lease_fd

    @classmethod
    def acquire(cls, folder_fd: int, generation: int) -> Lease | None:
        """Hold ``generation``; None when it is gone or being removed."""
        try:
            fd = os.open(
                gen_dirname(generation),
                os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                dir_fd=folder_fd,
            )
        except FileNotFoundError:
            return None
        try:
            lease_fd = os.open(LEASE_NAME, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            os.close(fd)
            return None
        try:
            fcntl.flock(lease_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            # A sweeper that removed the folder after we opened the lease file
            # unlinked it before letting go of its lock.
            held = os.fstat(lease_fd).st_nlink > 0
        except BlockingIOError:
            held = False
        if not held:
            os.close(lease_fd)
            os.close(fd)
            return None
        return cls(fd, lease_fd)

    def release(self) -> None:
        for fd in (self._lease_fd, self.fd):
            if fd >= 0:
                os.close(fd)
        self._lease_fd = self.fd = -1


def create_lease_file(gen_folder: Path) -> None:
    (gen_folder / LEASE_NAME).touch()


def _remove_unleased(path: Path) -> bool:
    """Remove the generation folder ``path`` unless a reader holds it."""
    try:
        fd = os.open(path / LEASE_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1  # a build killed before it made its lease file: nobody can hold it
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def _segments_named(gen_folder: Path) -> set[str] | None:
    """Segment folders a generation's manifest names; None when it cannot be read
    (then no segment may be removed on its account)."""
    try:
        raw = json.loads((gen_folder / "manifest.json").read_bytes())
        return {str(seg["name"]) for seg in raw["segments"]}
    except FileNotFoundError:
        return set()  # a killed writer's generation, never committed: it names nothing
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _segment_dirs(folder: Path) -> list[Path]:
    return [folder / n for n in sorted(os.listdir(folder)) if _SEG_DIR.match(n)]


def find_debris(
    folder: Path, keep: int | None, *, committed: bool, keep_segments: set[str] | None = None
) -> list[Path]:
    """What no committed index needs: generation folders other than ``keep`` (old
    generations, killed writers); segment folders that neither ``keep_segments``
    (the current generation's) nor another generation still present names; when
    ``committed`` (a sound pointer names ``keep``), the files of the format-1
    layout and a stale temporary pointer. Only names inside ``folder`` are ever
    listed: nothing beside it is the index's to remove, whatever its name. A
    generation a reader holds is listed too: only :func:`remove_debris` can tell,
    by trying its lease. Without ``keep_segments`` no segment is listed.
    """
    gens = [folder / gen_dirname(n) for n in generation_numbers(folder) if n != keep]
    found = list(gens)
    if keep_segments is not None:
        # an interrupted build's segment is kept for its resume (its journal names it)
        named: set[str] | None = set(keep_segments) | _resumable_segment(folder, keep)
        for gen in gens:
            more = _segments_named(gen)
            named = None if more is None or named is None else named | more
        if named is not None:
            found += [p for p in _segment_dirs(folder) if p.name not in named]
    if committed:
        for name in (*LEGACY_FILES, CURRENT_NAME + TMP_SUFFIX):
            if (folder / name).exists():
                found.append(folder / name)
        found += _finished_build(folder, keep)
    return found


def _resumable_segment(folder: Path, keep: int | None) -> set[str]:
    try:
        journal = read_journal(folder)
    except CorruptIndex:
        return set()
    if journal is None or (keep is not None and journal.generation <= keep):
        return set()
    return {journal.segment}


def _finished_build(folder: Path, keep: int | None) -> list[Path]:
    """What a build killed between its commit and its last clean-up left: its journal
    (:mod:`storage.build_journal`), naming a generation already committed, and the
    float16 scratch it kept in that segment till then. An unreadable journal is left
    to the next build, which knows what to do with it."""
    try:
        journal = read_journal(folder)
    except CorruptIndex:
        return []
    if journal is None or keep is None or journal.generation > keep:
        return []  # no journal, or an interrupted build still to resume
    scratch = folder / journal.segment / SCRATCH_NAME
    return [p for p in (scratch, folder / JOURNAL_NAME) if p.exists()]


def remove_debris(
    folder: Path, keep: int | None, *, committed: bool, keep_segments: set[str] | None = None
) -> list[str]:
    """Remove :func:`find_debris`'s finds, except generations a reader holds and the
    segments those name; return the names removed. Only a writer holding the
    folder's write lock calls this, so no writer is making a generation or segment
    and every one of them but what ``keep`` needs is debris."""
    removed = []
    for path in find_debris(folder, keep, committed=committed):
        if path.parent == folder and _GEN_DIR.match(path.name):
            if not _remove_unleased(path):
                continue
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path.name)
    if keep_segments is not None:
        # the generations still here are the ones readers hold: keep what they name
        for path in find_debris(folder, keep, committed=False, keep_segments=keep_segments):
            if _SEG_DIR.match(path.name):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed
