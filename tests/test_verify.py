"""``sie-index verify``: every check at once, a clean exit status, and a sweep of debris."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sie_index import Index
from sie_index.cli import main
from storage.generations import CURRENT_NAME, LEASE_NAME
from storage.lock import LOCK_NAME
from storage.vectors import TOKENS_NAME
from tests.conftest import synthetic_corpus
from tests.storage_helpers import data_path


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    ids, vectors = synthetic_corpus(50, 8)
    Index.from_vectors(tmp_path / "idx", ids, vectors).close()
    return tmp_path / "idx"


def test_verify_reports_and_repairs_debris(
    index_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    killed = index_path / "gen-000007"  # what a killed build leaves
    killed.mkdir()
    (killed / LEASE_NAME).touch()
    (killed / TOKENS_NAME).write_bytes(b"\0" * 64)
    (index_path / (CURRENT_NAME + ".tmp")).write_text("{}")
    (index_path / "seg-000007").mkdir()  # and the segment it was writing
    assert main(["verify", str(index_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["documents"] == 50
    assert report["debris"] == ["gen-000007", "seg-000007", "CURRENT.tmp"]
    assert main(["verify", str(index_path), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "removed gen-000007" in out and "removed CURRENT.tmp" in out
    assert "removed seg-000007" in out
    assert sorted(p.name for p in index_path.iterdir()) == [
        CURRENT_NAME,
        "gen-000001",
        "seg-000001",
        LOCK_NAME,
    ]


def test_verify_exits_1_on_damage_and_no_command_prints_a_traceback(
    index_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = data_path(index_path, TOKENS_NAME)
    data = bytearray(target.read_bytes())
    data[10] ^= 1
    target.write_bytes(bytes(data))
    assert main(["verify", str(index_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("DAMAGED: CorruptIndex") and TOKENS_NAME in err
    assert main(["info", str(index_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and TOKENS_NAME in err


def test_verify_finds_an_id_live_twice(
    index_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upsert leaves the old row deleted; a generation that forgot that (a bug, or a
    hand-edited index) has the id live twice, which search would return twice."""
    import dataclasses

    import numpy as np

    from storage.commit import commit_generation, next_number
    from storage.store_writer import StoreWriter

    index = Index.open(index_path)
    ids, vectors = synthetic_corpus(50, 8)
    index.add_vectors([ids[3]], [vectors[3]], replace=True)
    index.close()
    with StoreWriter(index_path) as writer:
        m = writer.manifest
        number = next_number(index_path, m.generation)
        commit_generation(
            index_path, dataclasses.replace(m, generation=number), np.zeros(0, np.int64)
        )
    assert main(["verify", str(index_path)]) == 1
    err = capsys.readouterr().err
    assert "live twice" in err and ids[3] in err
