"""Resumable builds: a build that fails or is killed keeps the batches it encoded,
and ``resume=True`` encodes only the rest and makes the index an uninterrupted
build makes (file for file, hit for hit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sie_index.corpus import Document
from sie_index.encoders.precomputed import PrecomputedEncoder
from sie_index.errors import InvalidInput, NotAnIndex, StorageError
from sie_index.index import Index
from sie_index.updates import IndexWriter
from sie_index.writer import build_index
from storage.build_journal import JOURNAL_NAME, BuildJournal, read_journal, write_journal
from storage.codec import vector_file
from storage.segment import SCRATCH_NAME, segment_numbers
from storage.verify import verify_index
from tests.conftest import synthetic_corpus, synthetic_queries

N_DOCS = 300
BATCH = 32
ROOT = Path(__file__).resolve().parent.parent


class CountingEncoder(PrecomputedEncoder):
    """Precomputed vectors, counting the documents it was asked to encode."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        super().__init__(vectors, model="resume-test")
        self.encoded: list[str] = []

    def encode_documents(self, ids: list[str]) -> list[np.ndarray]:  # type: ignore[override]
        self.encoded.extend(ids)
        return super().encode_documents(ids)


def corpus() -> tuple[list[Document], dict[str, np.ndarray]]:
    ids, vectors = synthetic_corpus(N_DOCS, 32, seed=3)
    docs = [Document(id=i, text=f"text of {i}", metadata={"n": n}) for n, i in enumerate(ids)]
    return docs, dict(zip(ids, vectors, strict=True))


def failing(docs: list[Document], after: int) -> Iterator[Document]:
    """A user's document stream that breaks after ``after`` documents."""
    for n, d in enumerate(docs):
        if n == after:
            raise RuntimeError("the corpus source went away")
        yield d


SETTINGS: list[dict[str, Any]] = [
    {"index_kind": "flat", "codec": "auto"},  # float16: the scratch is renamed, not transcoded
    {"index_kind": "ivf-flat", "codec": "sq8", "index_options": {"nlist": 8}},  # trained twice
]


def build(path: Path, docs: Any, vectors: dict[str, np.ndarray], **kw: Any) -> CountingEncoder:
    encoder = CountingEncoder(vectors)
    build_index(path, docs, encoder, batch_size=BATCH, progress=False, **kw)
    return encoder


def assert_same_index(a: Path, b: Path) -> None:
    """Two index folders hold the same data files and answer alike."""
    seg_a, seg_b = (p / f"seg-{segment_numbers(p)[-1]:06d}" for p in (a, b))
    names = sorted(n for n in os.listdir(seg_a) if n != "docs.sqlite")
    assert names == sorted(n for n in os.listdir(seg_b) if n != "docs.sqlite")
    assert SCRATCH_NAME not in names
    for name in names:
        assert (seg_a / name).read_bytes() == (seg_b / name).read_bytes(), name
    ia, ib = Index.open(a), Index.open(b)
    try:
        assert ia.info()["documents"] == ib.info()["documents"] == N_DOCS
        assert ia.external_ids() == ib.external_ids()
        _, vectors = synthetic_corpus(N_DOCS, 32, seed=3)
        for q in synthetic_queries(vectors, 5):
            ha = ia.search(q, k=10, text=True)
            hb = ib.search(q, k=10, text=True)
            assert [(h.external_id, h.score, h.text, h.metadata) for h in ha] == [
                (h.external_id, h.score, h.text, h.metadata) for h in hb
            ]
    finally:
        ia.close()
        ib.close()


