"""Plain fixed-width tables for the terminal."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

MIN_LAST_COLUMN = 20


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def terminal_width() -> int:
    """The terminal's columns ($COLUMNS first; 100 when not a terminal)."""
    return shutil.get_terminal_size((100, 24)).columns


def print_table(
    rows: Sequence[Sequence[str]], header: Sequence[str], *, width: int | None = None
) -> None:
    """Print rows as a plain fixed-width table; with ``width``, the last column is
    clipped so that each line fits in that many characters (it keeps at least
    ``MIN_LAST_COLUMN``)."""
    if width is not None and rows:
        firsts = zip(header[:-1], *(r[:-1] for r in rows), strict=True)
        head = [max(len(str(c)) for c in col) for col in firsts]
        room = max(MIN_LAST_COLUMN, width - sum(head) - 2 * len(head))
        rows = [(*r[:-1], _clip(str(r[-1]), room)) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line.rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
