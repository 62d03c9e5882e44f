"""Build an index: the same as `sie-index build` (see `--help`)."""

from __future__ import annotations

import sys

from sie_index.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
