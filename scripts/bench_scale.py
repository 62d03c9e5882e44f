"""Latency, quality and memory against corpus size, one index after another.

    python scripts/bench.py scale --index 6k=runs/scale/6k --index 60k=runs/full/index \\
        --index 730k=runs/grow/index --queries 500 --out runs/scale

Each ``--index LABEL=PATH`` is measured in its own child process (its peak RSS is
the search's own): what it holds (documents, tokens, bytes, kind, codec, the
search defaults it derived), one query at a time at k=100 and k=10 with default
settings, p50 / p95 (warm: after 20 queries), the text -> hits latency at k=10
(encoding included), and, for the same queries, exhaustive MaxSim over every
stored token, streamed in blocks (kept in ``OUT/exhaustive-KEY.json`` and reused
while the documents and queries are the same): MRR@10 and R@100 as ratios of
the oracle's. ``--fixed`` adds a row per index at the settings the defaults
replaced (k_token 64, nprobe 16, n_rerank = k). ``--cold`` first drops the page
cache (root only) and times the first queries of a fresh process. ``--build
LABEL=build.json`` adds a build's time and peak RSS (a ``bench.py build``
report, or any JSON with ``encode_s`` and ``index_s``, or ``total_s`` and ``how``,
and ``peak_rss_mb``). ``--ratio BIG:SMALL`` (two labels) times the two indexes
in one process, in alternating blocks of 50 queries (the order flips every
block), at k=100 and k=10 with default settings: their p50s and the ratio, as
both saw the same machine (the rows of the main table are timed one index after
another, minutes apart). The queries
are debian-pkgs dev queries judged in the index (its qrels hold for the mixed
corpus). Writes scale.json, scale.md and scale.png (latency against documents,
log-log).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_child import in_child, peak_rss_mb
from bench_report import write_report
from bench_runs import exhaustive_run

MEDIANS = "one run; p50 / p95 are over the queries of that run"
WARM = 20
TEXT_QUERIES = 200
COLD_QUERIES = 50
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def _labelled(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"{what} takes LABEL=PATH, not {value!r}")
        out[label] = path
    return out


def _timed(index: Any, Qs: list[Any], params: Any) -> tuple[list[Any], list[float]]:
    ranked, times = [], []
    for Q in Qs:
        t0 = time.perf_counter()
        ranked.append(index.rank([Q], params, threads=1)[0])
        times.append(time.perf_counter() - t0)
    return ranked, times


def _ms(times: list[float]) -> dict[str, float]:
    return {
        "p50": 1000 * float(np.median(times)),
        "p95": 1000 * float(np.percentile(times, 95)),
    }


def measure_index(label: str, path: str, queries: int, fixed: bool, out: str) -> dict[str, Any]:
    """One index, in a child process: see the module's docstring."""
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import external_ids, judged_queries, metrics_of_run
    from sie_index.index import Index
    from sie_index.params import SearchParams

    dataset = BeirDataset.load("debian-pkgs")
    index = Index.open(path, verify=False)
    info = index.info(growth=False)
    external = external_ids(index)
    qids = judged_queries(dataset, external)[:queries]
    qrels = {q: dataset.qrels[q] for q in qids}
    texts = [dataset.queries[q] for q in qids]
    Qs = index.encode_queries(texts)
    # warm: FAISS, the coarse graph, and the page cache for every query's reads at
    # the deepest settings measured (the previous index's cold start dropped the
    # cache, which the first variant timed would otherwise count: p95 51 ms at 730k)
    index.search_batch(Qs[:WARM])
    index.search_batch(Qs, k=100)
    variants = {"default": SearchParams(k=100), "default k=10": SearchParams(k=10)}
    if index.search_defaults.n_centroid:
        # the same index's defaults without the screen by centroid interaction
        variants["unscreened"] = SearchParams(k=100, n_centroid=0)
        variants["unscreened k=10"] = SearchParams(k=10, n_centroid=0)
    if fixed:
        # the settings before the defaults scaled: no screen either
        variants["fixed 64/16/k"] = SearchParams(
            k=100, k_token=64, nprobe=16, n_rerank=100, n_centroid=0
        )
        variants["fixed 64/16/k k=10"] = SearchParams(
            k=10, k_token=64, nprobe=16, n_rerank=64, n_centroid=0
        )
    rows: dict[str, Any] = {}
    runs: dict[str, dict[str, dict[str, float]]] = {}
    for name, params in variants.items():
        ranked, times = _timed(index, Qs, params)
        runs[name] = {
            q: {
                external[d]: float(s)
                for d, s in zip(r.doc_ids.tolist(), r.scores.tolist(), strict=True)
            }
            for q, r in zip(qids, ranked, strict=True)
        }
        rows[name] = {
            "latency_ms": _ms(times),
            "params": {
                k: getattr(params.resolved(index.search_defaults), k)
                for k in ("k", "k_token", "nprobe", "n_rerank", "n_centroid")
            },
        }
    text_times = []
    for text in texts[:TEXT_QUERIES]:
        t0 = time.perf_counter()
        index.search(text, k=10)
        text_times.append(time.perf_counter() - t0)
    search_rss = peak_rss_mb()
    ex_run = _exhaustive_run(index, Qs, qids, external, Path(out))
    exhaustive = metrics_of_run(qrels, ex_run)
    for name, row in rows.items():
        m = metrics_of_run(qrels, runs[name])
        row["MRR@10_ratio"] = m["MRR@10"] / exhaustive["MRR@10"]
        if not name.endswith("k=10"):  # recall at 100 needs a run 100 deep
            row["R@100_ratio"] = m["R@100"] / exhaustive["R@100"]
        row["metrics"] = m
    index.close()
    return {
        "label": label,
        "index": path,
        "documents": info["documents"],
        "tokens": info["tokens"],
        "total_bytes": info["total_bytes"],
        "token_index": info["token_index"],
        "codec": info["codec"],
        "search_defaults": info["search_defaults"],
        "queries": len(qids),
        "exhaustive": exhaustive,
        "variants": rows,
        "text_to_hits_k10_ms": _ms(text_times),
        "search_peak_rss_mb": search_rss,
    }


