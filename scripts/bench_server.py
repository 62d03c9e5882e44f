"""The search service under load, on loopback: QPS and latency at 1, 4 and 16 clients.

    python scripts/bench.py server                                  # a synthetic index of 20,000
    python scripts/bench.py server --synthetic 2000 --requests 200  # a quick look
    python scripts/bench.py server --index runs/bench/index         # a real index
    python scripts/bench.py server --index runs/bench/index --text  # text queries

A ``sie-index serve`` child process on 127.0.0.1 serves the index; an httpx
async loop of our own runs N concurrent clients, each sending requests until
``--requests`` have been sent at that level (it stops by itself). Two mixes:
searches only, and 10% writes (single-document adds of random vectors) among
them; writes go to a copy of the index, never to the index given. Queries are
random unit vectors of the index's dimension (8 tokens), so a real index built
with any encoder works and no model is loaded. The server's overhead is its
p50 at one client minus in-process ``Index.search``'s p50 on the same queries.
Writes server.json and server.md; exits 1 if a request failed or an acknowledged
write is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_report import write_report

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.server_process import ServerProcess  # noqa: E402 (the one way we start a server)

MEDIANS = "one run a level; p50 / p99 are over the requests of that run"


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_synthetic(path: Path, n: int, dim: int) -> None:
    from sie_index import Index

    rng = np.random.default_rng(0)
    centres = _unit(rng, max(8, n // 50), dim)
    vectors = []
    for _ in range(n):
        rows = centres[rng.integers(len(centres), size=int(rng.integers(8, 33)))]
        vectors.append(rows + 0.5 * _unit(rng, len(rows), dim))
    ids = [f"doc-{i}" for i in range(n)]
    Index.from_vectors(path, ids, vectors, index_kind="auto").close()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _plan(
    requests: int, write_fraction: float, dim: int, seed: int, texts: list[str] | None = None
) -> list[tuple[str, Any]]:
    """What each request sends: a search (query vectors, or with ``texts`` a query text
    the server encodes) or a one-document write of random vectors."""
    rng = np.random.default_rng(seed)
    plan: list[tuple[str, Any]] = []
    for i in range(requests):
        if rng.random() < write_fraction:
            plan.append(("write", _unit(rng, 8, dim).tolist()))
        elif texts:
            plan.append(("search", texts[(seed * 7919 + i) % len(texts)]))
        else:
            plan.append(("search", _unit(rng, 8, dim).tolist()))
    return plan


async def _load(
    url: str,
    clients: int,
    requests: int,
    write_fraction: float,
    dim: int,
    seed: int,
    texts: list[str] | None = None,
    acked: list[str] | None = None,
) -> dict[str, Any]:
    plan = _plan(requests, write_fraction, dim, seed, texts)
    times: dict[str, list[float]] = {"search": [], "write": []}
    errors = 0
    cursor = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in cursor:  # shared: the clients together send ``requests``
            kind, vectors = plan[i]
            t0 = time.perf_counter()
            if kind == "search":
                query = {"query": vectors} if isinstance(vectors, str) else {"vectors": vectors}
                r = await http.post("/search", json={**query, "k": 10})
            else:
                doc = {"id": f"bench-{seed}-{i}", "vectors": vectors}
                r = await http.post("/documents", json={"documents": [doc]})
                if r.status_code == 200 and acked is not None:
                    acked.append(doc["id"])
            times[kind].append((time.perf_counter() - t0) * 1000)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": requests,
        "qps": requests / wall,
        "search_p50_ms": _pct(times["search"], 50),
        "search_p99_ms": _pct(times["search"], 99),
        "write_p50_ms": _pct(times["write"], 50),
        "write_p99_ms": _pct(times["write"], 99),
        "writes": len(times["write"]),
        "errors": errors,
    }


def in_process_p50(path: Path, dim: int, n: int, texts: list[str] | None = None) -> float:
    """``Index.search``'s p50 on the queries the first server run sent (seed 0)."""
    from sie_index import Index

    queries = [
        q if isinstance(q, str) else np.asarray(q, dtype=np.float32)
        for _, q in _plan(n, 0.0, dim, seed=0, texts=texts)
    ]
    with Index.open(path, verify=False) as index:
        for q in queries[:5]:
            index.search(q, k=10)  # warm
        times = []
        for q in queries:
            t0 = time.perf_counter()
            index.search(q, k=10)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def run(
    index: Path,
    levels: list[int],
    requests: int,
    write_fraction: float,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    from sie_index import Index

    with Index.open(index, verify=False) as opened:
        dim = int(opened.info()["dim"])
        documents = int(opened.info()["documents"])
    report: dict[str, Any] = {
        "index": str(index),
        "documents": documents,
        "dim": dim,
        "queries": "text (encoded by the server)" if texts else "vectors",
        "runs": [],
    }
    acked: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-server-") as work:
        copy = Path(work) / "idx"
        shutil.copytree(index, copy, ignore=shutil.ignore_patterns("write.lock"))
        with ServerProcess(copy, "--no-verify") as server:
            for mix, fraction in (("search", 0.0), ("10% writes", write_fraction)):
                for clients in levels:
                    result = asyncio.run(
                        _load(
                            server.url,
                            clients,
                            requests,
                            fraction,
                            dim,
                            seed=len(report["runs"]),
                            texts=texts,
                            acked=acked,
                        )
                    )
                    result["mix"] = mix
                    report["runs"].append(result)
                    print(json.dumps(result), flush=True)
        # the index holds every acknowledged write after the run
        with Index.open(copy, verify=True) as after:
            present = after.lookup(acked)
        report["acked_writes"] = len(acked)
        report["acked_present"] = len(present)
        report["in_process_p50_ms"] = in_process_p50(copy, dim, requests, texts)
    one = next(r for r in report["runs"] if r["clients"] == levels[0] and r["mix"] == "search")
    report["server_overhead_p50_ms"] = one["search_p50_ms"] - report["in_process_p50_ms"]
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['documents']:,} documents, dim {report['dim']}; in-process search p50 "
        f"{report['in_process_p50_ms']:.2f} ms, the server adds "
        f"{report['server_overhead_p50_ms']:.2f} ms at one client; queries: "
        f"{report['queries']}; acknowledged writes in the index after the run: "
        f"{report['acked_present']} of {report['acked_writes']}",
        "",
        "| mix | clients | QPS | search p50 / p99 ms | write p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        writes = f"{r['write_p50_ms']:.1f} / {r['write_p99_ms']:.1f}" if r["writes"] else "-"
        lines.append(
            f"| {r['mix']} | {r['clients']} | {r['qps']:.0f} | "
            f"{r['search_p50_ms']:.2f} / {r['search_p99_ms']:.2f} | {writes} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--synthetic", type=int, default=20_000, metavar="N", help="a synthetic index of N docs"
    )
    source.add_argument("--index", type=Path, help="an existing index (served from a copy)")
    parser.add_argument("--dim", type=int, default=128, help="dimension (--synthetic)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=2000, help="requests per level")
    parser.add_argument("--write-fraction", type=float, default=0.1)
    parser.add_argument(
        "--text",
        action="store_true",
        help="search with debian-pkgs dev query texts, encoded by the server (with --index)",
    )


def command(args: argparse.Namespace) -> int:
    texts = None
    if args.text:
        from sie_index.corpus import BeirDataset

        texts = list(BeirDataset.load("debian-pkgs", "dev").queries.values())
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-server-index-") as work:
        index = args.index
        if index is None:
            index = Path(work) / "synthetic"
            build_synthetic(index, args.synthetic, args.dim)
        report = run(index, levels, args.requests, args.write_fraction, texts)
    write_report(Path(args.out), "server", report, table(report), MEDIANS)
    bad = sum(r["errors"] for r in report["runs"])
    return 1 if bad or report["acked_present"] != report["acked_writes"] else 0
