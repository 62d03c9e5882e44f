"""The one worker-process helper of ``scripts/bench.py``: run a function in a fresh
Python process, so its peak RSS (``ru_maxrss``) and its imports are its own.

The child is started with ``spawn`` (a new interpreter, nothing inherited from
the parent's memory), runs ``fn(*args)`` and hands back its JSON-able result
through a JSON file; a child that fails raises :class:`ChildFailed` here.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONTEXT = multiprocessing.get_context("spawn")
"""The start method of every benchmark child (``CONTEXT.Process``, ``CONTEXT.Event``)."""


class ChildFailed(RuntimeError):
    """A benchmark child exited without a result."""


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run(fn: Callable[..., Any], args: tuple[Any, ...], target: str) -> None:
    Path(target).write_text(json.dumps(fn(*args), indent=2) + "\n")


def in_child(fn: Callable[..., Any], *args: Any, keep: Path | None = None) -> Any:
    """``fn(*args)`` run in a child process; its result, read back from JSON.

    ``fn`` must be a module-level function and ``args`` plain values (paths,
    numbers, strings, dicts of them). ``keep``: a path where the result stays
    as JSON after the call (for a later subcommand to read).
    """
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        target = keep or Path(tmp) / "result.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        child = CONTEXT.Process(target=_run, args=(fn, args, str(target)), name=fn.__name__)
        child.start()
        child.join()
        if child.exitcode != 0 or not target.is_file():
            raise ChildFailed(f"{fn.__module__}.{fn.__name__} exited with {child.exitcode}")
        return json.loads(target.read_text())
