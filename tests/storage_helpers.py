"""Test helpers that look inside an index folder the way only a test should."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.generations import CURRENT_NAME, Pointer
from storage.manifest import MANIFEST_NAME


def gen_dir(path: Path) -> Path:
    """The folder of the generation ``CURRENT`` names."""
    generation = json.loads((path / CURRENT_NAME).read_text())["generation"]
    return path / f"gen-{generation:06d}"


def seg_dir(path: Path, position: int = 0) -> Path:
    """The folder of a segment of the current generation (the first by default)."""
    raw = json.loads((gen_dir(path) / MANIFEST_NAME).read_text())
    return path / raw["segments"][position]["name"]


def data_path(path: Path, name: str) -> Path:
    """Where file ``name`` of the current generation lives: ``CURRENT`` in the
    index folder, the manifest and the deleted list in the generation folder,
    the data files in the first segment (``NAME@i``: in segment ``i``)."""
    if "@" in name:
        base, position = name.split("@")
        return seg_dir(path, int(position)) / base
    if name == CURRENT_NAME:
        return path / name
    if name in (MANIFEST_NAME, "deleted.i64"):
        return gen_dir(path) / name
    return seg_dir(path) / name


def resign(path: Path, manifest_bytes: bytes) -> None:
    """Write a manifest and a matching ``CURRENT``, as a writer with a bug would."""
    (gen_dir(path) / MANIFEST_NAME).write_bytes(manifest_bytes)
    generation = json.loads((path / CURRENT_NAME).read_text())["generation"]
    sha = hashlib.sha256(manifest_bytes).hexdigest()
    (path / CURRENT_NAME).write_bytes(
        Pointer(generation=generation, manifest_sha256=sha).to_bytes()
    )


def rewrite_manifest(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``change`` to the parsed manifest and re-sign it (bypassing its checksum)."""
    raw = json.loads((gen_dir(path) / MANIFEST_NAME).read_text())
    change(raw)
    resign(path, json.dumps(raw).encode())


def rest_of_output(child: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """What a child wrote after the lines already read with ``readline``, to its end.

    ``communicate`` reads the raw pipe and would drop lines that ``readline`` pulled
    into the text wrapper's buffer (a line acknowledging a change, say)."""
    assert child.stdout is not None
    child.wait(timeout=timeout)  # killed or done: it writes no more
    return child.stdout.read(), child.stderr.read() if child.stderr is not None else ""
