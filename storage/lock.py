"""The single-writer lock of an index folder (``write.lock``, an advisory flock).

``flock`` locks belong to an open file description, so the lock excludes a
second writer in another process and in another thread of the same process
alike. It is released by the kernel when its holder dies, so a killed writer
never leaves the index locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from storage.errors import IndexLocked

__all__ = ["LOCK_NAME", "WriteLock"]

LOCK_NAME = "write.lock"


class WriteLock:
    """Held by at most one writer; a second one gets :class:`IndexLocked` at once."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WriteLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(fd)
                raise IndexLocked(
                    f"{self.path.parent} is being written by another writer; "
                    "one writer at a time (readers are not blocked)"
                ) from exc
            # A writer that gave up a folder it had just made removes the lock file
            # while holding it; a lock taken on that unlinked file excludes nobody.
            try:
                linked = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                linked = False
            if linked:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriteLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
