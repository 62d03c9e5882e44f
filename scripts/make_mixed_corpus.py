"""Make the mixed corpus for scale runs: debian-pkgs plus pypi-summaries distractors.

    python scripts/make_mixed_corpus.py runs/data/mixed                   # all 670,111
    python scripts/make_mixed_corpus.py runs/data/mixed-20k --distractors 20000

Writes a BEIR folder: ``corpus.jsonl.gz`` (every debian-pkgs document first, in
its order, then the first ``--distractors`` pypi-summaries documents, so a build
of the first 60,631 lines is the debian-pkgs index a later add of the rest grows),
and debian-pkgs' own ``queries.jsonl`` and ``qrels/`` unchanged: the judgments
still hold, since a distractor is never a query's answer; quality on the mixed
corpus is measured against exhaustive MaxSim over the same mixed corpus.
The distractors come from ``../shared/data/pypi-summaries`` (``--distractor-folder``);
the demo and the tests never need them. Ids cannot collide (``pypi:`` prefix):
a collision, or a line that is not a document, stops the script naming it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DISTRACTORS = ROOT.parent / "shared" / "data" / "pypi-summaries"


def make(target: Path, distractor_folder: Path, limit: int | None) -> dict[str, int]:
    """Write the mixed BEIR folder at ``target``; returns its counts."""
    from sie_index.corpus import packaged_dataset

    base = packaged_dataset("debian-pkgs")
    sources = [(base / "corpus.jsonl.gz", None), (distractor_folder / "corpus.jsonl.gz", limit)]
    target.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    counts = {"debian-pkgs": 0, "distractors": 0}
    tmp = target / "corpus.jsonl.gz.tmp"
    try:
        _write(tmp, sources, seen, counts)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed run leaves nothing half-written
        raise
    tmp.replace(target / "corpus.jsonl.gz")
    shutil.copyfile(base / "queries.jsonl", target / "queries.jsonl")
    shutil.copytree(base / "qrels", target / "qrels", dirs_exist_ok=True)
    return counts


def _write(
    tmp: Path, sources: list[tuple[Path, int | None]], seen: set[str], counts: dict[str, int]
) -> None:
    with gzip.open(tmp, "wb", compresslevel=6) as out:
        for n_source, (path, cap) in enumerate(sources):
            kept = 0
            with gzip.open(path, "rb") as src:
                for line_no, raw in enumerate(src, start=1):
                    if cap is not None and kept >= cap:
                        break
                    try:
                        doc = json.loads(raw)
                        doc_id = doc["_id"]
                    except (ValueError, KeyError, TypeError) as exc:
                        raise SystemExit(f"{path}:{line_no}: not a document: {exc}") from exc
                    if n_source and doc_id in seen:
                        where = f"{path}:{line_no}"
                        raise SystemExit(f"{where}: id {doc_id!r} is already in the corpus")
                    seen.add(doc_id)
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                    kept += 1
            counts["distractors" if n_source else "debian-pkgs"] = kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("target", help="BEIR folder to write")
    parser.add_argument(
        "--distractors",
        type=int,
        default=None,
        help="how many pypi-summaries documents to mix in (default: all)",
    )
    parser.add_argument(
        "--distractor-folder",
        default=str(DEFAULT_DISTRACTORS),
        help="the pypi-summaries BEIR folder (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    folder = Path(args.distractor_folder)
    if not (folder / "corpus.jsonl.gz").is_file():
        print(f"no {folder / 'corpus.jsonl.gz'}: pass --distractor-folder", file=sys.stderr)
        return 2
    counts = make(Path(args.target), folder, args.distractors)
    total = sum(counts.values())
    print(
        f"wrote {args.target}: {total:,} documents ({counts['debian-pkgs']:,} debian-pkgs, "
        f"{counts['distractors']:,} distractors), debian-pkgs' queries and qrels"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
