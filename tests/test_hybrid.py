"""Hybrid search: BM25 over the lexicon joined to the token ANN's candidates, the
union rescored by exact MaxSim and fused.

Every check is against references computed here, independently: BM25 from a fresh
SQLite FTS5 table of the live documents (FTS5's own ``bm25()``), MaxSim in NumPy
over the stored vectors, and the three fusions written out again. The index is a
slice of debian-pkgs encoded by the real default model, searched by text.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sie_index import CorruptIndex, Index, InvalidInput, NoLexicon, SearchParams
from sie_index.corpus import packaged_dataset
from sie_index.phases import PhaseTimes
from sie_index.search import Searcher
from storage import verify_index
from storage.snapshot import StoreSnapshot

N_DOCS = 400
# k=10, n_rerank=16: 400 documents are more than 8 x 16, so searches run the ANN path
PARAMS = SearchParams(k=10, n_rerank=16, k_token=32, nprobe=4, lexical_k=20, hybrid=True)
TOKENIZE = "porter unicode61 remove_diacritics 2"
QUERIES = [
    "python library for parsing xml",
    "GNOME desktop applications and themes",
    "perl perl module to read configuration files",
    "running servers, networking daemons",
    "font fonts",
]
HOSTILE = [
    '"unbalanced quote',
    "NEAR(python xml, 2)",
    "pyth* OR -perl AND NOT gnome",
    "title:python ^ {a b} : + - ( ) ''",
    "Ünïcödé façade naïve 日本語 テスト 🐍",
    "DROP TABLE documents; --",
    "",
    "   ",
    "!!! ... ---",
]


def corpus_slice(n: int) -> list[dict[str, Any]]:
    docs = []
    with gzip.open(packaged_dataset() / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            docs.append({"id": row["_id"], "text": f"{row.get('title', '')} {row['text']}"})
            if len(docs) == n:
                break
    return docs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hybrid") / "index"
    docs = corpus_slice(N_DOCS)
    for i, d in enumerate(docs):
        d["metadata"] = {"section": "even" if i % 2 == 0 else "odd", "tags": [f"tag{i % 7}"]}
    Index.build(
        path,
        docs,
        index_kind="ivf-flat",
        index_options={"nlist": 16},
        codec="f16",
        progress=False,
        lexical_fields=["tags"],
    ).close()
    return path


@pytest.fixture
def index(built: Path, tmp_path: Path) -> Iterator[Index]:
    """A private copy of the built index (tests change theirs)."""
    import shutil

    path = tmp_path / "index"
    shutil.copytree(built, path)
    with Index.open(path) as ix:
        yield ix


# -- independent references ----------------------------------------------------------


def live_texts(ix: Index) -> dict[str, str]:
    """External id -> what the lexicon should index, for every live document."""
    snap = ix._snapshot
    live = np.flatnonzero(~snap.spans.deleted)
    stored = snap.docs.fetch(live.tolist(), text=True, metadata=True)
    fields = snap.manifest.lexical_fields or ()
    out = {}
    for d in live.tolist():
        meta = stored[d].metadata or {}
        extra = [str(v) for f in fields for v in np.atleast_1d(meta.get(f, [])).tolist()]
        out[stored[d].external_id] = " ".join([stored[d].text or "", *extra]).strip()
    return out


def fts5_bm25(texts: dict[str, str], query: str) -> dict[str, float]:
    """FTS5's own bm25() over a fresh table of ``texts``, for the query's words OR-ed
    (split without stemming, quoted: FTS5 stems each as it would a document's)."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(ext UNINDEXED, x, tokenize='{TOKENIZE}')")
    conn.executemany("INSERT INTO t (ext, x) VALUES (?, ?)", texts.items())
    conn.execute("CREATE VIRTUAL TABLE w USING fts5(x, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("CREATE VIRTUAL TABLE wv USING fts5vocab(w, 'instance')")
    conn.execute("INSERT INTO w (rowid, x) VALUES (1, ?)", (query,))
    words = [r[0] for r in conn.execute("SELECT term FROM wv ORDER BY doc, col, offset")]
    if not words:
        return {}
    match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
    rows = conn.execute("SELECT ext, -bm25(t) FROM t WHERE t MATCH ?", (match,)).fetchall()
    return {ext: float(score) for ext, score in rows}


def exact_maxsim(ix: Index, Q: np.ndarray, doc_ids: list[int]) -> dict[int, float]:
    snap = ix._snapshot
    out = {}
    for d in doc_ids:
        D = snap.tokens.spans(snap.spans.token_start[[d]], snap.spans.token_count[[d]])
        out[d] = float((Q.astype(np.float64) @ D.astype(np.float64).T).max(axis=1).sum())
    return out


def reference_fusion(ms: dict[int, float], bm: dict[int, float], fusion: str, w: float) -> dict:
    ids = sorted(ms)
    if fusion == "maxsim":
        return dict(ms)
    if fusion == "weighted":

        def norm(s: dict[int, float]) -> dict[int, float]:
            lo, hi = min(s.values()), max(s.values())
            return {d: (s[d] - lo) / (hi - lo) if hi > lo else 0.0 for d in ids}

        nm, nb = norm(ms), norm(bm)
        return {d: w * nm[d] + (1 - w) * nb[d] for d in ids}
    by_ms = sorted(ids, key=lambda d: (-ms[d], d))
    by_bm = sorted([d for d in ids if bm[d] > 0], key=lambda d: (-bm[d], d))
    out = {d: 1 / (60 + by_ms.index(d) + 1) for d in ids}
    for r, d in enumerate(by_bm):
        out[d] += 1 / (60 + r + 1)
    return out


def spy_candidates(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Records the token ANN's candidates of each query (proof the ANN path ran)."""
    seen: list[np.ndarray] = []
    original = Searcher.candidates

    def spy(self: Searcher, *args: Any, **kw: Any) -> np.ndarray:
        out = original(self, *args, **kw)
        seen.append(out)
        return out

    monkeypatch.setattr(Searcher, "candidates", spy)
    return seen


def check_against_reference(
    ix: Index, query: str, params: SearchParams, ann: np.ndarray, allowed: set[str] | None = None
) -> None:
    texts = live_texts(ix)
    bm_ext = fts5_bm25(texts, query)
    ids = ix.lookup(list(texts))
    if allowed is not None:
        bm_ext = {e: s for e, s in bm_ext.items() if e in allowed}
    # BM25's best lexical_k, ties to the smaller internal id
    best = sorted(bm_ext, key=lambda e: (-bm_ext[e], ids[e]))[: params.lexical_k]
    union = sorted(set(ann.tolist()) | {ids[e] for e in best})
    by_id = {ids[e]: s for e, s in bm_ext.items()}
    (Q,) = ix.encode_queries([query])
    ms = exact_maxsim(ix, Q, union)
    bm = {d: by_id.get(d, 0.0) for d in union}
    fused = reference_fusion(ms, bm, params.fusion, params.fusion_weight)
    want = sorted(union, key=lambda d: (-fused[d], d))[: params.k]
    hits = ix.search(query, params=params)
    assert [h.doc_id for h in hits][:3] == want[:3] or _tied(hits, want, fused)
    for h in hits:
        assert h.doc_id in fused
        assert h.score == pytest.approx(fused[h.doc_id], rel=1e-4, abs=1e-5)
        assert h.maxsim == pytest.approx(ms[h.doc_id], rel=1e-4, abs=1e-4)
        assert h.bm25 == pytest.approx(bm[h.doc_id], rel=1e-9, abs=1e-12)
    # the cut: nothing left out scores above the last hit
    left_out = [d for d in union if d not in {h.doc_id for h in hits}]
    if hits and left_out:
        assert max(fused[d] for d in left_out) <= hits[-1].score + 1e-4


def _tied(hits: list[Any], want: list[int], fused: dict[int, float]) -> bool:
    return all(abs(h.score - fused[d]) <= 1e-4 for h, d in zip(hits, want, strict=False))


# -- BM25 ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", QUERIES)
def test_lexical_scores_equal_fts5_bm25_over_the_live_documents(index: Index, query: str) -> None:
    want = fts5_bm25(live_texts(index), query)
    ids, scores = index._searcher.lexical().scores(query)
    ext = index._snapshot.docs.fetch(ids.tolist())
    got = {ext[d].external_id: s for d, s in zip(ids.tolist(), scores.tolist(), strict=True)}
    assert want and set(got) == set(want)
    for e, s in want.items():
        assert got[e] == pytest.approx(s, rel=1e-9)


def test_metadata_fields_named_at_build_are_searchable(index: Index) -> None:
    ids, _ = index._searcher.lexical().scores("tag3")
    assert len(ids) == len([i for i in range(N_DOCS) if i % 7 == 3])


# -- hybrid equals the brute-force reference, on the ANN path ------------------------


@pytest.mark.parametrize("fusion", ["maxsim", "rrf", "weighted"])
def test_hybrid_equals_the_reference(
    index: Index, fusion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = spy_candidates(monkeypatch)
    params = PARAMS.with_(fusion=fusion)
    for query in QUERIES:
        ann.clear()
        timings = PhaseTimes()
        hits = index.search(query, params=params, timings=timings)
        assert len(ann) == 1 and len(hits) == params.k
        assert timings.seconds["lexical"] > 0 and timings.seconds["ann"] > 0
        check_against_reference(index, query, params, ann[0])


def test_hybrid_widens_the_candidates_with_lexical_ones(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document only BM25 finds can be a hit: the union is rescored, not just the ANN's."""
    ann = spy_candidates(monkeypatch)
    params = PARAMS.with_(fusion="weighted", fusion_weight=0.0, n_rerank=1, k_token=1)
    found_by_lexicon_only = 0
    for query in QUERIES:
        ann.clear()
        hits = index.search(query, params=params)
        found_by_lexicon_only += len({h.doc_id for h in hits} - set(ann[0].tolist()))
    assert found_by_lexicon_only > 0


def test_filters_ids_and_deletes_apply_to_lexical_candidates(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = QUERIES[0]
    top = index.search(query, params=PARAMS.with_(fusion="weighted", fusion_weight=0.0))
    gone = top[0].external_id
    index.delete([gone])
    ann = spy_candidates(monkeypatch)
    hits = index.search(query, params=PARAMS.with_(fusion="rrf"))
    assert gone not in {h.external_id for h in hits}
    check_against_reference(index, query, PARAMS.with_(fusion="rrf"), ann[-1])

    section = index.search(query, params=PARAMS.with_(filter={"section": "odd"}), metadata=True)
    assert section and all(h.metadata == {**h.metadata, "section": "odd"} for h in section)
    ann.clear()
    params = PARAMS.with_(filter={"section": "odd"}, exact_threshold=0)
    hits = index.search(query, params=params)
    odd = {e for e, m in _metadata(index).items() if m["section"] == "odd"}
    assert {h.external_id for h in hits} <= odd
    check_against_reference(index, query, params, ann[-1], allowed=odd)

    few = [h.external_id for h in top[3:6]]
    hits = index.search(query, params=PARAMS.with_(ids=few))
    assert {h.external_id for h in hits} == set(few)


def _metadata(ix: Index) -> dict[str, dict[str, Any]]:
    snap = ix._snapshot
    live = np.flatnonzero(~snap.spans.deleted).tolist()
    stored = snap.docs.fetch(live, metadata=True)
    return {stored[d].external_id: stored[d].metadata for d in live}


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_query_text_is_inert(index: Index, query: str) -> None:
    """FTS5 syntax, quotes, unicode and text with no terms at all are words or nothing:
    never an error, never query syntax. A text without terms adds no candidate."""
    want = fts5_bm25(live_texts(index), query)
    ids, scores = index._searcher.lexical().scores(query)
    stored = index._snapshot.docs.fetch(ids.tolist())
    got = {stored[d].external_id: s for d, s in zip(ids.tolist(), scores.tolist(), strict=True)}
    assert got.keys() == want.keys()
    for e in want:
        assert got[e] == pytest.approx(want[e], rel=1e-9)
    if query.strip():
        hits = index.search(query, params=PARAMS.with_(fusion="maxsim"))
        if not want:  # no term: the hybrid search is the plain one
            plain = index.search(query, params=PARAMS.with_(hybrid=False))
            assert [h.doc_id for h in hits] == [h.doc_id for h in plain]
            assert all(h.bm25 == 0.0 for h in hits)


# -- the lexicon lives with the index ------------------------------------------------


def test_changes_keep_the_lexicon_equal_to_a_fresh_builds(index: Index, tmp_path: Path) -> None:
    docs = corpus_slice(N_DOCS + 40)[N_DOCS:]
    index.add(docs[:20])
    index.upsert([{"id": docs[0]["id"], "text": "python xml parser rewritten"}])
    index.delete([d["id"] for d in docs[5:10]] + [corpus_slice(3)[2]["id"]])
    index.add(docs[20:])
    for query in QUERIES:
        want = fts5_bm25(live_texts(index), query)
        ids, scores = index._searcher.lexical().scores(query)
        stored = index._snapshot.docs.fetch(ids.tolist())
        got = {stored[d].external_id: s for d, s in zip(ids.tolist(), scores.tolist(), strict=True)}
        assert got.keys() == want.keys()
        assert [got[e] for e in want] == pytest.approx(list(want.values()), rel=1e-9)
    before = {q: index.search(q, params=PARAMS) for q in QUERIES}
    index.compact()
    for q in QUERIES:
        after = index.search(q, params=PARAMS)
        assert [h.external_id for h in after] == [h.external_id for h in before[q]]
    assert verify_index(index.path).ok


def test_a_damaged_lexicon_row_is_refused(built: Path, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "index"
    shutil.copytree(built, path)
    with StoreSnapshot.open(path) as snap:
        db = snap.docs.readers[0].path
    conn = sqlite3.connect(db)
    (docs,) = conn.execute("SELECT docs FROM lexicon WHERE term = 'python'").fetchone()
    flipped = bytes([docs[0] ^ 1]) + docs[1:]
    conn.execute("UPDATE lexicon SET docs = ? WHERE term = 'python'", (flipped,))
    conn.commit()
    conn.close()
    with Index.open(path, verify=False) as ix:
        with pytest.raises(CorruptIndex, match="term 'python'"):
            ix.search("python", params=PARAMS)
        assert ix.search("python", params=PARAMS.with_(hybrid=False))  # the rest still serves
    report = verify_index(path)
    assert not report.ok and "python" in (report.problem or "")


def test_hybrid_needs_a_lexicon_and_a_text(tmp_path: Path) -> None:
    docs = corpus_slice(60)
    ix = Index.build(tmp_path / "no-text", docs, store_text=False, progress=False)
    with pytest.raises(NoLexicon, match="no lexicon"):
        ix.search("python", hybrid=True)
    (Q,) = ix.encode_queries(["python"])
    with pytest.raises(InvalidInput, match="text"):
        ix.search(Q, hybrid=True)
    with pytest.raises(InvalidInput, match="fusion"):
        ix.search("python", hybrid=True, fusion="bm25-only")
    ix.close()


def test_compaction_gives_an_index_a_lexicon(tmp_path: Path) -> None:
    docs = corpus_slice(60)
    ix = Index.build(tmp_path / "ix", docs, lexical_fields=None, progress=False)
    with pytest.raises(NoLexicon):
        ix.search("python", hybrid=True)
    ix.compact(lexical_fields=[])
    assert ix.search("python", hybrid=True, k=3)[0].bm25 > 0
    ix.close()


# -- the command line ----------------------------------------------------------------


def test_cli_search_and_evaluate_hybrid(
    index: Index, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sie_index.cli import main

    path = str(index.path)
    args = ["search", path, QUERIES[0], "-k", "5", "--json", "--hybrid", "--fusion", "rrf"]
    assert main([*args, "--n-rerank", "16", "--exact-threshold", "0"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    want = index.search(QUERIES[0], params=PARAMS.with_(k=5, fusion="rrf", lexical_k=50))
    assert [h["id"] for h in hits] == [h.external_id for h in want]
    assert all({"maxsim", "bm25"} <= h.keys() for h in hits)

    assert main(["search", path, QUERIES[0], "--fusion", "rrf"]) == 2
    assert "--fusion tune a hybrid search: add --hybrid" in capsys.readouterr().err

    out = tmp_path / "eval"
    args = ["evaluate", "debian-pkgs", "--index", path, "--out", str(out), "--hybrid"]
    assert main([*args, "--max-queries", "20"]) == 0
    printed = capsys.readouterr().out
    assert "hybrid (weighted)" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["hybrid"] is True and report["queries"] > 0


def test_cli_compact_gives_a_lexicon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sie_index.cli import main

    ix = Index.build(tmp_path / "ix", corpus_slice(60), lexical_fields=None, progress=False)
    ix.close()
    assert main(["search", str(tmp_path / "ix"), "python", "--hybrid"]) == 2
    assert "compact --lexicon" in capsys.readouterr().err
    assert main(["-q", "compact", str(tmp_path / "ix"), "--lexicon"]) == 0
    assert "compacted" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "ix"), "python", "--hybrid", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    assert hits and hits[0]["bm25"] > 0


# -- shards --------------------------------------------------------------------------


def test_a_sharded_index_scores_and_fuses_as_one_index(tmp_path: Path) -> None:
    """Each shard's BM25 uses the statistics of all shards, and the shards'
    candidates are fused together: where every document is a candidate (the exact
    path), a sharded hybrid search equals one index's; on the ANN path each hit's
    BM25 score is the one index's."""
    from sie_index import ShardedIndex

    docs = corpus_slice(300)
    one = Index.build(tmp_path / "one", docs, index_kind="flat", codec="f16", progress=False)
    sharded = ShardedIndex.build(
        tmp_path / "sharded", docs, shards=3, index_kind="flat", codec="f16", progress=False
    )
    with one, sharded:
        for fusion in ("maxsim", "rrf", "weighted"):
            every = PARAMS.with_(fusion=fusion, exact_threshold=10_000)
            for query in QUERIES:
                a, b = one.search(query, params=every), sharded.search(query, params=every)
                assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-5)
                assert {h.external_id for h in a if h.score > a[-1].score + 1e-6} <= {
                    h.external_id for h in b
                }
        texts = live_texts(one)
        for query in QUERIES:
            oracle = fts5_bm25(texts, query)
            hits = sharded.search(query, params=PARAMS.with_(exact_threshold=0, k=30))
            assert {h.shard for h in hits} == {0, 1, 2}
            for h in hits:
                assert h.bm25 == pytest.approx(oracle.get(h.external_id, 0.0), rel=1e-9)


# -- the service ---------------------------------------------------------------------


def test_the_server_and_client_search_hybrid(index: Index) -> None:
    import httpx

    from sie_index.client import Client
    from tests.server_process import ServerProcess

    path = index.path
    want = index.search(QUERIES[1], params=PARAMS.with_(fusion="rrf"))
    index.close()
    with ServerProcess(path) as server:
        body = {
            "query": QUERIES[1],
            **{f: getattr(PARAMS, f) for f in ("k", "n_rerank", "k_token", "nprobe", "lexical_k")},
            "hybrid": True,
            "fusion": "rrf",
        }
        hits = httpx.post(server.url + "/search", json=body).json()["hits"]
        assert [h["id"] for h in hits] == [h.external_id for h in want]
        assert [h["bm25"] for h in hits] == pytest.approx([h.bm25 for h in want])
        with Client(server.url) as client:
            got = client.search(QUERIES[1], params=PARAMS.with_(fusion="rrf"))
            assert [(h.external_id, h.maxsim) for h in got] == [
                (h.external_id, pytest.approx(h.maxsim)) for h in want
            ]
            vectors = index.encode_queries([QUERIES[1]])[0].tolist()
            r = httpx.post(server.url + "/search", json={"vectors": vectors, "hybrid": True})
            assert r.status_code == 422 and "text" in r.json()["error"]["message"]
            with pytest.raises(InvalidInput, match="fusion"):  # checked before it is sent
                client.search(QUERIES[1], hybrid=True, fusion="nope")
            bad = httpx.post(server.url + "/search", json={"query": "x", "fusion_weight": 2})
            assert bad.status_code == 422


def test_the_lexicon_indexes_metadata_words_and_numbers_not_flags() -> None:
    from storage.lexicon import lexical_text

    meta = json.dumps({"tags": ["cli", 3, True, False, None, 2.5], "flag": False, "n": 7})
    got = lexical_text("some text", meta, ["tags", "flag", "n", "absent"])
    assert got == "some text cli 3 2.5 7"
