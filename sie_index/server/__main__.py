"""``python -m sie_index.server INDEX [options]``: the same as ``sie-index serve``."""

from __future__ import annotations

import sys

from sie_index.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
