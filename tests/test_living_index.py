"""A living index: add, delete, upsert and compact in place, with results that equal
a fresh build of the same live documents, one consistent snapshot per reader, and
a folder that holds the index before or after each change whenever a writer dies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sie_index import Index, IndexLocked, InvalidInput, SearchParams
from sie_index.cli import main as cli_main
from sie_index.filters import compile_filter
from storage.builder import CodecChoice, StoreBuilder
from storage.lock import LOCK_NAME
from storage.merging import MergePolicy
from storage.snapshot import StoreSnapshot
from storage.store_writer import StoreWriter
from storage.verify import verify_index
from tests.ops_child import DIM, SPEC, apply, doc, draw, vectors
from tests.storage_helpers import rest_of_output

ROOT = Path(__file__).resolve().parents[1]
N_BASE = 300
KIND_OPTIONS: dict[str, dict[str, Any]] = {
    "flat": {},
    "ivf-flat": {"nlist": 8},
    "ivf-sq8": {"nlist": 8},
    "ivf-pq": {"nlist": 8, "pq_m": 4},
    "hnsw": {},
    # with a compressed codec (and a projection to 8 dims): KIND+CODEC[+DIM]
    "ivf-pq+pq": {"nlist": 8, "pq_m": 4},
    "hnsw+sq8": {},
    "ivf-flat+sq8+8": {"nlist": 8},
}
# ivf-pq trains 256 centroids per sub-quantizer: its base corpus must be larger
BASE_DOCS = {"ivf-pq": 2000, "ivf-pq+pq": 2000}


def variant(name: str) -> tuple[str, CodecChoice]:
    """The index kind and the codec of a ``KIND_OPTIONS`` key."""
    parts = name.split("+")
    codec = parts[1] if len(parts) > 1 else "f16"
    return parts[0], CodecChoice(codec, int(parts[2]) if len(parts) > 2 else None)


# k=5, n_rerank=5: more than 8 x 5 live documents run the ANN path, not the exact one
PARAMS = SearchParams(k=5, n_rerank=5, k_token=16, nprobe=2, ef_search=32)


def build_base(path: Path, kind: str, n_docs: int | None = None) -> None:
    n = n_docs if n_docs is not None else BASE_DOCS.get(kind, N_BASE)
    docs = [doc(f"b{i}", "v0") for i in range(n)]
    index_kind, codec = variant(kind)
    with StoreBuilder(path, DIM, codec=codec) as builder:
        for lo in range(0, len(docs), 500):
            builder.add(docs[lo : lo + 500])
        builder.finish(encoder_spec=SPEC, index_kind=index_kind, index_options=KIND_OPTIONS[kind])


def live_state(path: Path) -> dict[str, str]:
    """External id -> text of every live document, every stored vector checked
    against the one its id and version give."""
    with StoreSnapshot.open(path) as snap:
        live = np.flatnonzero(~snap.spans.deleted)
        stored = snap.docs.fetch(live.tolist(), text=True, metadata=True)
        out = {}
        for d in live.tolist():
            ext, text = stored[d].external_id, stored[d].text
            assert text is not None and text.split("|")[0] == ext
            assert stored[d].metadata == {"version": text.split("|")[1]}
            got = snap.tokens.spans(snap.spans.token_start[[d]], snap.spans.token_count[[d]])
            want = vectors(ext, text.split("|")[1]).astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(got, want)
            out[ext] = text
        assert len(out) == len(live) == snap.manifest.live_documents
        return out


def model_after(state: dict[str, str], change: dict[str, Any]) -> dict[str, str]:
    state = dict(state)
    if change["op"] in ("add", "upsert"):
        state.update({e: f"{e}|{v}" for e, v in change["docs"]})
    elif change["op"] == "delete":
        for ext in change["ids"]:
            state.pop(ext, None)
    return state


def same_ranking(a: list[Any], b: list[Any], tol: float = 1e-4) -> None:
    """Equal hit lists, where hits tied within ``tol`` may swap (or swap out at the end)."""
    assert len(a) == len(b)
    sa = {h.external_id: h.score for h in a}
    sb = {h.external_id: h.score for h in b}
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=tol)
    for ext in set(sa) ^ set(sb):
        here, other = (sa, b) if ext in sa else (sb, a)
        assert abs(here[ext] - other[-1].score) <= tol, (ext, a, b)
    for ext in set(sa) & set(sb):
        assert abs(sa[ext] - sb[ext]) <= tol


def queries(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q = rng.standard_normal((4, DIM)).astype(np.float32)
        out.append(q / np.linalg.norm(q, axis=1, keepdims=True))
    return out


# -- results equal a fresh build -----------------------------------------------------


def _fresh_build(path: Path, source: Path) -> None:
    """A new index of ``source``'s live documents, with its trained quantizer and codec."""
    with StoreWriter(source) as writer:
        trained = writer.trained_index() if writer.plan.kind != "hnsw" else None
        plan = writer.plan
        codec = writer.codec()
    with StoreSnapshot.open(source) as snap:
        live = np.flatnonzero(~snap.spans.deleted)
        stored = snap.docs.fetch(live.tolist(), text=True, metadata=True)
        docs = [stored[d] for d in live.tolist()]
    with StoreBuilder(path, DIM, codec=None if codec.exact else codec) as builder:
        builder.add([doc(*d.text.split("|")) for d in docs if d.text])
        builder.finish(encoder_spec=SPEC, plan=plan, trained=trained)


