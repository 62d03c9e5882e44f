"""Growth since training (issue 20): recorded at training, reported by info and verify,
warned about once by the add that passes the threshold, reset by a retrain."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sie_index import Index
from sie_index.cli import main
from sie_index.errors import CorruptIndex, InvalidInput
from storage.commit import commit_generation, next_number
from storage.growth import FAR_SAMPLE_MAX, GROWTH_WARN_FACTOR, TRAINED_KEY
from storage.store_writer import StoreWriter
from storage.verify import verify_index
from tests.conftest import synthetic_corpus
from tests.storage_helpers import gen_dir, rewrite_manifest

DIM = 32
IDS, VECTORS = synthetic_corpus(200, DIM, seed=0)
# another distribution: other topic centres, so its tokens sit far from the trained ones
NEW_IDS, NEW_VECTORS = synthetic_corpus(700, DIM, seed=11)
NEW_IDS = [f"new-{e}" for e in NEW_IDS]
BASE_TOKENS = sum(len(v) for v in VECTORS)


def _ivf(path: Path) -> Index:
    return Index.from_vectors(path, IDS, VECTORS, index_kind="ivf-flat", index_options={"nlist": 8})


def _grow(index: Index, factor: float, retrain: str = "never") -> list[Any]:
    """Add new-distribution documents, 100 at a time (one writer each), until the index
    holds ``factor`` times its training tokens (or the documents run out); the reports
    of every add."""
    reports, start = [], 0
    while index.info(growth=False)["tokens"] < factor * BASE_TOKENS and start < len(NEW_IDS):
        stop = start + 100
        reports.append(
            index.add_vectors(NEW_IDS[start:stop], NEW_VECTORS[start:stop], retrain=retrain)
        )
        start = stop
    return reports


def _manifest(path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((gen_dir(path) / "manifest.json").read_text())
    return raw


def test_a_build_records_its_training_and_a_fresh_index_has_grown_by_one(tmp_path: Path) -> None:
    with _ivf(tmp_path / "idx") as index:
        growth = index.info()["growth"]
    trained = _manifest(tmp_path / "idx")["token_index"][TRAINED_KEY]
    assert trained["tokens"] == BASE_TOKENS
    assert -1.0 <= trained["far_similarity"] <= 1.0
    assert growth["tokens_at_training"] == BASE_TOKENS and growth["factor"] == 1.0
    assert growth["verdict"].startswith("ok")
    assert growth["lists"] == 8 and growth["list_largest_over_mean"] >= 1.0
    assert growth["far_sample"] == min(BASE_TOKENS, FAR_SAMPLE_MAX)
    # the threshold is the training tokens' 1st percentile: about 1% fall below it
    assert growth["far_token_share"] < 0.05


def test_growth_by_adds_is_reported_warned_once_and_reset_by_a_retrain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "idx"
    with _ivf(path) as index:
        fresh = index.info()["growth"]
        with caplog.at_level(logging.WARNING):
            reports = _grow(index, 3.0)
        grown = index.info()["growth"]
        warned = [r for r in caplog.records if "outgrown" in r.getMessage()]
        # one warning, from the add that crossed the threshold, and only its report says so
        assert len(warned) == 1 and "compact --retrain" in warned[0].getMessage()
        crossed = [r.outgrown for r in reports if r.outgrown is not None]
        assert len(crossed) == 1 and crossed[0] > GROWTH_WARN_FACTOR
        assert grown["tokens_at_training"] == BASE_TOKENS
        assert grown["factor"] >= 3.0 and grown["verdict"].startswith("outgrown")
        assert grown["far_token_share"] > fresh["far_token_share"] + 0.2
        report = verify_index(path)
        assert report.ok and len(report.warnings) == 1 and "outgrown" in report.warnings[0]
        assert report.growth is not None and report.growth["factor"] == grown["factor"]

        # a compaction that keeps the quantizer keeps its record: still outgrown
        index.delete(NEW_IDS[:10])
        index.compact()
        kept = index.info()["growth"]
        assert kept["tokens_at_training"] == BASE_TOKENS and kept["factor"] > 2.9

        index.compact(retrain=True)
        retrained = index.info()["growth"]
    assert retrained["factor"] == 1.0 and retrained["tokens_at_training"] == retrained["tokens"]
    assert retrained["far_token_share"] < 0.05
    assert verify_index(path).warnings == []


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_flat_and_hnsw_report_growth_only(tmp_path: Path, kind: str) -> None:
    with Index.from_vectors(tmp_path / "idx", IDS, VECTORS, index_kind=kind) as index:
        index.add_vectors(NEW_IDS[:100], NEW_VECTORS[:100])
        growth = index.info()["growth"]
    added = sum(len(v) for v in NEW_VECTORS[:100])
    assert growth["factor"] == pytest.approx((BASE_TOKENS + added) / BASE_TOKENS)
    assert growth["lists"] is None and growth["far_token_share"] is None
    assert _manifest(tmp_path / "idx")["token_index"][TRAINED_KEY] == {"tokens": BASE_TOKENS}


def test_an_index_written_before_the_record_opens_and_reports_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "idx"
    _ivf(path).close()
    rewrite_manifest(path, lambda raw: raw["token_index"].pop(TRAINED_KEY))
    with Index.open(path) as index:
        growth = index.info()["growth"]
        assert growth["factor"] is None and growth["tokens_at_training"] is None
        assert growth["verdict"].startswith("unknown") and growth["far_token_share"] is None
        assert growth["lists"] == 8  # the lists are there to measure all the same
        with caplog.at_level(logging.WARNING):
            reports = _grow(index, 3.0)
        assert all(r.outgrown is None for r in reports)
        assert not [r for r in caplog.records if "outgrown" in r.getMessage()]
        index.compact()  # keeps the quantizer, so its growth stays unknown
        assert index.info()["growth"]["factor"] is None
    report = verify_index(path)
    assert report.ok and report.warnings == []
    assert TRAINED_KEY not in _manifest(path)["token_index"]


_BAD_RECORDS = [
    {"tokens": -1, "far_similarity": 0.1},
    {"tokens": 10, "far_similarity": float("nan")},
    {"tokens": 10, "far_similarity": float("inf")},
    {"tokens": 10, "far_similarity": "0.1"},
    {"tokens": 10.0, "far_similarity": 0.1},
    {"tokens": True, "far_similarity": 0.1},
    {"tokens": 10},
    {"tokens": 10, "far_similarity": 0.1, "extra": 1},
    [10, 0.1],
]


@pytest.mark.parametrize("bad", _BAD_RECORDS)
def test_the_commit_door_refuses_a_bad_record_and_keeps_the_old_index(
    tmp_path: Path, bad: Any
) -> None:
    path = tmp_path / "idx"
    _ivf(path).close()
    before = _manifest(path)
    with StoreWriter(path) as writer:
        m = writer.manifest
        manifest = dataclasses.replace(
            m,
            generation=next_number(path, m.generation),
            token_index={**m.token_index, TRAINED_KEY: bad},
        )
        with pytest.raises(InvalidInput, match="refusing to commit"):
            commit_generation(path, manifest, np.zeros(0, np.int64))
    assert _manifest(path) == before
    with Index.open(path) as index:
        assert index.info()["growth"]["factor"] == 1.0
    assert verify_index(path).ok


_JSON_RECORDS = [b for b in _BAD_RECORDS if "nan" not in str(b) and "inf" not in str(b)]


@pytest.mark.parametrize("bad", _JSON_RECORDS)
def test_the_reader_refuses_a_bad_record(tmp_path: Path, bad: Any) -> None:
    path = tmp_path / "idx"
    _ivf(path).close()
    rewrite_manifest(path, lambda raw: raw["token_index"].update({TRAINED_KEY: bad}))
    with pytest.raises(CorruptIndex, match=TRAINED_KEY):
        Index.open(path)


def test_cli_info_and_verify_show_growth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "idx"
    with _ivf(path) as index:
        _grow(index, 2.5)
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "growth" in out and "tokens_at_training" in out and "far_token_share" in out
    assert main(["info", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["growth"]["factor"] > 2.5
    assert main(["verify", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok:") and lines[1].startswith("warning: outgrown")


def test_the_auto_policy_retrains_at_each_doubling_and_equals_a_fresh_build(
    tmp_path: Path,
) -> None:
    """By default the add that crosses the threshold ends by retraining: its report
    says so, the index's growth starts again from 1, the next crossing comes at
    twice the new size; what it then holds searches as a fresh build of the same
    documents does."""
    path = tmp_path / "idx"
    with _ivf(path) as index:
        reports = _grow(index, 5.0, retrain="auto")
        growth = index.info()["growth"]
        ids = [i for i in IDS + NEW_IDS if i in index.lookup(IDS + NEW_IDS)]
        Q = NEW_VECTORS[0][:4]
        # one depth for both: the defaults rerank more for lists grown past their
        # training (under 2x here, since the retrain), which a fresh build's are not
        deep = {"exact_threshold": 0, "n_rerank": 64}
        got = [(h.external_id, h.score) for h in index.search(Q, k=10, **deep)]
    retrained = [i for i, r in enumerate(reports) if r.retrained]
    # trained on 200 documents, past 2x at 500: retrained there; the 400 added after
    # it stay under twice the 500 (the next retrain would come at about 1,000)
    assert len(retrained) == 1 and len(reports) == 7
    first = reports[retrained[0]]
    assert first.outgrown is not None and first.outgrown > GROWTH_WARN_FACTOR
    assert first.documents == 200 + 100 * (retrained[0] + 1)
    assert all(r.outgrown is None for r in reports[retrained[0] + 1 :])
    assert growth["tokens_at_training"] > BASE_TOKENS
    assert growth["factor"] < GROWTH_WARN_FACTOR
    by_id = dict(zip(IDS + NEW_IDS, VECTORS + NEW_VECTORS, strict=True))
    fresh = Index.from_vectors(
        tmp_path / "fresh",
        ids,
        [by_id[i] for i in ids],
        index_kind="ivf-flat",
        index_options={"nlist": 8},
    )
    want = [(h.external_id, h.score) for h in fresh.search(Q, k=10, **deep)]
    assert got == want


def test_cli_add_past_the_threshold_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = [{"id": f"d{i}", "text": f"package number {i} for testing"} for i in range(40)]
    first, rest, more = (tmp_path / name for name in ("a.jsonl", "b.jsonl", "c.jsonl"))
    for file, part in ((first, docs[:10]), (rest, docs[10:35]), (more, docs[35:])):
        file.write_text("".join(json.dumps(d) + "\n" for d in part), encoding="utf-8")
    idx = tmp_path / "idx"
    assert main(["-q", "build", str(first), str(idx), "--index-kind", "flat"]) == 0
    capsys.readouterr()
    assert main(["-q", "add", str(idx), str(rest)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [
        next(line for line in out.splitlines() if "compact --retrain" in line)
    ]
    assert main(["-q", "add", str(idx), str(more)]) == 0  # past it already: no repeat
    assert "warning:" not in capsys.readouterr().out


def test_a_sharded_index_reports_growth_per_shard(tmp_path: Path) -> None:
    from sie_index import ShardedIndex

    path = tmp_path / "sharded"
    with ShardedIndex.from_vectors(
        path, IDS, VECTORS, shards=2, index_kind="ivf-flat", index_options={"nlist": 4}
    ) as index:
        fresh = index.info()["shards"]
        index.add_vectors(NEW_IDS[:400], NEW_VECTORS[:400])
        grown = index.info()["shards"]
        report = index.verify()
    assert [s["growth"]["factor"] for s in fresh] == [1.0, 1.0]
    # each shard records its own tokens at training (the quantizer is shared)
    assert sum(s["growth"]["tokens_at_training"] for s in fresh) == BASE_TOKENS
    assert all(s["growth"]["factor"] > GROWTH_WARN_FACTOR for s in grown)
    assert report["ok"] and len(report["warnings"]) == 2
    assert report["warnings"][0].startswith("shard 0: outgrown")


@pytest.mark.parametrize(("kind", "codec"), [("ivf-sq8", "sq8"), ("ivf-pq", "pq")])
def test_every_ivf_kind_and_codec_records_and_measures_its_training(
    tmp_path: Path, kind: str, codec: str
) -> None:
    """The far-token threshold is measured on the stored vectors as a reader decodes
    them (pq: the codes the index holds), so a fresh index has about 1% below it."""
    ids, vectors = synthetic_corpus(800, DIM, seed=3)  # ivf-pq trains on 9,984+ tokens
    path = tmp_path / "idx"
    with Index.from_vectors(path, ids, vectors, index_kind=kind, codec=codec) as index:
        growth = index.info()["growth"]
        index.add_vectors(NEW_IDS[:100], NEW_VECTORS[:100])
        grown = index.info()["growth"]
    assert growth["factor"] == 1.0 and growth["far_token_share"] < 0.05
    assert grown["far_token_share"] > growth["far_token_share"]
    trained = _manifest(path)["token_index"][TRAINED_KEY]
    assert trained["tokens"] == sum(len(v) for v in vectors)


def test_a_reshard_keeps_the_growth_of_its_source(tmp_path: Path) -> None:
    """A reshard does not retrain: its shards keep the source's quantizer, so they
    keep its growth (and an unrecorded source's unknown), not a fresh 1.0."""
    from sie_index import ShardedIndex

    source = tmp_path / "idx"
    with _ivf(source) as index:
        _grow(index, 3.0)
        factor = index.info()["growth"]["factor"]
    with ShardedIndex.from_index(source, tmp_path / "sharded", shards=2) as sharded:
        shards = sharded.info()["shards"]
    for shard in shards:
        assert shard["growth"]["factor"] == pytest.approx(factor, rel=0.01)
        assert shard["growth"]["far_token_share"] > 0.2

    rewrite_manifest(source, lambda raw: raw["token_index"].pop(TRAINED_KEY))
    with ShardedIndex.from_index(source, tmp_path / "unknown", shards=2) as sharded:
        assert [s["growth"]["factor"] for s in sharded.info()["shards"]] == [None, None]
