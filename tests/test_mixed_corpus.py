"""scripts/make_mixed_corpus.py: debian-pkgs plus distractors, as one BEIR folder."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from sie_index.corpus import BeirDataset, packaged_dataset, read_documents

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import make_mixed_corpus


def distractors(folder: Path, ids: list[str]) -> Path:
    folder.mkdir()
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as out:
        for i in ids:
            out.write(json.dumps({"_id": i, "title": "", "text": f"summary of {i}"}) + "\n")
    return folder


def test_the_mixed_corpus_is_debian_pkgs_then_the_distractors(tmp_path: Path) -> None:
    folder = distractors(tmp_path / "pypi", [f"pypi:p{i}" for i in range(5)])
    assert (
        make_mixed_corpus.main(
            [str(tmp_path / "mixed"), "--distractor-folder", str(folder), "--distractors", "3"]
        )
        == 0
    )
    mixed = BeirDataset.load(tmp_path / "mixed")
    base = BeirDataset.load(packaged_dataset("debian-pkgs"))
    assert mixed.qrels == base.qrels and mixed.queries == base.queries
    ids = [d.id for d in read_documents(tmp_path / "mixed", on_error="skip")]
    base_ids = [d.id for d in read_documents(packaged_dataset("debian-pkgs"), on_error="skip")]
    assert ids == [*base_ids, "pypi:p0", "pypi:p1", "pypi:p2"]


def test_a_colliding_id_stops_it_naming_the_line(tmp_path: Path) -> None:
    folder = distractors(tmp_path / "pypi", ["pypi:a", "vim"])  # vim is a debian-pkgs id
    with pytest.raises(SystemExit, match=r"corpus.jsonl.gz:2: id 'vim' is already"):
        make_mixed_corpus.main([str(tmp_path / "mixed"), "--distractor-folder", str(folder)])
    assert not (tmp_path / "mixed" / "corpus.jsonl.gz").exists()