# merges after nearly every add, so the property tests run merged segments too
EAGER_MERGES = MergePolicy(factor=2, min_tokens=1, max_segments=2)


def _random_changes(
    path: Path, seeds: list[int], merge_policy: MergePolicy | None = EAGER_MERGES
) -> None:
    with StoreWriter(path, merge_policy=merge_policy) as writer:
        for n, seed in enumerate(seeds):
            rng = np.random.default_rng(seed)
            apply(
                writer,
                draw(rng, sorted(writer.live), ("add", "delete", "upsert", "compact"), f"h{n}"),
            )


def _copy_of_base(tmp: Path, kind: str) -> Path:
    """A copy of the base index of ``kind``, built (and its quantizer trained) once a
    session: training dominated the property tests when every example built its own."""
    base = tmp.parent / f"base-{kind}"
    if not base.exists():
        build_base(tmp / "building", kind)
        (tmp / "building").rename(base)
    path = tmp / "idx"
    shutil.copytree(base, path)
    (path / LOCK_NAME).unlink(missing_ok=True)
    return path


def _check_against_fresh(tmp: Path, kind: str, seeds: list[int], ann_calls: list[int]) -> None:
    fresh = tmp / "fresh"
    path = _copy_of_base(tmp, kind)
    _random_changes(path, seeds)
    _fresh_build(fresh, path)
    qs = queries(6, seed=seeds[0] if seeds else 0)
    # hnsw graphs depend on insertion order: compare it where the ANN is exhaustive
    params = (
        PARAMS if not kind.startswith("hnsw") else PARAMS.with_(k_token=100_000, ef_search=100_000)
    )
    with Index.open(path) as a, Index.open(fresh) as b:
        assert len(a) == len(b) > 8 * PARAMS.n_rerank
        ann_calls.clear()
        got, want = a.search_batch(qs, params=params), b.search_batch(qs, params=params)
        assert len(ann_calls) == 2
        for x, y in zip(got, want, strict=True):
            same_ranking(x, y)
        # the lexicon too: BM25 over the live documents, and hybrid rankings (rrf
        # breaks ties by internal id, which a fresh build renumbers in the same order)
        for text in LEXICAL_QUERIES:
            la, lb = lexical_scores(a, text), lexical_scores(b, text)
            assert la.keys() == lb.keys()
            assert [la[e] for e in lb] == pytest.approx(list(lb.values()), rel=1e-9)
        hybrid = params.with_(hybrid=True, fusion="rrf", lexical_k=7)
        texts = LEXICAL_QUERIES[: len(qs)]
        ann_calls.clear()
        got, want = (
            ix._searcher.hits(ix._searcher.rank(qs[: len(texts)], hybrid, texts=texts))
            for ix in (a, b)
        )
        assert len(ann_calls) == 2
        for x, y in zip(got, want, strict=True):
            same_ranking(x, y, tol=1e-9)


