"""``sie-index serve``: an :class:`~sie_index.Index` over HTTP (FastAPI + uvicorn).

An optional extra: ``pip install 'sie-index[server]'``. The modules, one job each:

- :mod:`~sie_index.server.config`: the settings and limits (small frozen values);
- :mod:`~sie_index.server.wire`: the pydantic models that are the wire format;
- :mod:`~sie_index.server.errors_http`: the one table from typed errors to HTTP;
- :mod:`~sie_index.server.auth`: API keys, read-only and read-write;
- :mod:`~sie_index.server.writes`: the one writer task that batches writes into commits;
- :mod:`~sie_index.server.metrics`: Prometheus counters, histograms and index gauges;
- :mod:`~sie_index.server.middleware`: request ids, one log line a request, body limits;
- :mod:`~sie_index.server.app`: the endpoints, :func:`open_served` and :func:`serve`.

``python -m sie_index.server INDEX`` is ``sie-index serve INDEX``.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"sie-index serve needs the server extra ({exc.name} is missing): "
        "pip install 'sie-index[server]'"
    ) from exc
