"""``python -m sie_index.cli``: the ``sie-index`` command."""

import sys

from sie_index.cli import main

sys.exit(main())
