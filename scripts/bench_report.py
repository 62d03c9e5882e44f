"""The one report writer of ``scripts/bench.py``: NAME.json and NAME.md under ``--out``.

Every report says what made it and where: the exact command line, the machine's
core count, the date (UTC) and how its timings were taken (``medians``: medians
of how many runs, or one run), so a figure copied into the README can be traced
to its command and judged against the machine it ran on.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def command_line() -> str:
    """The command that runs now, as a user would type it again."""
    return "python " + shlex.join(sys.argv)


def provenance(medians: str) -> dict[str, Any]:
    """Command, cores, date and the medians note, the head of every report."""
    return {
        "command": command_line(),
        "cores": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "medians": medians,
    }


def write_report(out: Path, name: str, result: dict[str, Any], table: str, medians: str) -> None:
    """Write ``out/NAME.json`` (provenance, then ``result``) and ``out/NAME.md``
    (provenance, then ``table``), and print the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    head = provenance(medians)
    (out / f"{name}.json").write_text(json.dumps({**head, **result}, indent=2) + "\n")
    text = (
        f"Command: `{head['command']}`\n\n"
        f"{head['cores']} cores, {head['date']}; timings: {medians}.\n\n{table.rstrip()}\n"
    )
    (out / f"{name}.md").write_text(text)
    print(text, flush=True)
