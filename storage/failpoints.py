"""Named crash points for the crash tests.

``SIE_INDEX_FAILPOINTS`` holds a comma-separated list of names; when a writer
passes :func:`failpoint` with one of them, the process kills itself with
SIGKILL at that instant, as a power cut or an OOM kill would. Unset (always,
outside the tests), a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "failpoint"]

ENV = "SIE_INDEX_FAILPOINTS"


def failpoint(name: str) -> None:
    """Die here, at once and without cleanup, when the environment names ``name``."""
    armed = os.environ.get(ENV)
    if armed and name in armed.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
