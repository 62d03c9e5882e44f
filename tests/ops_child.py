"""A writer process that changes an index in place, for the crash tests:
``python -m tests.ops_child [--failpoint NAME] [--ops KINDS] INDEX SEED``.

It opens ``INDEX`` (built beforehand by the test) with a :class:`StoreWriter`
and loops forever over random changes drawn from ``SEED``: add, delete, upsert
and (now and then) compact, or only the kinds in ``--ops`` (comma-separated).
Before each change it prints ``BEGIN`` and the change as JSON; after the change
has committed it prints ``ACK``. So the parent, killing it at any instant,
knows what was acknowledged and what was in flight. A document's vectors and
text follow from its id and version (:func:`doc`), so the parent can check
every stored byte. ``--failpoint NAME`` arms that failpoint once the writer is
open (the first commit that passes it kills the process).
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

import numpy as np

from storage.failpoints import ENV
from storage.segment import PendingDoc
from storage.store_writer import StoreWriter

DIM = 16
SPEC = {"kind": "precomputed", "model": "ops-test", "dim": DIM, "options": {}}
KINDS = ("add", "delete", "upsert", "compact")


def vectors(ext: str, version: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{ext}|{version}".encode()))
    v = rng.standard_normal((int(rng.integers(2, 10)), DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def doc(ext: str, version: str) -> PendingDoc:
    return PendingDoc(
        external_id=ext,
        text=f"{ext}|{version}",
        metadata={"version": version},
        vectors=vectors(ext, version),
    )


def draw(rng: np.random.Generator, live: list[str], kinds: tuple[str, ...], n: str) -> dict:
    """The ``n``-th change: what it does, with every id and version spelled out."""
    weights = np.array(
        [{"add": 4, "delete": 3, "upsert": 3, "compact": 1}[k] for k in kinds], float
    )
    kind = str(rng.choice(kinds, p=weights / weights.sum()))
    if kind != "compact" and len(live) < 20:
        kind = "add"
    version = f"v{n}"
    if kind == "add":
        new = [f"n{n}-{i}" for i in range(int(rng.integers(1, 30)))]
        return {"op": "add", "docs": [[ext, version] for ext in new]}
    if kind == "delete":
        picked = rng.choice(len(live), size=int(rng.integers(1, 8)), replace=False)
        return {"op": "delete", "ids": [live[i] for i in picked] + [f"missing-{n}"]}
    if kind == "upsert":
        picked = rng.choice(len(live), size=int(rng.integers(1, 8)), replace=False)
        ids = [live[i] for i in picked] + [f"u{n}-{i}" for i in range(int(rng.integers(0, 4)))]
        return {"op": "upsert", "docs": [[ext, version] for ext in ids]}
    return {"op": "compact"}


def apply(writer: StoreWriter, change: dict) -> None:
    if change["op"] == "add":
        writer.add([[doc(e, v) for e, v in change["docs"]]])
    elif change["op"] == "upsert":
        writer.add([[doc(e, v) for e, v in change["docs"]]], replace=True)
    elif change["op"] == "delete":
        writer.delete(change["ids"])
    else:
        writer.compact()


def main(argv: list[str]) -> int:
    if argv[0] == "--read":
        return read_loop(Path(argv[1]))
    failpoint = None
    kinds = KINDS
    while argv and argv[0].startswith("--"):
        if argv[0] == "--failpoint":
            failpoint, argv = argv[1], argv[2:]
        elif argv[0] == "--ops":
            kinds, argv = tuple(argv[1].split(",")), argv[2:]
    path, seed = Path(argv[0]), int(argv[1])
    rng = np.random.default_rng(seed)
    with StoreWriter(path) as writer:
        if failpoint:
            os.environ[ENV] = failpoint
        print("ready", flush=True)
        n = 0
        while True:
            change = draw(rng, sorted(writer.live), kinds, f"{seed}.{n}")
            print("BEGIN " + json.dumps(change), flush=True)
            apply(writer, change)
            print("ACK", flush=True)
            n += 1


def read_loop(path: Path) -> int:
    """``python -m tests.ops_child --read INDEX``: search until stdin closes, refreshing
    to each new generation; every hit must be a live document whose text, metadata
    and vectors agree. Prints ``searches N refreshes R`` and exits 0, or raises."""
    import threading

    from sie_index import Index, SearchParams

    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    rng = np.random.default_rng(0)
    params = SearchParams(k=5, n_rerank=5, k_token=16, nprobe=4)
    searches = refreshes = 0
    with Index.open(path, verify=False) as index:
        while not done.is_set():
            if searches == 1:
                print("ready", flush=True)  # warm: imports done, one search answered
            refreshes += index.refresh()
            q = rng.standard_normal((4, DIM)).astype(np.float32)
            for hit in index.search(q, params=params, text=True, metadata=True):
                ext, version = str(hit.text).split("|")
                assert ext == hit.external_id and hit.metadata == {"version": version}
            searches += 1
    print(f"searches {searches} refreshes {refreshes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