LEXICAL_QUERIES = ["v0 b1 b2 b3", "h0 h1 v0 b7", "b10 b11 b12 b13 h2 h2", "v0", "h3 h4 h5"]


def lexical_scores(ix: Index, text: str) -> dict[str, float]:
    """External id -> BM25 score of every live document holding a term of ``text``."""
    ids, scores = ix._searcher.lexical().scores(text)
    stored = ix._snapshot.docs.fetch(ids.tolist())
    return {stored[d].external_id: s for d, s in zip(ids.tolist(), scores.tolist(), strict=True)}


@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
@given(seeds=st.lists(st.integers(0, 2**31), min_size=1, max_size=6))
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_after_changes_search_equals_a_fresh_build(
    tmp_path_factory: pytest.TempPathFactory, kind: str, seeds: list[int], ann_calls: list[int]
) -> None:
    _check_against_fresh(tmp_path_factory.mktemp(kind), kind, seeds, ann_calls)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
@given(seeds=st.lists(st.integers(0, 2**31), min_size=1, max_size=12))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_after_many_changes_search_equals_a_fresh_build(
    tmp_path_factory: pytest.TempPathFactory, kind: str, seeds: list[int], ann_calls: list[int]
) -> None:
    _check_against_fresh(tmp_path_factory.mktemp(kind), kind, seeds, ann_calls)


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-pq+pq", "ivf-flat+sq8+8", "hnsw"])
@given(seeds=st.lists(st.integers(0, 2**31), min_size=2, max_size=8))
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_merged_segments_keep_every_internal_id_and_result(
    tmp_path_factory: pytest.TempPathFactory, kind: str, seeds: list[int], ann_calls: list[int]
) -> None:
    """The same changes with and without merges: fewer segments, the same internal ids,
    token rows and (ANN path) results. An hnsw merge builds one graph where there were
    several, so there the comparison runs with an exhaustive graph search."""
    tmp = tmp_path_factory.mktemp(kind)
    merged = _copy_of_base(tmp, kind)
    plain = tmp / "plain"
    shutil.copytree(merged, plain)
    _random_changes(merged, seeds, EAGER_MERGES)
    _random_changes(plain, seeds, None)
    params = PARAMS if kind != "hnsw" else PARAMS.with_(k_token=100_000, ef_search=100_000)
    qs = queries(6, seed=seeds[0])
    with Index.open(merged) as a, Index.open(plain) as b:
        segments = a.info()["segments"]
        assert segments <= b.info()["segments"] and segments - 1 <= EAGER_MERGES.max_segments
        assert a.info()["tokens"] == b.info()["tokens"]
        ann_calls.clear()
        got, want = a.rank(qs, params), b.rank(qs, params)
        assert len(ann_calls) == 2
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x.doc_ids, y.doc_ids)
            np.testing.assert_array_equal(x.scores, y.scores)
    assert verify_index(merged).ok


# -- a state machine against an in-memory model --------------------------------------


