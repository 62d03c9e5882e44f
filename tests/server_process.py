"""``sie-index serve`` in a child process on a free loopback port, for tests and benchmarks.

    with ServerProcess(index_path, "--batch-window-ms", "5") as server:
        httpx.get(server.url + "/health")
        server.kill()          # SIGKILL: what a crash does
        server.start()         # the same index, a new port

The child is ``python -m sie_index.server`` (so a kill is a real kill of the
server), binds port 0 and says which port it took on stderr; every stderr line
is kept in ``lines`` (the access log among them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
_LISTENING = "sie-index serve: listening on "


class ServerProcess:
    def __init__(
        self,
        index: Path,
        *args: str,
        env: dict[str, str] | None = None,
        startup_s: float = 120.0,
        ready: bool = True,
    ) -> None:
        self.index = index
        self.args = args
        self.env = env or {}
        self.startup_s = startup_s
        self.wait_ready = ready
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.lines: list[str] = []

    def start(self) -> str:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",  # see RELIABILITY.md: children of a FAISS process
            **self.env,
        }
        cmd = [sys.executable, "-m", "sie_index.server", str(self.index), "--port", "0"]
        self.proc = subprocess.Popen(
            [*cmd, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        found = threading.Event()
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if line.startswith(_LISTENING):
                    self.url = line[len(_LISTENING) :].strip()
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        stop = time.monotonic() + self.startup_s
        while not found.wait(0.05):
            if proc.poll() is not None or time.monotonic() > stop:
                self.close()
                raise RuntimeError("the server did not start:\n" + "\n".join(self.lines[-30:]))
        self._wait_for("/ready" if self.wait_ready else "/health", stop)
        return self.url

    def _wait_for(self, path: str, stop: float) -> None:
        while time.monotonic() < stop:
            try:
                if httpx.get(self.url + path, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{path} never answered 200:\n" + "\n".join(self.lines[-30:]))

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed, nothing is closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def close(self) -> int | None:
        """SIGTERM and wait (SIGKILL after 30 s); the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
