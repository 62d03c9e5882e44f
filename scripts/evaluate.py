"""Evaluate an index on a BEIR folder: the same as `sie-index evaluate` (see `--help`)."""

from __future__ import annotations

import sys

from sie_index.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