class LivingIndexMachine(RuleBasedStateMachine):
    """add, delete, upsert, search, reopen and compact against a dict of documents."""

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, str] = {}  # external id -> version
        self.gone: set[str] = set()  # ids deleted once, which may come back
        self.counter = 0

    @initialize()
    def start(self) -> None:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "idx"
        build_base(self.path, "ivf-flat", n_docs=60)
        self.model = {f"b{i}": "v0" for i in range(60)}
        self.writer = StoreWriter(self.path)
        self.index = Index.open(self.path)

    def _version(self) -> str:
        self.counter += 1
        return f"m{self.counter}"

    @rule(n=st.integers(1, 12), again=st.booleans())
    def add(self, n: int, again: bool) -> None:
        version = self._version()
        new = [(f"a{version}-{i}", version) for i in range(n)]
        if again:  # a deleted id can be added again
            new += [(e, version) for e in sorted(self.gone - set(self.model))[:3]]
        self.writer.add([[doc(e, v) for e, v in new]])
        self.model.update(new)

    @rule(data=st.data())
    def add_existing_fails(self, data: st.DataObject) -> None:
        if not self.model:
            return
        ext = data.draw(st.sampled_from(sorted(self.model)))
        with pytest.raises(InvalidInput, match=ext):
            self.writer.add([[doc("fresh-one", "x"), doc(ext, "dup")]])

    @rule(data=st.data(), n=st.integers(1, 6))
    def delete(self, data: st.DataObject, n: int) -> None:
        if not self.model:
            return
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=n))
        report = self.writer.delete([*ids, "never-there"])
        assert report.deleted == len(set(ids))
        for ext in ids:
            self.model.pop(ext, None)
        self.gone.update(ids)

    @rule(data=st.data())
    def delete_where(self, data: st.DataObject) -> None:
        if not self.model:
            return
        version = data.draw(st.sampled_from(sorted(set(self.model.values()))))
        compiled = compile_filter({"version": version})
        assert compiled is not None
        doomed = {e for e, v in self.model.items() if v == version}
        report = self.writer.delete_where(compiled.predicate)
        assert report.deleted == len(doomed)
        for ext in doomed:
            del self.model[ext]
        self.gone.update(doomed)

    @rule(data=st.data(), n_new=st.integers(0, 3))
    def upsert(self, data: st.DataObject, n_new: int) -> None:
        version = self._version()
        old = (
            data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=4, unique=True))
            if self.model
            else []
        )
        ids = old + [f"u{version}-{i}" for i in range(n_new)]
        if not ids:
            return
        report = self.writer.add([[doc(e, version) for e in ids]], replace=True)
        assert report.replaced == len(old)
        self.model.update({e: version for e in ids})

    @rule(retrain=st.booleans())
    def compact(self, retrain: bool) -> None:
        if retrain and sum(len(vectors(e, v)) for e, v in self.model.items()) < 39 * 8:
            retrain = False  # too few tokens to train 8 lists
        self.writer.compact(retrain=retrain)

    @rule()
    def reopen(self) -> None:
        self.writer.close()
        self.index.close()
        self.writer = StoreWriter(self.path)
        self.index = Index.open(self.path)

    @rule(seed=st.integers(0, 2**16))
    def search(self, seed: int) -> None:
        self.index.refresh()
        if not self.model:
            assert self.index.search(queries(1, seed)[0], k=5) == []
            return
        Q = queries(1, seed)[0]
        # the ANN path (exact_threshold=0), every token reachable: it finds what
        # exhaustive MaxSim finds
        hits = self.index.search(
            Q, k=5, k_token=100_000, nprobe=64, n_rerank=10_000, exact_threshold=0
        )
        ids = sorted(self.model)
        ref = np.array(
            [
                (Q @ vectors(e, self.model[e]).astype(np.float16).astype(np.float32).T)
                .max(axis=1)
                .sum()
                for e in ids
            ]
        )
        order = np.argsort(-ref, kind="stable")[: len(hits)]
        want = [type("H", (), {"external_id": ids[i], "score": float(ref[i])}) for i in order]
        same_ranking(hits, want, tol=1e-3)

    @invariant()
    def documents_match(self) -> None:
        if not hasattr(self, "writer"):
            return
        assert set(self.writer.live) == set(self.model)

    def teardown(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()
            self.index.close()
            state = live_state(self.path)
            assert state == {e: f"{e}|{v}" for e, v in self.model.items()}
            assert verify_index(self.path).ok
            self.tmp.cleanup()


TestLivingIndexMachine = LivingIndexMachine.TestCase
TestLivingIndexMachine.settings = settings(max_examples=8, stateful_step_count=12, deadline=None)


@pytest.mark.slow
class TestLivingIndexMachineLong(LivingIndexMachine.TestCase):  # type: ignore[name-defined]
    settings = settings(max_examples=80, stateful_step_count=25, deadline=None)


# -- kill -9 of a writer changing the index ------------------------------------------


def _ops_child(path: Path, seed: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ops_child", *args, str(path), str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _settle(path: Path, state: dict[str, str], output: str) -> tuple[dict[str, str], str]:
    """The index after a killed child: the state after its last acknowledged change,
    or after the change in flight; returns the new state and which it was."""
    lines = output.splitlines()
    assert lines[0] == "ready", output
    in_flight = None
    for line in lines[1:]:
        if line.startswith("BEGIN "):
            in_flight = json.loads(line[6:])
        elif line == "ACK":
            assert in_flight is not None
            state, in_flight = model_after(state, in_flight), None
    got = live_state(path)
    report = verify_index(path)
    assert report.ok, report.problem
    if got == state:
        return state, "before"
    assert in_flight is not None and got == model_after(state, in_flight), in_flight
    return got, "after"


def _assert_swept(path: Path) -> None:
    with StoreWriter(path):  # opening a writer sweeps what the killed one left
        pass
    with StoreSnapshot.open(path) as snap:
        segments = sorted(s.name for s in snap.manifest.segments)
        gen = f"gen-{snap.manifest.generation:06d}"
    assert sorted(p.name for p in path.iterdir()) == sorted(["CURRENT", LOCK_NAME, gen, *segments])


@pytest.mark.parametrize("op", ["add", "delete", "upsert", "compact"])
@pytest.mark.parametrize(
    ("failpoint", "survivor"),
    [
        ("commit:before-pointer", "before"),
        ("commit:before-rename", "before"),
        ("commit:after-rename", "after"),
        ("commit:before-sweep", "after"),
    ],
)
def test_a_change_killed_at_each_commit_point_is_before_or_after(
    tmp_path: Path, op: str, failpoint: str, survivor: str
) -> None:
    path = tmp_path / "idx"
    build_base(path, "ivf-flat")
    state = live_state(path)
    child = _ops_child(path, 7, "--failpoint", failpoint, "--ops", op)
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err
    assert out.count("BEGIN") == 1 and "ACK" not in out
    _settle(path, state, out)
    with StoreSnapshot.open(path) as snap:  # a compaction keeps the documents: count commits
        assert snap.manifest.generation == (1 if survivor == "before" else 2)
    _assert_swept(path)


def _kill_loop(tmp_path: Path, kills: int, kind: str = "ivf-flat") -> dict[str, int]:
    path = tmp_path / "idx"
    build_base(path, kind)
    state = live_state(path)
    rng = np.random.default_rng(11)
    seen = {"before": 0, "after": 0, "changes": 0}
    for i in range(kills):
        child = _ops_child(path, 1000 + i)
        assert child.stdout is not None
        first = child.stdout.readline()
        time.sleep(float(rng.uniform(0.0, 0.8)))
        child.send_signal(signal.SIGKILL)
        out, err = rest_of_output(child)
        assert child.returncode == -signal.SIGKILL, err
        state, which = _settle(path, state, first + out)
        seen[which] += 1
        seen["changes"] += out.count("ACK")
    _assert_swept(path)
    return seen


def test_kill_9_at_random_instants_of_changes(tmp_path: Path) -> None:
    seen = _kill_loop(tmp_path, kills=4)
    assert seen["before"] + seen["after"] == 4


@pytest.mark.slow
def test_kill_9_at_a_hundred_random_instants_of_changes(tmp_path: Path) -> None:
    seen = _kill_loop(tmp_path, kills=110)
    print(f"110 kills of a changing writer: {seen}")
    assert seen["changes"] > 110


# -- readers while the index changes -------------------------------------------------


def _readers_through_compactions(tmp_path: Path, compactions: int) -> str:
    path = tmp_path / "idx"
    build_base(path, "ivf-flat")
    reader = subprocess.Popen(
        [sys.executable, "-m", "tests.ops_child", "--read", str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
    rng = np.random.default_rng(3)
    with StoreWriter(path) as writer:
        for n in range(compactions):
            for kind in ("add", "delete", "upsert"):
                apply(writer, draw(rng, sorted(writer.live), (kind,), f"c{n}"))
            writer.compact(retrain=n % 10 == 9)
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err
    searches, refreshes = (int(x) for x in out.split()[1::2])
    assert searches > 0 and refreshes > 0
    return out.strip()


def test_a_reader_process_searches_through_compactions(tmp_path: Path) -> None:
    _readers_through_compactions(tmp_path, compactions=5)


@pytest.mark.slow
def test_a_reader_process_searches_through_a_hundred_compactions(tmp_path: Path) -> None:
    print("100 compactions:", _readers_through_compactions(tmp_path, compactions=100))


def _threads_and_a_writer(tmp_path: Path, changes: int) -> dict[str, int]:
    """Eight threads search while one writer adds and deletes: four share one
    ``Index`` and refresh it as they go, four refresh their own. Every hit is a
    document live in the committed generation the search read (own indexes), or
    in some committed generation (the shared one), with its own text."""
    path = tmp_path / "idx"
    build_base(path, "ivf-flat")
    stop = threading.Event()
    failures: list[BaseException] = []
    counts = {"searches": 0, "refreshes": 0}
    lock = threading.Lock()
    shared = Index.open(path)
    live_at: dict[int, frozenset[str]] = {}  # generation -> live ids, as committed
    seen: list[tuple[int | None, list[str]]] = []  # (generation read, hit ids)

    def search(seed: int) -> None:
        rng = np.random.default_rng(seed)
        own = Index.open(path) if seed % 2 else None
        index = own or shared
        try:
            while not stop.is_set():
                if rng.random() < 0.2:
                    n = index.refresh()
                    with lock:
                        counts["refreshes"] += n
                gen = index.info()["generation"] if own else None
                hits = index.search(
                    queries(1, int(rng.integers(1 << 30)))[0], params=PARAMS, text=True
                )
                for hit in hits:
                    assert str(hit.text).split("|")[0] == hit.external_id
                with lock:
                    counts["searches"] += 1
                    seen.append((gen, [h.external_id for h in hits]))
        except BaseException as exc:
            failures.append(exc)
        finally:
            if own is not None:
                own.close()

    with StoreWriter(path) as writer:
        live_at[writer.manifest.generation] = frozenset(writer.live)
        threads = [threading.Thread(target=search, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        try:
            # a second writer process is refused while this one holds the lock
            second = _ops_child(path, 1)
            _, err = second.communicate(timeout=60)
            assert second.returncode != 0 and "IndexLocked" in err
            rng = np.random.default_rng(0)
            for n in range(changes):
                if n % 3 == 2:
                    doomed = rng.choice(sorted(writer.live), size=5, replace=False).tolist()
                    report = writer.delete(doomed)
                else:
                    report = writer.add([[doc(f"t{n}-{i}", "v1") for i in range(10)]])
                live_at[report.generation] = frozenset(writer.live)
        finally:
            stop.set()
            for t in threads:
                t.join()
            shared.close()
    assert failures == []
    ever = frozenset().union(*live_at.values())
    for gen, ids in seen:
        # an add's merges commit generations of their own with the add's live set:
        # the report names the last, so a generation read maps to the next recorded
        recorded = min(g for g in live_at if g >= gen) if gen is not None else None
        assert set(ids) <= (live_at[recorded] if recorded is not None else ever), (gen, ids)
    assert counts["searches"] > 0 and any(g is not None and g > min(live_at) for g, _ in seen)
    return counts


def test_eight_threads_search_while_one_writer_adds(tmp_path: Path) -> None:
    _threads_and_a_writer(tmp_path, changes=30)


@pytest.mark.slow
def test_eight_threads_search_while_one_writer_adds_for_a_while(tmp_path: Path) -> None:
    print("threads:", _threads_and_a_writer(tmp_path, changes=400))


# -- the API and the CLI -------------------------------------------------------------


def test_the_index_api_adds_deletes_upserts_compacts_and_refreshes(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    ids = [f"d{i}" for i in range(80)]
    vecs = [vectors(e, "v0") for e in ids]
    index = Index.from_vectors(path, ids, vecs, texts=[f"{e}|v0" for e in ids])
    before = Index.open(path)
    report = index.add_vectors(["new"], [vectors("new", "v0")], texts=["new|v0"])
    assert report.added == 1 and len(index) == 81 and len(before) == 80
    with pytest.raises(InvalidInput, match="'d3'"):
        index.add_vectors(["d3"], [vecs[3]])
    # an upsert replaces text and vectors; the id stays the user's
    index.add_vectors(["d3"], [vectors("d3", "v9")], texts=["d3|v9"], replace=True)
    hit = index.search(vectors("d3", "v9"), k=1, text=True)[0]
    assert (hit.external_id, hit.text) == ("d3", "d3|v9")
    # deleted documents never come back, before or after compaction
    assert index.delete(["d3", "d4", "nope"]).deleted == 2
    for stage in ("deleted", "compacted"):
        for q in (vecs[3], vecs[4]):
            found = index.search(q, k=80, n_rerank=80, exact_threshold=0)  # the ANN path
            assert {"d3", "d4"}.isdisjoint(h.external_id for h in found), stage
        index.compact()
    assert index.info()["segments"] == 1 and len(index) == 79
    # their ids can be added again
    index.add_vectors(["d4"], [vecs[4]], texts=["d4|v0"])
    assert index.search(vecs[4], k=1, exact_threshold=0)[0].external_id == "d4"
    assert index.delete_where(filter_sql="text LIKE 'd1%'").deleted == 11  # d1, d10 .. d19
    # the index opened first still answers from its snapshot, until refresh
    assert len(before) == 80 and before.search(vecs[3], k=1)[0].external_id == "d3"
    assert before.refresh() and len(before) == len(index) == 69
    assert not before.refresh()
    before.close()
    index.close()


def test_a_second_writer_thread_is_refused_while_readers_go_on(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    build_base(path, "flat", n_docs=30)
    with StoreWriter(path) as writer:
        with pytest.raises(IndexLocked):
            StoreWriter(path)
        with Index.open(path) as index:  # readers are never blocked
            assert len(index) == 30
        writer.delete(["b0"])
    with StoreWriter(path) as writer:
        assert "b0" not in writer.live and len(writer.live) == 29


def test_the_cli_adds_upserts_deletes_and_compacts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.jsonl"
    more = tmp_path / "more.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "text": f"package number {i} tool"}) + "\n"
            for i in range(12)
        )
    )
    more.write_text(
        json.dumps({"id": "p3", "text": "a replaced package about compilers"})
        + "\n"
        + json.dumps({"id": "q1", "text": "a new package for parsing json"})
        + "\n"
    )
    path = tmp_path / "idx"
    assert cli_main(["-q", "build", str(corpus), str(path)]) == 0
    assert cli_main(["-q", "add", str(path), str(more)]) == 2  # p3 is there already
    assert "p3" in capsys.readouterr().err
    assert cli_main(["-q", "upsert", str(path), str(more)]) == 0
    assert "1 added, 1 replaced" in capsys.readouterr().out
    assert cli_main(["delete", str(path), "p1", "p2", "zz"]) == 0
    assert "2 deleted; 11 documents" in capsys.readouterr().out
    assert cli_main(["compact", str(path)]) == 0
    assert cli_main(["verify", str(path)]) == 0
    capsys.readouterr()
    assert cli_main(["search", str(path), "compilers", "-k", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["hits"][0]["id"] == "p3"
