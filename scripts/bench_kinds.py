"""Index kinds by corpus size: build seconds, search p50 and quality against exhaustive MaxSim.

    python scripts/bench.py kinds                       # 1,500 / 5,000 / 15,000 documents
    python scripts/bench.py kinds --sizes 1500,5000     # fewer

The first ``max(sizes)`` documents of debian-pkgs are encoded once (the default
encoder) into a float16 base index; every variant (size x kind) is then built
from the first ``size`` documents' stored vectors (no variant re-encodes), so the
build seconds are the token index's own: what ``auto`` must keep small for a
small corpus. Each variant answers the dev queries whose judged documents it
holds, one at a time at default settings (encoded queries), and is scored
against exhaustive MaxSim over the same documents in the same run.
Writes kinds.json and kinds.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench_report import write_report

KINDS = ("flat", "ivf-sq8", "hnsw", "ivf-pq:4sqrt", "auto")
FLAT_MAX_TOKENS = 500_000
"""``flat`` is left out above this: every query scans every token (127k tokens:
42 ms; the exact index only matters for tiny corpora)."""
"""``KIND:4sqrt``: that kind with the ``nlist`` rule ``auto`` used before it scaled
with the corpus, ``2 ** round(log2(4 * sqrt(tokens)))``, for a before/after in one run."""
MEDIANS = "one run; p50 / p95 are over the queries of that run"


def _old_nlist(n_tokens: int) -> int:
    import math

    return min(2 ** round(math.log2(4 * math.sqrt(n_tokens))), n_tokens // 39)


def _copy_first(base: Path, target: Path, n_docs: int, spec: str) -> dict[str, Any]:
    """Build ``target`` of kind ``spec`` from the first ``n_docs`` documents of ``base``."""

    from storage import CodecChoice, StoreBuilder, StoreSnapshot

    t0 = time.perf_counter()
    with StoreSnapshot.open(base, verify_vectors=False) as snap:
        enc = snap.manifest.encoder
        with StoreBuilder(
            target, snap.codec.input_dim, overwrite=True, codec=CodecChoice("auto")
        ) as builder:
            for batch in snap.live_documents(limit=n_docs):
                builder.add(batch)
            kind, _, rule = spec.partition(":")
            options = {"nlist": _old_nlist(builder.n_tokens)} if rule == "4sqrt" else None
            t1 = time.perf_counter()
            manifest = builder.finish(encoder_spec=enc, index_kind=kind, index_options=options)
    return {
        "store_s": t1 - t0,
        "index_s": time.perf_counter() - t1,
        "tokens": manifest.tokens,
        "token_index": manifest.token_index,
    }


def tokens_of(base: Path, n_docs: int) -> int:
    from storage import StoreSnapshot

    with StoreSnapshot.open(base, verify_vectors=False) as snap:
        return int(snap.spans.token_count[:n_docs].sum())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1500,5000,15000", help="documents a variant")
    parser.add_argument("--kinds", default=",".join(KINDS), help="index kinds to build")
    parser.add_argument("--queries", type=int, default=None, help="at most N dev queries")


def command(args: argparse.Namespace) -> int:
    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import evaluate
    from sie_index.index import Index
    from sie_index.params import SearchParams

    sizes = sorted(int(s) for s in args.sizes.split(","))
    out = Path(args.out)
    base = out / "kinds-base"
    have = None
    if base.exists():
        with Index.open(base, verify=False) as existing:
            have = len(existing)
    t0 = time.perf_counter()
    encode_s = None
    if have != sizes[-1]:
        built = Index.build(
            base,
            "debian-pkgs",
            limit=sizes[-1],
            on_error="skip",
            overwrite=True,
            index_kind="flat",
            codec="f16",
            progress=False,
        )
        assert built.build_report is not None
        encode_s = built.build_report.encode_seconds
        built.close()
    print(f"base index of {sizes[-1]} documents ready ({time.perf_counter() - t0:.0f} s)")
    dataset = BeirDataset.load("debian-pkgs")
    rows = []
    for size in sizes:
        for kind in args.kinds.split(","):
            if kind == "flat" and tokens_of(base, size) > FLAT_MAX_TOKENS:
                continue
            target = out / f"kinds-{size}-{kind.replace(':', '-')}"
            built = _copy_first(base, target, size, kind)
            with Index.open(target, verify=False) as index:
                rep = evaluate(
                    index,
                    dataset,
                    params=SearchParams(k=100),
                    exhaustive=True,
                    exhaustive_latency_queries=0,
                    max_queries=args.queries,
                )
                total_bytes = index.info()["total_bytes"]
            shutil.rmtree(target)
            row = {
                "documents": size,
                "kind": kind,
                **built,
                "bytes": total_bytes,
                "queries": rep.queries,
                "p50_ms": rep.latency_ms["search_p50"],
                "p95_ms": rep.latency_ms["search_p95"],
                "mrr10_ratio": (rep.ratio_to_exhaustive or {}).get("MRR@10"),
                "r100_ratio": (rep.ratio_to_exhaustive or {}).get("R@100"),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"encode_s_base": encode_s, "rows": rows}
    lines = [
        "k=100, default search settings.",
        "",
        "| documents | tokens | kind | token index | index build s | p50 ms | p95 ms "
        "| MRR@10 ratio | R@100 ratio |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ti = r["token_index"]
        desc = ti["kind"] + (f" nlist {ti['nlist']}" if ti.get("nlist") else "")
        lines.append(
            f"| {r['documents']:,} | {r['tokens']:,} | {r['kind']} | {desc} | {r['index_s']:.1f} "
            f"| {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['mrr10_ratio']:.3f} "
            f"| {r['r100_ratio']:.3f} |"
        )
    write_report(out, "kinds", report, "\n".join(lines) + "\n", MEDIANS)
    return 0
