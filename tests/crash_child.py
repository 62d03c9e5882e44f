"""A writer process for the crash tests: ``python -m tests.crash_child INDEX SEED [SEED ...]``.

It rebuilds ``INDEX`` from the synthetic corpus of each seed in turn (overwrite),
printing ``ready`` once its imports are done and ``built SEED`` after each
commit, so the parent can kill it at any instant. With ``--hold S`` it sleeps
S seconds inside each build, holding the write lock, and exits 3 on IndexLocked.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from storage.builder import PendingDoc, StoreBuilder
from storage.errors import IndexLocked

DIM = 16
SPEC = {"kind": "precomputed", "model": "crash-test", "dim": DIM, "options": {}}


def corpus(seed: int, n_docs: int = 400) -> list[PendingDoc]:
    """A corpus whose ids and vectors both name the seed it came from."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        v = rng.standard_normal((int(rng.integers(2, 12)), DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        docs.append(PendingDoc(external_id=f"s{seed}-{i}", text=None, metadata=None, vectors=v))
    return docs


def build(path: Path, seed: int, *, hold: float = 0.0, batch: int = 50) -> None:
    docs = corpus(seed)
    with StoreBuilder(path, DIM, overwrite=True) as builder:
        if hold:
            print("holding", flush=True)
        for start in range(0, len(docs), batch):
            builder.add(docs[start : start + batch])
            if hold:
                time.sleep(hold / (len(docs) / batch))
        builder.finish(encoder_spec=SPEC, index_kind="flat")


def main(argv: list[str]) -> int:
    hold = 0.0
    if argv and argv[0] == "--hold":
        hold, argv = float(argv[1]), argv[2:]
    path, seeds = Path(argv[0]), [int(s) for s in argv[1:]]
    print("ready", flush=True)
    for seed in seeds:
        try:
            build(path, seed, hold=hold)
        except IndexLocked:
            print("locked", flush=True)
            return 3
        print(f"built {seed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
