"""The living index: add, delete, upsert, compaction, reopen after kill -9, build memory.

    python scripts/bench.py living                      # 60,000 documents (default)
    python scripts/bench.py living --docs 10000         # the same, smaller

Vectors are synthetic and precomputed (dim 128, 32 tokens a document, ColBERT's
shape), so encoding does not dominate; the index is ``auto`` (ivf-pq at this
size). Each phase runs in its own process, so its peak RSS is its own:

1. build N/6 and N documents (peak RSS of each, and their ratio);
2. add 5,000 documents to the N-document index in one commit (documents/s,
   excluding encoding: vectors, codes with the trained quantizer, rows, commit);
3. 50 single deletes and 20 single upserts with one open writer (median and p95 ms),
   and 10 single deletes through ``Index.delete`` (a writer each, then a refresh);
4. compaction (seconds);
5. a writer process killed with SIGKILL in the middle of an add, then the time
   to open the index again (reader, and writer with its sweep).
The indexes go under ``--index`` (runs/bench/living). Writes living.json and living.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_child import CONTEXT, in_child, peak_rss_mb
from bench_report import write_report

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DIM = 128
TOKENS = 32
SPEC = {"kind": "precomputed", "model": "bench", "dim": DIM, "options": {}}
MEDIANS = "one run; delete and upsert ms are over the operations of that run"


def _docs(lo: int, hi: int, prefix: str = "d") -> list[Any]:
    from storage import PendingDoc

    out = []
    for i in range(lo, hi):
        rng = np.random.default_rng(i)
        v = rng.standard_normal((TOKENS, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out.append(
            PendingDoc(
                external_id=f"{prefix}{i}", text=f"document {i}", metadata={"i": i}, vectors=v
            )
        )
    return out


def _batches(lo: int, hi: int, prefix: str = "d", size: int = 1000) -> Any:
    for start in range(lo, hi, size):
        yield _docs(start, min(start + size, hi), prefix)


def worker_build(path: Path, n: int) -> dict[str, Any]:
    from storage import StoreBuilder

    t = time.perf_counter()
    with StoreBuilder(path, DIM, overwrite=True) as builder:
        for batch in _batches(0, n):
            builder.add(batch)
        manifest = builder.finish(encoder_spec=SPEC)
    return {
        "documents": n,
        "tokens": manifest.tokens,
        "seconds": time.perf_counter() - t,
        "peak_rss_mb": peak_rss_mb(),
        "token_index": manifest.token_index["factory"],
    }


def worker_changes(path: Path, n: int) -> dict[str, Any]:
    from storage import StoreWriter

    out: dict[str, Any] = {}
    with StoreWriter(path) as writer:
        batches = list(_batches(n, n + 5000, "a"))  # made before the clock starts
        t = time.perf_counter()
        report = writer.add(batches)
        seconds = time.perf_counter() - t
        out["add"] = {
            "documents": report.added,
            "seconds": seconds,
            "docs_per_s": report.added / seconds,
        }
        deletes = []
        for i in range(50):
            t = time.perf_counter()
            writer.delete([f"d{i * 97}"])
            deletes.append(time.perf_counter() - t)
        upserts = []
        for i in range(20):
            batch = _docs(n + i, n + i + 1, "a")
            t = time.perf_counter()
            writer.add([batch], replace=True)
            upserts.append(time.perf_counter() - t)
        for name, xs in (("delete", deletes), ("upsert", upserts)):
            ms = np.array(xs) * 1000
            out[name] = {
                "n": len(xs),
                "p50_ms": float(np.median(ms)),
                "p95_ms": float(np.percentile(ms, 95)),
            }
    out["peak_rss_mb_after_add"] = peak_rss_mb()
    # the one-call API: each delete takes the lock, loads the writer, commits and
    # refreshes the open Index onto the new generation
    from sie_index.index import Index

    with Index.open(path) as index:
        api = []
        for i in range(10):
            t = time.perf_counter()
            index.delete([f"d{i * 97 + 1}"])
            api.append(time.perf_counter() - t)
    ms = np.array(api) * 1000
    out["delete_api"] = {
        "n": len(api),
        "p50_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
    }
    with StoreWriter(path) as writer:
        t = time.perf_counter()
        writer.compact()
        out["compact"] = {"seconds": time.perf_counter() - t, "documents": len(writer.live)}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def worker_kill(path: Path, n: int) -> dict[str, Any]:
    """Kill a writer in the middle of a large add; time what opening takes afterwards."""
    adding = CONTEXT.Event()
    child = CONTEXT.Process(target=worker_add_forever, args=(path, n, adding))
    child.start()
    if not adding.wait(timeout=300):
        child.kill()
        raise RuntimeError(f"the writer to kill never started adding (exit {child.exitcode})")
    time.sleep(3.0)
    child.kill()  # SIGKILL
    child.join()
    from sie_index import Index
    from storage import StoreWriter

    t = time.perf_counter()
    with Index.open(path, verify=False) as index:
        reader_s = time.perf_counter() - t
        live = len(index)
    t = time.perf_counter()
    with StoreWriter(path):
        writer_s = time.perf_counter() - t
    return {"reader_open_s": reader_s, "writer_open_and_sweep_s": writer_s, "documents": live}


def worker_add_forever(path: Path, n: int, adding: Any) -> None:
    """Add documents until killed; set ``adding`` once the writer holds the index."""
    from storage import StoreWriter

    with StoreWriter(path) as writer:
        adding.set()
        writer.add(_batches(10 * n, 11 * n, "k"))


def run(n: int, folder: Path) -> dict[str, Any]:
    small = in_child(worker_build, folder / "small", n // 6)
    big = in_child(worker_build, folder / "big", n)
    changes = in_child(worker_changes, folder / "big", n)
    kill = in_child(worker_kill, folder / "big", n)
    return {
        "build_small": small,
        "build": big,
        "rss_ratio": big["peak_rss_mb"] / small["peak_rss_mb"],
        **changes,
        "after_kill": kill,
    }


def table(r: dict[str, Any]) -> str:
    small, big = r["build_small"], r["build"]
    rows = [
        (
            "build",
            f"{small['documents']:,} docs: {small['peak_rss_mb']:.0f} MB peak RSS; "
            f"{big['documents']:,} docs: {big['peak_rss_mb']:.0f} MB (x{r['rss_ratio']:.2f}), "
            f"{r['build']['seconds']:.0f} s, {r['build']['token_index']}",
        ),
        (
            "add 5,000 docs (one commit)",
            f"{r['add']['docs_per_s']:,.0f} docs/s ({r['add']['seconds']:.2f} s)",
        ),
        (
            "single delete",
            f"p50 {r['delete']['p50_ms']:.1f} ms, p95 {r['delete']['p95_ms']:.1f} ms",
        ),
        (
            "single delete, Index.delete (lock, load, commit, refresh)",
            f"p50 {r['delete_api']['p50_ms']:.1f} ms, p95 {r['delete_api']['p95_ms']:.1f} ms",
        ),
        (
            "single upsert",
            f"p50 {r['upsert']['p50_ms']:.1f} ms, p95 {r['upsert']['p95_ms']:.1f} ms",
        ),
        (
            "compaction",
            f"{r['compact']['seconds']:.1f} s ({r['compact']['documents']:,} live docs)",
        ),
        (
            "open after kill -9 mid-add",
            f"reader {r['after_kill']['reader_open_s']:.2f} s, "
            f"writer + sweep {r['after_kill']['writer_open_and_sweep_s']:.2f} s",
        ),
    ]
    return "\n".join(["| | |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=60_000)
    parser.add_argument("--index", default="runs/bench/living", help="folder of the indexes")


def command(args: argparse.Namespace) -> int:
    folder = Path(args.index)
    folder.mkdir(parents=True, exist_ok=True)
    result = run(args.docs, folder)
    write_report(Path(args.out), "living", result, table(result), MEDIANS)
    return 0