@pytest.mark.parametrize("settings", SETTINGS, ids=["f16-flat", "sq8-ivf"])
def test_a_failed_build_resumes_encoding_only_the_rest(
    tmp_path: Path, settings: dict[str, Any]
) -> None:
    docs, vectors = corpus()
    build(tmp_path / "ref", docs, vectors, **settings)
    path = tmp_path / "idx"
    with pytest.raises(RuntimeError, match="went away"):
        build(path, failing(docs, 130), vectors, **settings)
    assert read_journal(path) is not None
    # the folder says what it is, and a plain build does not silently start over
    with pytest.raises(NotAnIndex, match=r"interrupted build.*resume=True.*overwrite=True"):
        Index.open(path)
    with pytest.raises(StorageError, match=r"interrupted build.*resume=True.*overwrite=True"):
        build(path, docs, vectors, **settings)
    encoder = build(path, docs, vectors, resume=True, **settings)
    kept = (130 // BATCH) * BATCH  # the batches stored before the failure
    assert encoder.encoded == [d.id for d in docs[kept:]]
    assert not (path / JOURNAL_NAME).exists()
    assert_same_index(tmp_path / "ref", path)


def test_a_resume_re_encodes_from_a_damaged_batch_on(tmp_path: Path) -> None:
    docs, vectors = corpus()
    settings = SETTINGS[1]
    build(tmp_path / "ref", docs, vectors, **settings)
    path = tmp_path / "idx"
    with pytest.raises(RuntimeError):
        build(path, failing(docs, 200), vectors, **settings)
    journal = read_journal(path)
    assert journal is not None
    scratch = path / journal.segment / SCRATCH_NAME
    # a flipped byte in the third batch's rows: that batch and the ones after go again
    ids, _ = synthetic_corpus(N_DOCS, 32, seed=3)
    offset = sum(len(vectors[i]) for i in ids[: 2 * BATCH]) * 32 * 2 + 5
    data = bytearray(scratch.read_bytes())
    data[offset] ^= 0x40
    scratch.write_bytes(bytes(data))
    encoder = build(path, docs, vectors, resume=True, **settings)
    assert encoder.encoded == [d.id for d in docs[2 * BATCH :]]
    assert_same_index(tmp_path / "ref", path)


def test_a_resume_refuses_another_corpus_or_other_settings(tmp_path: Path) -> None:
    docs, vectors = corpus()
    path = tmp_path / "idx"
    with pytest.raises(RuntimeError):
        build(path, failing(docs, 100), vectors, **SETTINGS[0])
    changed = [Document(id=d.id, text=d.text + "!", metadata=d.metadata) for d in docs]
    with pytest.raises(InvalidInput, match="corpus is not the one"):
        build(path, changed, vectors, resume=True, **SETTINGS[0])
    with pytest.raises(InvalidInput, match=r"other settings \(codec\)"):
        build(path, docs, vectors, resume=True, **SETTINGS[1])
    with pytest.raises(InvalidInput, match="shorter"):
        build(path, docs[:40], vectors, resume=True, **SETTINGS[0])
    # refused resumes changed nothing: the right one still resumes
    encoder = build(path, docs, vectors, resume=True, **SETTINGS[0])
    assert len(encoder.encoded) == N_DOCS - 96
    # and resume with nothing to resume is a build (here: the index exists, so no)
    with pytest.raises(StorageError, match=r"already holds an index.*overwrite=True"):
        build(path, docs, vectors, resume=True, **SETTINGS[0])


def test_a_build_interrupted_while_indexing_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (a real SIGINT) as the token index is filled, after the codec was
    trained and the vectors transcoded: a resume undoes that and indexes again."""
    docs, vectors = corpus()
    settings = SETTINGS[1]
    build(tmp_path / "ref", docs, vectors, **settings)
    path = tmp_path / "idx"
    calls: list[str] = []

    def interrupt(bar: Any, text: str, started: float) -> None:
        calls.append(text)
        if text.startswith("adding"):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("sie_index.writer._phase", interrupt)
    # Python's own Ctrl-C handler, even where this runs with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            build(path, docs, vectors, **settings)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    journal = read_journal(path)
    assert journal is not None  # the half-done step's files are there for the resume to undo
    assert (path / journal.segment / vector_file("sq8")).exists()
    assert (path / journal.segment / SCRATCH_NAME).exists()
    assert any(c.startswith("training the sq8 codec") for c in calls)
    encoder = build(path, docs, vectors, resume=True, **settings)
    assert encoder.encoded == []  # every batch was kept
    assert_same_index(tmp_path / "ref", path)


def test_overwrite_throws_an_interrupted_build_away(tmp_path: Path) -> None:
    docs, vectors = corpus()
    path = tmp_path / "idx"
    with pytest.raises(RuntimeError):
        build(path, failing(docs, 100), vectors, **SETTINGS[0])
    journal = read_journal(path)
    assert journal is not None
    encoder = build(path, docs, vectors, overwrite=True, **SETTINGS[0])
    assert len(encoder.encoded) == N_DOCS
    # the interrupted build's segment went before the new one was made
    assert segment_numbers(path) == [1] and read_journal(path) is None
    build(tmp_path / "ref", docs, vectors, **SETTINGS[0])
    assert_same_index(tmp_path / "ref", path)


@pytest.mark.slow
def test_builds_killed_at_random_instants_resume_to_the_same_index(tmp_path: Path) -> None:
    """kill -9 of a CLI build of real text with the default encoder, at random
    instants, then ``build --resume`` until one finishes: the index equals an
    uninterrupted build's."""
    import gzip

    corpus_file = tmp_path / "corpus.jsonl"
    source = ROOT / "sie_index" / "data" / "debian-pkgs" / "corpus.jsonl.gz"
    with gzip.open(source, "rt") as src, corpus_file.open("w") as out:
        for n, line in enumerate(src):
            if n == 600:
                break
            out.write(line)
    common = ["--batch-size", "32", "--index-kind", "ivf-flat", "--codec", "sq8"]
    cli = [sys.executable, "-m", "sie_index.cli", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = [*cli, "build", str(corpus_file), str(tmp_path / "ref"), *common]
    subprocess.run(ref, check=True, env=env, capture_output=True)
    rng = np.random.default_rng(7)
    path = tmp_path / "idx"
    args = [*cli, "build", str(corpus_file), str(path), *common, "--resume"]
    kills = 0
    for _ in range(4):  # killed at a random instant (model load, encoding or indexing) ...
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(float(rng.uniform(3.0, 12.0)))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        _, err = child.communicate(timeout=300)
        assert child.returncode in (0, -signal.SIGKILL), err.decode()
        if child.returncode == 0:
            break
    else:  # ... then left to finish
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert "documents kept from the interrupted build" in done.stdout
    assert kills >= 1
    assert_same_text_index(tmp_path / "ref", path)


def assert_same_text_index(a: Path, b: Path) -> None:
    seg_a, seg_b = (p / f"seg-{segment_numbers(p)[-1]:06d}" for p in (a, b))
    names = sorted(n for n in os.listdir(seg_a) if n != "docs.sqlite")
    assert names == sorted(n for n in os.listdir(seg_b) if n != "docs.sqlite")
    for name in names:
        assert (seg_a / name).read_bytes() == (seg_b / name).read_bytes(), name
    ia, ib = Index.open(a), Index.open(b)
    try:
        assert ia.external_ids() == ib.external_ids()
        for q in ["python library for json", "video player", "kernel module"]:
            assert [(h.external_id, h.score) for h in ia.search(q, k=10)] == [
                (h.external_id, h.score) for h in ib.search(q, k=10)
            ]
    finally:
        ia.close()
        ib.close()


def test_a_large_add_commits_in_runs_and_resumes_skipping_what_it_committed(
    tmp_path: Path,
) -> None:
    docs, vectors = corpus()
    base, rest = docs[:100], docs[100:]
    for name in ("ref", "idx"):
        build(tmp_path / name, base, vectors, **SETTINGS[1])
    with IndexWriter(tmp_path / "ref", encoder=CountingEncoder(vectors)) as w:
        w.add(rest, batch_size=BATCH)
    index = Index.open(tmp_path / "idx")
    writer = IndexWriter(tmp_path / "idx", encoder=CountingEncoder(vectors))
    with writer as w, pytest.raises(RuntimeError, match="went away"):
        w.add(failing(rest, 150), batch_size=BATCH, commit_every=64)
    index.refresh()
    assert len(index) == 100 + 128  # two runs of two batches committed, the third did not
    encoder = CountingEncoder(vectors)
    with IndexWriter(tmp_path / "idx", encoder=encoder) as w:
        report = w.add(rest, batch_size=BATCH, commit_every=64, skip_existing=True)
    assert report.skipped == 128 and report.change.added == len(rest) - 128
    assert encoder.encoded == [d.id for d in rest[128:]]
    assert report.commits == 2  # 72 documents: a run of 64 (two batches) and one of 8
    index.refresh()
    with Index.open(tmp_path / "ref") as ref:
        assert sorted(index.external_ids()) == sorted(ref.external_ids())
        # every list: the two grew apart (their quantizers are trained on other
        # tokens), so only a search of all 8 lists compares what they hold
        for q in synthetic_queries(list(vectors.values()), 5):
            assert [(h.external_id, h.score) for h in index.search(q, k=10, nprobe=8)] == [
                (h.external_id, h.score) for h in ref.search(q, k=10, nprobe=8)
            ]
    index.close()


def test_a_build_refused_at_its_end_resumes_with_another_token_index(tmp_path: Path) -> None:
    """The token index's kind only shapes the finishing step: ivf-pq refuses a corpus
    this small after every batch is stored, and the resume makes it flat, encoding
    nothing again."""
    docs, vectors = corpus()
    path = tmp_path / "idx"
    with pytest.raises(InvalidInput, match="ivf-pq needs at least"):
        build(path, docs, vectors, index_kind="ivf-pq")
    encoder = build(path, docs, vectors, index_kind="flat", resume=True)
    assert encoder.encoded == []
    build(tmp_path / "ref", docs, vectors, index_kind="flat")
    assert_same_index(tmp_path / "ref", path)


def test_what_a_build_killed_after_its_commit_left_is_cleared(tmp_path: Path) -> None:
    """Killed between its commit and its clean-up: the journal (naming the committed
    generation) and the scratch it kept are debris that verify --repair, or the next
    writer, removes; the index is whole."""
    docs, vectors = corpus()
    path = tmp_path / "idx"
    build(path, docs, vectors, **SETTINGS[1])
    with Index.open(path) as index:
        generation = index.info()["generation"]
    segment = f"seg-{segment_numbers(path)[-1]:06d}"
    write_journal(path, BuildJournal(generation=generation, segment=segment, request={}))
    (path / segment / SCRATCH_NAME).write_bytes(b"\0" * 64)
    report = verify_index(path, repair=True)
    assert report.ok and sorted(report.removed) == sorted([JOURNAL_NAME, SCRATCH_NAME])
    assert not (path / JOURNAL_NAME).exists() and not (path / segment / SCRATCH_NAME).exists()
    assert verify_index(path).ok
    # an interrupted build's journal (a generation not committed) is never debris
    with pytest.raises(RuntimeError):
        build(path, failing(docs, 100), vectors, overwrite=True, **SETTINGS[1])
    assert read_journal(path) is not None
    assert verify_index(path, repair=True).removed == []
    assert read_journal(path) is not None
