"""``sie-index demo``: the shipped corpus, indexed and searched."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sie_index.cli.table import _clip, print_table

DEMO_QUERIES = 6


def _build(out: Path, corpus: Path, limit: int | None, quiet: bool) -> Any:
    from sie_index.index import Index

    print(
        f"building an index of debian-pkgs ({limit or 'all'} documents) "
        f"with the default encoder (all-MiniLM-L6-v2 token states) into {out} ..."
    )
    t0 = time.perf_counter()
    # The shipped corpus repeats a few package names (packages with several
    # descriptions); skip mode keeps the first and reports the rest.
    index = Index.build(
        out,
        corpus,
        limit=limit,
        overwrite=True,
        on_error="skip",
        progress=False if quiet else None,
    )
    r = index.build_report
    assert r is not None  # set by Index.build
    print(
        f"built in {time.perf_counter() - t0:.0f}s: {r.documents} documents, {r.tokens} tokens, "
        f"token index {index.info()['token_index']['kind']}"
        + (f"; {len(r.bad_lines)} corpus lines skipped (repeated ids)" if r.bad_lines else "")
    )
    return index


def cmd_demo(args: argparse.Namespace) -> int:
    from sie_index.corpus import BeirDataset, packaged_dataset
    from sie_index.index import Index

    folder = packaged_dataset("debian-pkgs")
    dataset = BeirDataset.load(folder, split="dev")
    out = Path(args.out)
    if out.exists() and not args.rebuild:
        # a second run shows the searches again without minutes of encoding
        index = Index.open(out)
        print(
            f"reusing the index at {out} (built earlier, {len(index)} documents; "
            "delete it or pass --rebuild to rebuild)"
        )
    else:
        index = _build(out, dataset.corpus_path, args.limit or None, args.quiet)
    present = index.lookup(sorted({d for rel in dataset.qrels.values() for d in rel}))
    picked = [
        (qid, text, next(iter(dataset.qrels[qid])))
        for qid, text in dataset.queries.items()
        if any(d in present for d in dataset.qrels[qid])
    ][:DEMO_QUERIES]
    results = index.search_batch([text for _, text, _ in picked], k=3, text=True)
    for (_, text, answer), hits in zip(picked, results, strict=True):
        print(f"\nquery: {text}   (the judged answer: {answer})")
        rows = [
            (
                str(i + 1),
                ("* " if h.external_id == answer else "  ") + h.external_id,
                f"{h.score:.2f}",
                _clip(h.text or "", 64),
            )
            for i, h in enumerate(hits)
        ]
        print_table(rows, ("rank", "package", "score", "description"))
    print(f'\nsearch it yourself: .venv/bin/sie-index search {args.out} "your question"')
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="build an index of the shipped debian-pkgs corpus and search it"
    )
    p.add_argument("--out", default="demo-index", help="index folder")
    p.add_argument("--limit", type=int, default=5000, help="documents to index (0: all 60,631)")
    p.add_argument(
        "--rebuild", action="store_true", help="build the index again even if --out holds one"
    )
    p.set_defaults(func=cmd_demo)
