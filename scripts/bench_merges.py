"""Many small adds: segments, descriptors, open time and search latency, with and
without the merge policy.

    python scripts/bench.py merges                      # 10,000 single-document adds
    python scripts/bench.py merges --adds 2000          # the same, smaller

A base index of 5,000 synthetic documents (dim 128, 32 tokens each, ``auto``:
ivf-pq) takes ``--adds`` single-document adds through one writer, once with the
default merge policy and once with none; each run is its own process. Reported:
add ms (median, p95), segments, descriptors an open index holds, open ms
(median of 5), search p50 (200 queries, ANN path). Writes merges.json and merges.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_child import in_child
from bench_report import write_report

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_living import SPEC, _docs  # noqa: E402 (the same synthetic documents)

BASE_DOCS = 5000
MEDIANS = "one run a policy; add ms and search p50 over its adds and queries, open ms median of 5"


def _build(path: Path) -> None:
    from storage import StoreBuilder

    with StoreBuilder(path, 128) as builder:
        for lo in range(0, BASE_DOCS, 1000):
            builder.add(_docs(lo, lo + 1000))
        builder.finish(encoder_spec=SPEC)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def worker(base: Path, adds: int, merged: bool) -> dict[str, Any]:
    """``adds`` single-document adds to a copy of ``base`` (run in its own process)."""
    from sie_index import Index
    from storage import MergePolicy, StoreWriter

    work = Path(tempfile.mkdtemp(prefix="bench-merges-"))
    path = work / "idx"
    shutil.copytree(base, path)
    try:
        times = []
        with StoreWriter(path, merge_policy=MergePolicy() if merged else None) as writer:
            for i in range(adds):
                t = time.perf_counter()
                writer.add([_docs(BASE_DOCS + i, BASE_DOCS + i + 1, prefix="a")])
                times.append(time.perf_counter() - t)
        opens = []
        for _ in range(5):
            t = time.perf_counter()
            before = _fds()
            index = Index.open(path, verify=False)
            opens.append(time.perf_counter() - t)
            held = _fds() - before
            segments = index.info()["segments"]
            index.close()
        rng = np.random.default_rng(0)
        lat = []
        with Index.open(path, verify=False) as index:
            for _ in range(200):
                q = rng.standard_normal((8, 128)).astype(np.float32)
                q /= np.linalg.norm(q, axis=1, keepdims=True)
                t = time.perf_counter()
                index.search(q, k=10, exact_threshold=0)
                lat.append(time.perf_counter() - t)
        return {
            "policy": "default" if merged else "none",
            "adds": adds,
            "add_ms_median": 1000 * float(np.median(times)),
            "add_ms_p95": 1000 * float(np.percentile(times, 95)),
            "segments": segments,
            "descriptors_held": held,
            "open_ms_median": 1000 * float(np.median(opens)),
            "search_ms_p50": 1000 * float(np.median(lat)),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| merge policy | adds | add ms p50 / p95 | segments | descriptors | open ms"
        " | search p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['adds']:,} | {r['add_ms_median']:.1f} / {r['add_ms_p95']:.1f} "
            f"| {r['segments']} | {r['descriptors_held']} | {r['open_ms_median']:.0f} "
            f"| {r['search_ms_p50']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adds", type=int, default=10_000, help="single-document adds")


def command(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-merges-base-") as tmp:
        base = Path(tmp) / "base"
        _build(base)
        rows = [
            in_child(worker, base, args.adds, policy == "default") for policy in ("default", "none")
        ]
    write_report(Path(args.out), "merges", {"rows": rows}, table(rows), MEDIANS)
    return 0
