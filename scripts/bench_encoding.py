"""Encoding speed: document tokens per second, per encoder, on the shipped corpus.

    python scripts/bench.py encoding                    # the first 2,000 debian-pkgs documents
    python scripts/bench.py encoding --docs 500         # fewer

Measures, each after a warm-up batch:
1. the default encoder (all-MiniLM-L6-v2 token states), bf16 autocast and fp32, and
   bf16 with its linear layers left plain (not packed for oneDNN,
   ``sie_index/encoders/packed_linear.py``); one query at a time (as a search
   encodes it), in interleaved blocks of 25 dev queries: the default (packed layers,
   the BERT replay of ``sie_index/encoders/bert_replay.py``), the same layers through
   ``model(...)``, and plain layers through ``model(...)``;
2. a local ColBERT checkpoint: BERT-base-shaped (12 layers, 768 hidden, 128 dims,
   doc_maxlen 180, as colbert-ir/colbertv2.0) with random weights, built on the fly
   in the Stanford layout (the PyLate layout runs the same forward pass);
3. a loopback SIE server (tests/sie_server.py, backed by the default bf16 encoder):
   an index build through it against the server's own encoding time, the HTTP +
   msgpack overhead of one request of 32 documents at a time, and the requests in
   flight during the build.
Writes encoding.json and encoding.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_report import write_report

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # for tests/sie_server.py
    sys.path.insert(0, str(ROOT))

MEDIANS = "one run of each encoder, after a warm-up batch"


def _texts(n: int) -> list[str]:
    from sie_index.corpus import packaged_dataset, read_documents

    corpus = packaged_dataset("debian-pkgs") / "corpus.jsonl.gz"
    return [d.text for d in read_documents(corpus, on_error="skip", limit=n, bad_lines=[])]


def _rate(encoder: Any, texts: list[str], batch: int = 256) -> dict[str, float]:
    """Encode as a build does (``batch`` texts a call) and count the rows returned."""
    encoder.encode_documents(texts[:64])  # warm-up: first-call allocations and kernels
    t0 = time.perf_counter()
    tokens = 0
    for start in range(0, len(texts), batch):
        tokens += sum(len(v) for v in encoder.encode_documents(texts[start : start + batch]))
    seconds = time.perf_counter() - t0
    return {
        "docs": len(texts),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


def _plain_bf16() -> Any:
    """The default bf16 encoder with its linear layers left as loaded (not packed)."""
    from unittest import mock

    from sie_index import TokenStatesEncoder
    from sie_index.encoders import packed_linear

    with mock.patch.object(packed_linear, "pack_linear_layers", lambda model: 0):
        return TokenStatesEncoder(bf16=True)


def _queries(default: Any, plain: Any, n: int) -> dict[str, Any]:
    """One dev query at a time through each way of encoding it, blocks of 25
    interleaved (the order turns every block): p50 ms each, and whether the vectors
    are the same. ``default`` replays its model; the other two run ``model(...)``."""
    import numpy as np

    from sie_index import TokenStatesEncoder
    from sie_index.corpus import BeirDataset

    queries = list(BeirDataset.load("debian-pkgs").queries.values())[:n]
    model_call = TokenStatesEncoder(bf16=True)
    model_call.replay = plain.replay = None
    encoders = {"replayed": default, "packed": model_call, "plain": plain}
    seen: dict[str, list[float]] = {name: [] for name in encoders}
    for name in encoders:
        encoders[name].encode_queries(queries[:10])  # warm-up
    for b in range(0, len(queries), 25):
        names = list(encoders) if (b // 25) % 2 == 0 else list(encoders)[::-1]
        for name in names:
            for text in queries[b : b + 25]:
                t0 = time.perf_counter()
                encoders[name].encode_queries([text])
                seen[name].append(time.perf_counter() - t0)
    vectors = {
        name: [enc.encode_queries([q])[0] for q in queries] for name, enc in encoders.items()
    }
    same = all(
        np.array_equal(a, b)
        for other in ("packed", "plain")
        for a, b in zip(vectors["replayed"], vectors[other], strict=True)
    )
    return {
        "queries": len(queries),
        "packed_layers": default.packed_layers,
        "replayed": default.replay is not None,
        "p50_ms": {name: 1000 * float(np.median(t)) for name, t in seen.items()},
        "same_vectors": same,
    }


def _colbert_checkpoint(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sie_index.encoders.token_states import default_model_dir

    tok = AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True)
    config = BertConfig(vocab_size=len(tok), architectures=["HF_ColBERT"])  # BERT-base shape
    torch.manual_seed(0)
    state = BertModel(config, add_pooling_layer=False).state_dict()
    weights = {f"bert.{k}": v.contiguous() for k, v in state.items()}
    weights["linear.weight"] = torch.randn(128, config.hidden_size) * 0.05
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    config.save_pretrained(str(folder))
    save_file(weights, str(folder / "model.safetensors"))
    meta = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": 32,
        "doc_maxlen": 180,
        "attend_to_mask_tokens": False,
    }
    (folder / "artifact.metadata").write_text(json.dumps(meta))
    return folder


def _local_build(texts: list[str]) -> dict[str, float]:
    """A local build (encode + store, pipelined) with the default bf16 encoder."""
    from sie_index import Document, Index, TokenStatesEncoder

    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(texts)]
    encoder = TokenStatesEncoder(bf16=True)
    encoder.encode_documents(texts[:64])  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = Index.build(
            Path(tmp) / "idx", docs, encoder=encoder, index_kind="flat", progress=False
        )
        wall = time.perf_counter() - t0
        report = index.build_report
        assert report is not None
        index.close()
    seconds = wall - report.index_seconds
    return {
        "docs": report.documents,
        "tokens": report.tokens,
        "seconds": seconds,
        "tokens_per_s": report.tokens / seconds,
    }


def _sie(texts: list[str], local_bf16: float, in_flight: int) -> dict[str, Any]:
    from sie_index import Document, Index, SieEncoder, TokenStatesEncoder
    from tests.sie_server import LoopbackSie

    model = "sentence-transformers/all-MiniLM-L6-v2"
    backing = TokenStatesEncoder()
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(texts)]
    out: dict[str, Any] = {"max_in_flight": in_flight}
    with LoopbackSie(backing, model=model) as server, tempfile.TemporaryDirectory() as tmp:
        # 1. one request of 32 documents at a time: what HTTP + msgpack add
        seq = SieEncoder(server.url, model, dim=384, batch_size=32, max_in_flight=1)
        seq.encode_documents(texts[:64])  # warm-up
        server.stats.encode_seconds = 0.0
        t0 = time.perf_counter()
        tokens = sum(len(v) for v in seq.encode_documents(texts))
        wall = time.perf_counter() - t0
        enc_s = server.stats.encode_seconds
        out["sequential_batch32"] = {
            "tokens": tokens,
            "client_seconds": wall,
            "server_encode_seconds": enc_s,
            "overhead_pct": 100 * (wall - enc_s) / enc_s,
            "tokens_per_s": tokens / wall,
        }
        # 2. a build through the server: pipelined, requests in flight
        enc = SieEncoder(server.url, model, dim=384, batch_size=32, max_in_flight=in_flight)
        server.stats.encode_seconds = 0.0
        server.stats.max_in_flight = 0
        t0 = time.perf_counter()
        index = Index.build(Path(tmp) / "idx", docs, encoder=enc, index_kind="flat", progress=False)
        wall = time.perf_counter() - t0
        report = index.build_report
        assert report is not None
        build_s = wall - report.index_seconds  # encode + store, the part the pipeline overlaps
        enc_s = server.stats.encode_seconds
        out["build"] = {
            "documents": report.documents,
            "tokens": report.tokens,
            "client_build_seconds": build_s,
            "server_encode_seconds": enc_s,
            "ratio_to_server_encode": build_s / enc_s,
            "ratio_to_local_encoder_alone": build_s / (report.tokens / local_bf16),
            "tokens_per_s": report.tokens / build_s,
            "server_max_in_flight": server.stats.max_in_flight,
            "client_max_in_flight": enc.stats.max_in_flight,
            "requests": enc.stats.requests,
        }
        index.close()
        enc.close()
    return out


def run(
    n_docs: int = 2000, colbert_docs: int = 200, in_flight: int = 4, queries: int = 300
) -> dict[str, Any]:
    from sie_index import ColbertEncoder, TokenStatesEncoder

    texts = _texts(n_docs)
    result: dict[str, Any] = {"corpus": f"debian-pkgs, first {len(texts)} documents"}
    packed, plain = TokenStatesEncoder(bf16=True), _plain_bf16()
    result["default_bf16"] = _rate(packed, texts)
    result["default_bf16_plain"] = _rate(plain, texts)
    result["query_encoding"] = _queries(packed, plain, queries)
    result["default_fp32"] = _rate(TokenStatesEncoder(bf16=False), texts)
    result["default_bf16_build"] = _local_build(texts)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _colbert_checkpoint(Path(tmp) / "colbert-base")
        for bf16 in (False, True):
            key = f"colbert_base_{'bf16' if bf16 else 'fp32'}"
            result[key] = _rate(ColbertEncoder(folder, bf16=bf16), texts[:colbert_docs])
    result["sie_loopback"] = _sie(texts, result["default_bf16"]["tokens_per_s"], in_flight)
    return result


def table(r: dict[str, Any]) -> str:
    rows = [
        ("default encoder, bf16", r["default_bf16"]),
        ("default encoder, bf16, linear layers not packed", r["default_bf16_plain"]),
        ("default encoder, fp32", r["default_fp32"]),
        ("local build, default bf16 (encode + store)", r["default_bf16_build"]),
        ("ColBERT BERT-base-shaped checkpoint, fp32", r["colbert_base_fp32"]),
        ("ColBERT BERT-base-shaped checkpoint, bf16", r["colbert_base_bf16"]),
    ]
    lines = [
        f"Encoding speed ({r['corpus']}), document tokens per second",
        "",
        "| encoder | docs | tokens | seconds | tokens/s |",
        "|---|---|---|---|---|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['docs']} | {m['tokens']} | {m['seconds']:.1f} | "
            f"{m['tokens_per_s']:,.0f} |"
        )
    q = r["query_encoding"]
    lines += [
        "",
        f"One query at a time ({q['queries']} dev queries, blocks of 25 interleaved): "
        f"p50 {q['p50_ms']['replayed']:.2f} ms replayed "
        f"({'the replay' if q['replayed'] else 'NO replay: model(...)'}, "
        f"{q['packed_layers']} linear layers packed), "
        f"{q['p50_ms']['packed']:.2f} ms through model(...) with the layers packed, "
        f"{q['p50_ms']['plain']:.2f} ms through model(...) with plain layers; "
        f"the same vectors: {'yes' if q['same_vectors'] else 'NO'}.",
    ]
    s = r["sie_loopback"]
    seq, b = s["sequential_batch32"], s["build"]
    lines += [
        "",
        "Loopback SIE server (default encoder, bf16, behind HTTP + msgpack):",
        f"- one request of 32 documents at a time: {seq['tokens_per_s']:,.0f} tokens/s, "
        f"HTTP + msgpack overhead {seq['overhead_pct']:.1f}% of the server's encoding time",
        f"- build through SIE (encode + store, {b['documents']} docs): "
        f"{b['client_build_seconds']:.1f}s = {b['ratio_to_server_encode']:.3f}x the server's "
        f"own encoding time ({b['server_encode_seconds']:.1f}s), "
        f"{b['ratio_to_local_encoder_alone']:.3f}x the local encoder alone; "
        f"{b['tokens_per_s']:,.0f} tokens/s",
        f"- requests in flight: up to {b['client_max_in_flight']} from the client "
        f"(max_in_flight={s['max_in_flight']}), {b['server_max_in_flight']} seen by the server",
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--colbert-docs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--queries", type=int, default=300, help="dev queries, one at a time")


def command(args: argparse.Namespace) -> int:
    result = run(args.docs, args.colbert_docs, args.in_flight, args.queries)
    write_report(Path(args.out), "encoding", result, table(result), MEDIANS)
    return 0