def measure_cold(path: str, queries: int) -> dict[str, Any]:
    """The first queries of a fresh process on a dropped page cache."""
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import external_ids, judged_queries
    from sie_index.index import Index
    from sie_index.params import SearchParams

    dataset = BeirDataset.load("debian-pkgs")
    t0 = time.perf_counter()
    index = Index.open(path, verify=False)
    open_s = time.perf_counter() - t0
    qids = judged_queries(dataset, external_ids(index))[:queries]
    Qs = index.encode_queries([dataset.queries[q] for q in qids])
    _, times = _timed(index, Qs, SearchParams(k=100))
    index.close()
    return {"open_s": open_s, "latency_ms": _ms(times), "first_ms": 1000 * times[0]}


RATIO_BLOCK = 50


def measure_ratio(big: str, small: str, queries: int) -> dict[str, Any]:
    """Two indexes timed side by side in one process (``--ratio``): the same queries,
    judged in both, in alternating blocks; p50 of each and big over small."""
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import external_ids, judged_queries
    from sie_index.index import Index
    from sie_index.params import SearchParams

    dataset = BeirDataset.load("debian-pkgs")
    indexes = {"big": Index.open(big, verify=False), "small": Index.open(small, verify=False)}
    in_big = set(judged_queries(dataset, external_ids(indexes["big"])))
    qids = [q for q in judged_queries(dataset, external_ids(indexes["small"])) if q in in_big]
    qids = qids[:queries]
    Qs = indexes["small"].encode_queries([dataset.queries[q] for q in qids])  # one encoder
    for index in indexes.values():
        index.search_batch(Qs, k=100)  # warm, as measure_index does
    out: dict[str, Any] = {"queries": len(qids)}
    for k in (100, 10):
        times: dict[str, list[float]] = {name: [] for name in indexes}
        for b in range(0, len(Qs), RATIO_BLOCK):
            names = list(indexes) if (b // RATIO_BLOCK) % 2 == 0 else list(indexes)[::-1]
            for name in names:
                times[name] += _timed(indexes[name], Qs[b : b + RATIO_BLOCK], SearchParams(k=k))[1]
        p50 = {name: _ms(t)["p50"] for name, t in times.items()}
        out[f"k={k}"] = {"big_p50_ms": p50["big"], "small_p50_ms": p50["small"]}
        out[f"k={k}"]["ratio"] = p50["big"] / p50["small"]
    for index in indexes.values():
        index.close()
    return out


def _exhaustive_run(
    index: Any, Qs: list[Any], qids: list[str], external: list[str], out: Path
) -> dict[str, dict[str, float]]:
    """Exhaustive MaxSim's run, kept in ``OUT/exhaustive-KEY.json``: the key is what the
    oracle depends on (the stored documents' ids and tokens, the codec that stores
    them, the queries), not the token index, so an index and its retrained copy
    share one run, and a pq copy of the same documents does not."""
    info = index.info(growth=False)
    key = {
        "codec": [info["codec"], info["dim"]],
        "documents": info["documents"],
        "tokens": info["tokens"],
        "ids_sha256": hashlib.sha256("\n".join(sorted(external)).encode()).hexdigest(),
        "queries": qids,
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return exhaustive_run(index, Qs, qids, external, out / f"exhaustive-{name}.json", key)


def _drop_caches() -> bool:
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def table(report: dict[str, Any]) -> str:
    lines = [
        "| documents | tokens | index GB | build s (encode + index) | build peak RSS MB "
        "| settings | p50 / p95 ms k=100 | p50 / p95 ms k=10 | MRR@10 ratio k=100 / k=10 "
        "| R@100 ratio | text -> hits p50 ms k=10 | search RSS MB | cold p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["indexes"]:
        b = r.get("build") or {}
        build = ""
        if "encode_s" in b and "index_s" in b:
            build = f"{b['encode_s']:.0f} + {b['index_s']:.0f}"
        elif "total_s" in b:
            build = f"{b['total_s']:.0f} ({b.get('how', 'in all')})"
        rss = f"{b['peak_rss_mb']:.0f}" if "peak_rss_mb" in b else ""
        cold = f"{r['cold']['latency_ms']['p50']:.2f}" if r.get("cold") else ""
        for name in [n for n in r["variants"] if not n.endswith("k=10")]:
            v, v10 = r["variants"][name], r["variants"][name + " k=10"]
            p, p10 = v["params"], v10["params"]
            mrr10 = f" / {v10['MRR@10_ratio']:.4f}" if "MRR@10_ratio" in v10 else ""
            lines.append(
                f"| {r['documents']:,} ({r['label']}) | {r['tokens']:,} | "
                f"{r['total_bytes'] / 1e9:.2f} | {build} | {rss} | {name}: {p['k_token']}/"
                f"{p['nprobe']}/{p['n_rerank']}{_screen(p)} (k=10: {p10['n_rerank']}"
                f"{_screen(p10)}) | "
                f"{v['latency_ms']['p50']:.2f} / "
                f"{v['latency_ms']['p95']:.2f} | {v10['latency_ms']['p50']:.2f} / "
                f"{v10['latency_ms']['p95']:.2f} | {v['MRR@10_ratio']:.4f}{mrr10} | "
                f"{v['R@100_ratio']:.4f} | {r['text_to_hits_k10_ms']['p50']:.2f} | "
                f"{r['search_peak_rss_mb']:.0f} | {cold} |"
            )
    for r in report.get("ratios", []):
        lines.append("")
        lines.append(
            f"Side by side in one process ({r['queries']} queries, alternating blocks of "
            f"{RATIO_BLOCK}), {r['big']} against {r['small']}, default settings: "
            + "; ".join(
                f"{k} {r[k]['big_p50_ms']:.2f} / {r[k]['small_p50_ms']:.2f} ms p50 = "
                f"{r[k]['ratio']:.2f}x"
                for k in ("k=100", "k=10")
            )
            + "."
        )
    lines.append("")
    lines.append(
        "Settings: k_token / nprobe / n_rerank at k=100, and n_rerank at k=10; "
        '"of N": the n_rerank were screened from N candidates by centroid interaction '
        "(`n_centroid`). The "
        "defaults are derived from "
        "each index's size: `Index.info()['search_defaults']`. Quality: against "
        "exhaustive MaxSim over the same index, same queries."
    )
    return "\n".join(lines)


def _screen(params: dict[str, Any]) -> str:
    """ " of N" when a search screened N candidates down to its n_rerank."""
    n = params.get("n_centroid") or 0
    return f" of {n}" if n > params["n_rerank"] else ""


def plot(report: dict[str, Any], target: Path) -> None:
    """p50 against documents, log-log: one line per k through the indexes as built
    (or retrained), an index grown by adds without a retrain as a hollow marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter, StrMethodFormatter

    rows = sorted(report["indexes"], key=lambda r: r["documents"])
    built = [r for r in rows if "grown" not in r["label"]]
    grown = [r for r in rows if "grown" in r["label"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style, label in (("default", "o-", "k=100"), ("default k=10", "s--", "k=10")):
        p50 = [r["variants"][name]["latency_ms"]["p50"] for r in built]
        (line,) = ax.plot([r["documents"] for r in built], p50, style, label=label)
        if grown:
            ax.plot(
                [r["documents"] for r in grown],
                [r["variants"][name]["latency_ms"]["p50"] for r in grown],
                style[0],
                mfc="none",
                color=line.get_color(),
                label=f"{label}, grown by adds (no retrain)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("documents")
    ax.set_ylabel("search p50, ms (one query at a time)")
    for r in built:
        ax.annotate(r["label"], (r["documents"], r["variants"]["default"]["latency_ms"]["p50"]))
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--index", action="append", required=True, help="LABEL=PATH of a built index (repeat)"
    )
    sub.add_argument("--build", action="append", default=[], help="LABEL=build report JSON")
    sub.add_argument("--queries", type=int, default=500, help="judged dev queries")
    sub.add_argument("--fixed", action="store_true", help="also the old fixed settings")
    sub.add_argument("--cold", action="store_true", help="also cold starts (root: drops caches)")
    sub.add_argument(
        "--ratio",
        action="append",
        default=[],
        help="BIG:SMALL labels: the two timed side by side in one process (repeat)",
    )


def command(args: argparse.Namespace) -> int:
    indexes = _labelled(args.index, "--index")
    builds = _labelled(args.build, "--build")
    pairs = [pair.partition(":")[::2] for pair in args.ratio]
    for pair, (big, small) in zip(args.ratio, pairs, strict=True):
        if big not in indexes or small not in indexes:
            raise SystemExit(f"--ratio takes BIG:SMALL, two --index labels, not {pair!r}")
    out = Path(args.out)
    results = []
    for label, path in indexes.items():
        result = in_child(measure_index, label, path, args.queries, args.fixed, str(out))
        if label in builds:
            result["build"] = json.loads(Path(builds[label]).read_text())
        if args.cold:
            if _drop_caches():
                result["cold"] = in_child(measure_cold, path, COLD_QUERIES)
            else:
                print(f"cannot write {DROP_CACHES}: no cold start measured")
        results.append(result)
    ratios = []
    for big, small in pairs:
        ratio = in_child(measure_ratio, indexes[big], indexes[small], args.queries)
        ratios.append({"big": big, "small": small, **ratio})
    report = {"indexes": results, "ratios": ratios}
    write_report(out, "scale", report, table(report), MEDIANS)
    plot(report, out / "scale.png")
    return 0
