"""Index kinds by corpus size: build seconds, search p50 and quality against exhaustive MaxSim.

    python scripts/bench.py --kinds                       # 1,500 / 5,000 / 15,000 documents
    python scripts/bench.py --kinds --sizes 1500,5000     # fewer

The first ``max(sizes)`` documents of debian-pkgs are encoded once (the default
encoder) into a float16 base index; every variant (size x kind) is then built
from the first ``size`` documents' stored vectors (no variant re-encodes), so the
build seconds are the token index's own: what ``auto`` must keep small for a
small corpus. Each variant answers the dev queries whose judged documents it
holds, one at a time at default settings (encoded queries), and is scored
against exhaustive MaxSim over the same documents in the same run.
Writes runs/bench/kinds.json and kinds.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

KINDS = ("flat", "ivf-sq8", "hnsw", "ivf-pq:4sqrt", "auto")
FLAT_MAX_TOKENS = 500_000
"""``flat`` is left out above this: every query scans every token (127k tokens:
42 ms; the exact index only matters for tiny corpora)."""
"""``KIND:4sqrt``: that kind with the ``nlist`` rule ``auto`` used before it scaled
with the corpus, ``2 ** round(log2(4 * sqrt(tokens)))``, for a before/after in one run."""
CHUNK_DOCS = 1024


def _old_nlist(n_tokens: int) -> int:
    import math

    return min(2 ** round(math.log2(4 * math.sqrt(n_tokens))), n_tokens // 39)


def _copy_first(base: Path, target: Path, n_docs: int, spec: str) -> dict[str, Any]:
    """Build ``target`` of kind ``spec`` from the first ``n_docs`` documents of ``base``."""
    import numpy as np

    from storage import CodecChoice, PendingDoc, StoreBuilder, StoreSnapshot

    t0 = time.perf_counter()
    with StoreSnapshot.open(base, verify_vectors=False) as snap:
        enc = snap.manifest.encoder
        with StoreBuilder(
            target, snap.codec.input_dim, overwrite=True, codec=CodecChoice("auto")
        ) as builder:
            for lo in range(0, n_docs, CHUNK_DOCS):
                chunk = np.arange(lo, min(lo + CHUNK_DOCS, n_docs))
                stored = snap.docs.fetch(chunk.tolist(), text=True, metadata=True)
                counts = snap.spans.token_count[chunk]
                vectors = snap.tokens.spans(snap.spans.token_start[chunk], counts)
                parts = np.split(vectors, np.cumsum(counts)[:-1])
                builder.add(
                    [
                        PendingDoc(
                            external_id=stored[d].external_id,
                            text=stored[d].text,
                            metadata=stored[d].metadata,
                            vectors=v,
                        )
                        for d, v in zip(chunk.tolist(), parts, strict=True)
                    ]
                )
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1500,5000,15000", help="documents a variant")
    ap.add_argument("--kinds", default=",".join(KINDS), help="index kinds to build")
    ap.add_argument("--out", default="runs/bench", help="report folder")
    ap.add_argument("--queries", type=int, default=None, help="at most N dev queries")
    args = ap.parse_args(argv)
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
    command = "python scripts/bench.py --kinds " + " ".join(argv or sys.argv[1:])
    report = {"command": command.strip(), "encode_s_base": encode_s, "rows": rows}
    (out / "kinds.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"`{report['command']}` (one run, 2 cores; k=100, default search settings)",
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
    (out / "kinds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
