"""How much exhaustive MRR@10 a product code keeps when it alone scores the rerank.

    python scripts/bench.py rerank-codes --index runs/bench/base/index --out runs/bench/base

The ``pq`` codec loses its MRR@10 in the rerank, not in the ANN: ``f16`` with
the same ANN keeps 0.998 of exhaustive MaxSim (``bench.py codecs``). This
bench isolates that loss and prices the codes that could close it, without a
full build for each. On the f16 index an earlier ``bench.py full`` run built, it

1. encodes the first ``--queries`` dev queries and searches each with the index
   at ``n_rerank`` 256 (its ANN, then exact MaxSim over float16 vectors), keeping
   the top ``--depth`` documents: the candidates every code then reranks;
2. reads those documents' stored vectors and a seeded sample of the index's
   tokens (``training_rows``, as a build samples), and assigns every vector to
   its nearest centroid of the index's own IVF quantizer (the coarse level a
   ``pq`` build keeps too);
3. for each code, trains FAISS's product quantizer (optionally after FAISS's OPQ
   rotation, trained on the same residuals) on the sample's residuals, then
   scores each query's candidates with MaxSim over centroid plus decoded
   residual, and computes MRR@10 against the judged answers.

Reported per code: its bytes (an inverted list number of 2 bytes plus the product
code), the bytes a token an index with it would take on disk (the code plus the
f16 index's other files a token: the SQLite maps, the token map and the
centroids; for the f16 row its stored vectors, without its separate ANN file),
MRR@10, its ratio to exhaustive MaxSim (``exhaustive.json`` next to the index,
over all 2,000 dev queries) and to the same candidates reranked from the f16
vectors, and the relative reconstruction error. Writes rerank_codes.json and
rerank_codes.md under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_report import write_report

# (name, OPQ rotation, sub-quantizers, bits each): every code FAISS's ProductQuantizer
# holds; "opq" rotates the residuals first (FAISS's OPQMatrix, same code size)
CODES = [
    ("PQ32x8", False, 32, 8),
    ("OPQ32,PQ32x8", True, 32, 8),
    ("PQ48x6", False, 48, 6),
    ("PQ48x8", False, 48, 8),
    ("PQ64x8", False, 64, 8),
]
LIST_BYTES = 2  # FAISS's inverted list number in a standalone code, below 65,536 lists
CHUNK = 200_000
MEDIANS = "one run (quality only; no latency)"


def run(index_path: str, queries: int, depth: int, codes: list[str] | None) -> dict[str, Any]:
    import faiss

    from sie_index.corpus import BeirDataset
    from sie_index.evaluation import external_ids, judged_queries, metrics_of_run
    from sie_index.index import Index
    from sie_index.params import SearchParams
    from sie_index.scoring import segment_maxsim
    from storage import StoreSnapshot
    from storage.token_index import training_rows

    dataset = BeirDataset.load("debian-pkgs")
    with Index.open(index_path, verify=False) as index:
        ext = external_ids(index)
        qids = judged_queries(dataset, ext)[:queries]
        Qs = index.encode_queries([dataset.queries[q] for q in qids])
        ranked = index.rank(Qs, SearchParams(k=depth, n_rerank=256))
    qrels = {q: dataset.qrels[q] for q in qids}
    candidates = [r.doc_ids[:depth] for r in ranked]
    union = np.unique(np.concatenate(candidates))
    folder = Path(index_path)
    with StoreSnapshot.open(folder, verify_vectors=False) as snap:
        plan = snap.plan
        starts, counts = snap.spans.token_start[union], snap.spans.token_count[union]
        X = np.asarray(snap.tokens.spans(starts, counts), dtype=np.float16)
        n_tokens = int(snap.spans.token_count[~snap.spans.deleted].sum())
        rows = training_rows(snap.tokens.n_tokens, plan.train_sample, plan.seed)
        sample = snap.tokens.sample_rows(rows, 32_768)
        owner = snap.token_index.parts[0][0]  # keeps the C++ index alive for the view below
        centroids = faiss.extract_index_ivf(owner).quantizer.reconstruct_n(0, plan.nlist)
    other = sum(
        f.stat().st_size
        for f in folder.glob("seg-*/*")
        if f.name in ("docs.sqlite", "token_doc.i32")
    )
    other_per_token = other / n_tokens + plan.nlist * X.shape[1] * 4 / n_tokens
    exhaustive = json.loads((folder.parent / "exhaustive.json").read_text())
    oracle_mrr = float(exhaustive["exhaustive_metrics"]["MRR@10"])

    assigner = faiss.IndexFlatIP(X.shape[1])
    assigner.add(centroids)

    def nearest(v: np.ndarray) -> np.ndarray:
        out = []
        for lo in range(0, len(v), CHUNK):
            _, ids = assigner.search(np.ascontiguousarray(v[lo : lo + CHUNK], np.float32), 1)
            out.append(ids[:, 0])
        return np.concatenate(out)

    t0 = time.perf_counter()
    lists, sample_lists = nearest(X), nearest(sample)
    assign_s = time.perf_counter() - t0
    residuals = sample - centroids[sample_lists]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    position = {d: i for i, d in enumerate(union.tolist())}

    def score(vectors: np.ndarray) -> tuple[dict[str, float], float]:
        run: dict[str, dict[str, float]] = {}
        for qid, Q, cand in zip(qids, Qs, candidates, strict=True):
            spans = [vectors[offsets[position[d]] : offsets[position[d] + 1]] for d in cand]
            D = np.concatenate(spans).astype(np.float32)
            scores = segment_maxsim(Q, D, np.array([len(s) for s in spans]))
            pairs = zip(cand.tolist(), scores.tolist(), strict=True)
            run[qid] = {ext[d]: float(s) for d, s in pairs}
        head = X[:CHUNK].astype(np.float32)
        error = float(
            np.linalg.norm(vectors[:CHUNK].astype(np.float32) - head, axis=1).mean()
            / np.linalg.norm(head, axis=1).mean()
        )
        return metrics_of_run(qrels, run), error

    results = []
    metrics, error = score(X)
    results.append(_row("f16 (as stored)", X.shape[1] * 2, other_per_token, metrics, oracle_mrr))
    for name, opq, m, bits in CODES:
        if codes and name not in codes:
            continue
        t0 = time.perf_counter()
        rotation = None
        trained = residuals
        if opq:
            rotation = faiss.OPQMatrix(X.shape[1], m)
            rotation.train(residuals)
            trained = rotation.apply(residuals)
        pq = faiss.ProductQuantizer(X.shape[1], m, bits)
        pq.train(np.ascontiguousarray(trained))
        decoded = np.empty_like(X)
        for lo in range(0, len(X), CHUNK):
            base = centroids[lists[lo : lo + CHUNK]]
            r = X[lo : lo + CHUNK].astype(np.float32) - base
            if rotation is not None:
                r = rotation.apply(r)
            back = pq.decode(pq.compute_codes(np.ascontiguousarray(r)))
            if rotation is not None:
                back = rotation.reverse_transform(back)
            decoded[lo : lo + CHUNK] = base + back
        metrics, error = score(decoded)
        code_bytes = LIST_BYTES + pq.code_size
        row = _row(name, code_bytes, other_per_token, metrics, oracle_mrr)
        row.update(error=error, seconds=time.perf_counter() - t0)
        results.append(row)
        print(name, f"MRR@10 {row['mrr10']:.4f}", flush=True)
    for row in results:  # the same queries reranked from f16 vectors: the loss of the code alone
        row["of_f16"] = row["mrr10"] / results[0]["mrr10"]
    return {
        "queries": len(qids),
        "depth": depth,
        "candidate_tokens": len(X),
        "nlist": plan.nlist,
        "exhaustive_mrr10": oracle_mrr,
        "assign_s": assign_s,
        "codes": results,
    }


def _row(
    name: str, code_bytes: int, other: float, metrics: dict[str, float], oracle: float
) -> dict[str, Any]:
    return {
        "code": name,
        "code_bytes": code_bytes,
        "bytes_per_token": code_bytes + other,
        "mrr10": metrics["MRR@10"],
        "ratio": metrics["MRR@10"] / oracle,
    }


def table_row(row: dict[str, Any]) -> str:
    error = f"{row['error']:.3f}" if "error" in row else "0"
    return (
        f"| {row['code']} | {row['code_bytes']} | {row['bytes_per_token']:.1f} | "
        f"{row['mrr10']:.4f} | {row['ratio']:.3f} | {row['of_f16']:.3f} | {error} |"
    )


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['queries']} dev queries, each reranking the top {result['depth']} documents "
        f"the f16 index finds ({result['candidate_tokens']} tokens) with the code's vectors; "
        f"IVF{result['nlist']} centroids of the index; ratio to exhaustive MaxSim's MRR@10 "
        f"{result['exhaustive_mrr10']:.4f} (over every dev query: a ratio only for all "
        "2,000), and to the same candidates reranked from the stored f16 vectors.",
        "",
        "| code | bytes a code | bytes a token on disk | MRR@10 | ratio to exhaustive "
        "| ratio to f16 | rel. error |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [table_row(row) for row in result["codes"]]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default="runs/bench/index")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--codes", help="comma-separated names from CODES (default: all)")


def command(args: argparse.Namespace) -> int:
    codes = args.codes.split(",") if args.codes else None
    result = run(args.index, args.queries, args.depth, codes)
    write_report(Path(args.out), "rerank_codes", result, table(result), MEDIANS)
    return 0
