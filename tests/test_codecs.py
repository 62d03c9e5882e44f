"""Compressed token storage: the sq8 and pq codecs and the projection (``dim``).

What the ANN path loses on top of a codec is tested with the other index kinds in
tests/test_search.py, and changes in place on codec indexes in
tests/test_living_index.py; here: what is stored, how it reads back, what damage
does, and what is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest

from sie_index import CorruptIndex, DimensionMismatch, Index, InvalidInput, SearchParams
from sie_index.cli import main as cli_main
from sie_index.exhaustive import exhaustive_search
from storage.codec import fit_projection
from storage.snapshot import StoreSnapshot
from storage.store_writer import StoreWriter
from storage.token_index import TokenIndex
from tests.conftest import synthetic_corpus, synthetic_queries

N_DOCS = 1200  # about 16k tokens: enough to train ivf-pq's codebooks
CASES: list[tuple[str, int | None, str, int]] = [
    # codec, dim, index kind, stored bytes a token at 32 dims
    ("f16", None, "ivf-flat", 64),
    ("sq8", None, "ivf-flat", 32),
    ("sq8", 16, "hnsw", 16),
    ("pq", None, "auto", 1 + 32),  # the inverted list (one byte for 16 lists), 32 codes
    ("pq", 16, "ivf-pq", 1 + 16),
    ("f16", 16, "flat", 32),
]


def low_rank_corpus(seed: int) -> tuple[list[str], list[np.ndarray]]:
    """Token vectors of 32 dimensions that mostly live in 12 (as a model's do: its
    embeddings are far from isotropic), so a projection to 16 keeps their structure."""
    ids, small = synthetic_corpus(N_DOCS, 12, seed=seed)
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((32, 12)))[0].astype(np.float32)
    vectors = []
    for v in small:
        x = v @ basis.T + 0.05 * rng.standard_normal((len(v), 32)).astype(np.float32)
        vectors.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return ids, vectors


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[np.ndarray]]:
    return low_rank_corpus(5)


def build(path: Path, corpus: Any, codec: str, dim: int | None, kind: str) -> Index:
    ids, vectors = corpus
    options = {"nlist": 16} if kind != "hnsw" and kind != "flat" else None
    return Index.from_vectors(
        path, ids, vectors, codec=codec, dim=dim, index_kind=kind, index_options=options
    )


@pytest.mark.parametrize(("codec", "dim", "kind", "row_bytes"), CASES)
def test_each_codec_stores_its_rows_and_decodes_them_close_to_the_vectors(
    tmp_path: Path, corpus: Any, codec: str, dim: int | None, kind: str, row_bytes: int
) -> None:
    _, vectors = corpus
    with build(tmp_path / "idx", corpus, codec, dim, kind) as index:
        info = index.info()
        snap = StoreSnapshot.open(index.path)  # storage's own view, for the oracle
        assert (info["codec"], info["dim"], info["vector_bytes_per_token"]) == (
            codec,
            dim or 32,
            row_bytes,
        )
        assert info["encoder"]["dim"] == 32
        names = {n.split("/", 1)[1] for n in info["files_bytes"] if n.startswith("seg-")}
        assert f"tokens.{codec}" in names and "scratch.f16" not in names
        assert ("projection.f32" in names) == (dim is not None)
        assert ("tokens.faiss" in names) == (codec != "pq")  # pq: the codes are the index
        assert info["files_bytes"][f"seg-000001/tokens.{codec}"] == row_bytes * snap.manifest.tokens
        # decoded vectors against the originals, projected where there is a projection
        P = snap.codec.projection
        for d in (0, 17, N_DOCS - 1):
            got = snap.tokens.spans(snap.spans.token_start[[d]], snap.spans.token_count[[d]])
            want = vectors[d] if P is None else vectors[d] @ P.T
            error = np.abs(got - want).max()
            assert error < {"f16": 1e-3, "sq8": 0.02, "pq": 0.6}[codec], error
        # a dot product survives the projection: P keeps the dominant directions
        if P is not None:
            np.testing.assert_allclose(P @ P.T, np.eye(dim or 32), atol=1e-5)


@pytest.mark.parametrize(("codec", "dim", "kind", "row_bytes"), CASES)
def test_search_on_a_codec_index_finds_what_exhaustive_maxsim_finds(
    tmp_path: Path,
    corpus: Any,
    ann_calls: list[int],
    codec: str,
    dim: int | None,
    kind: str,
    row_bytes: int,
) -> None:
    """At default settings, the ANN path over compressed vectors keeps most of the
    exhaustive float32 top 10 (the whole loss: ANN and codec together). Measured on
    this corpus: 0.71-0.73 without a projection (0.98 with every token reached),
    0.59-0.62 through the projection to 16 dims (0.77 with every token reached:
    the noise outside the corpus's 12 main dimensions is what it drops)."""
    ids, vectors = corpus
    with build(tmp_path / "idx", corpus, codec, dim, kind) as index:
        recalls = []
        for Q in synthetic_queries(vectors, 12, seed=8):
            exact = np.array([float((Q @ v.T).max(axis=1).sum()) for v in vectors])
            best = set(np.argsort(-exact)[:10].tolist())
            ann_calls.clear()
            hits = index.search(Q, k=10, exact_threshold=0)
            assert ann_calls == [1]
            recalls.append(len(best & {ids.index(h.external_id) for h in hits}) / 10)
        assert np.mean(recalls) >= (0.65 if dim is None else 0.55), recalls


def test_queries_of_the_encoder_dimension_go_through_the_projection(
    tmp_path: Path, corpus: Any
) -> None:
    _, vectors = corpus
    with build(tmp_path / "idx", corpus, "f16", 16, "flat") as index:
        Q = synthetic_queries(vectors, 1, seed=3)[0]
        hits = index.search(Q, k=5, explain=True, exact_threshold=N_DOCS)
        snap = StoreSnapshot.open(index.path)  # storage's own view, for the oracle
        P = snap.codec.projection
        assert P is not None
        _, top = exhaustive_search(
            [Q], snap.tokens, snap.spans.token_start, snap.spans.token_count, 5
        )
        assert [h.doc_id for h in hits] == top[0].tolist()
        # the score is MaxSim in the stored space, and explanations add up to it
        d = hits[0].doc_id
        D = (vectors[d] @ P.T).astype(np.float16).astype(np.float32)
        assert hits[0].score == pytest.approx(float(((Q @ P.T) @ D.T).max(axis=1).sum()), abs=1e-4)
        assert hits[0].explain is not None
        assert sum(m.similarity for m in hits[0].explain) == pytest.approx(hits[0].score, abs=1e-4)
        with pytest.raises(DimensionMismatch, match="32"):
            exhaustive_search(
                [Q[:, :16]], snap.tokens, snap.spans.token_start, snap.spans.token_count, 5
            )
        with pytest.raises(DimensionMismatch, match="dimension 16, the index has 32"):
            index.search(Q[:, :16])


def test_a_projection_keeps_the_top_directions_of_the_second_moment() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    x = (rng.standard_normal((5000, 8)) * [5, 4, 3, 0.1, 0.1, 0.1, 0.1, 0.1]) @ basis.T
    P = fit_projection(x.astype(np.float32), 3)
    # the span of P is the span of the three strong directions
    np.testing.assert_allclose(np.linalg.norm(P @ basis[:, :3], axis=1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(P, fit_projection(x.astype(np.float32), 3))


@pytest.mark.parametrize("codec", ["sq8", "pq"])
def test_a_build_is_byte_for_byte_repeatable(tmp_path: Path, corpus: Any, codec: str) -> None:
    paths = [tmp_path / "a", tmp_path / "b"]
    for path in paths:
        build(path, corpus, codec, 16, "ivf-pq").close()
    for name in (f"tokens.{codec}", "projection.f32", "trained.faiss"):
        a, b = ((p / "seg-000001" / name).read_bytes() for p in paths)
        assert a == b, name


@pytest.mark.parametrize(
    ("name", "codec", "dim"),
    [("tokens.pq", "pq", None), ("projection.f32", "pq", 16), ("codec.faiss", "sq8", None)],
)
def test_a_damaged_codec_file_is_corrupt_index_naming_it(
    tmp_path: Path, corpus: Any, name: str, codec: str, dim: int | None
) -> None:
    path = tmp_path / "idx"
    build(path, corpus, codec, dim, "ivf-pq").close()
    target = path / "seg-000001" / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match=name.replace(".", r"\.")):
        StoreSnapshot.open(path).close()


def test_bad_codec_requests_are_refused_before_anything_is_written(
    tmp_path: Path, corpus: Any
) -> None:
    ids, vectors = corpus
    for options, message in (
        ({"codec": "zstd"}, "unknown codec 'zstd'"),
        ({"codec": "f16", "dim": 64}, "between 1 and the encoder's 32"),
        ({"codec": "pq", "index_kind": "hnsw"}, "index kind 'hnsw' has none"),
        ({"codec": "pq", "index_kind": "flat"}, "index kind 'flat' has none"),
    ):
        with pytest.raises(InvalidInput, match=message):
            Index.from_vectors(tmp_path / "idx", ids, vectors, **options)  # type: ignore[arg-type]
        assert not (tmp_path / "idx").exists()
    with pytest.raises(InvalidInput, match="codec 'f16' or 'sq8'"):
        Index.from_vectors(tmp_path / "small", ids[:50], vectors[:50], codec="pq")


def test_auto_keeps_float16_below_its_threshold(tmp_path: Path, corpus: Any) -> None:
    with build(tmp_path / "idx", corpus, "auto", None, "auto") as index:
        assert index.info()["codec"] == "f16"
        assert not (tmp_path / "idx" / "seg-000001" / "scratch.f16").exists()


def test_the_manifest_refuses_an_unknown_codec(tmp_path: Path, corpus: Any) -> None:
    from storage.manifest import Manifest

    path = tmp_path / "idx"
    build(path, corpus, "sq8", None, "ivf-flat").close()
    raw = json.loads((path / "gen-000001" / "manifest.json").read_text())
    raw["codec"] = "zz"
    with pytest.raises(CorruptIndex, match="unknown vector codec 'zz'"):
        Manifest.from_bytes(json.dumps(raw).encode(), "m", file_names=["x"])
    raw["codec"], raw["encoder"]["dim"] = "sq8", 8
    with pytest.raises(CorruptIndex, match="below the stored dim"):
        Manifest.from_bytes(json.dumps(raw).encode(), "m", file_names=["x"])


def test_the_cli_builds_with_a_codec_and_a_dimension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids, vectors = low_rank_corpus(2)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": i}) + "\n" for i in ids))
    np.savez(tmp_path / "vectors.npz", **dict(zip(ids, vectors, strict=True)))
    out = tmp_path / "idx"
    encoder = f"precomputed:{tmp_path / 'vectors.npz'}"
    code = cli_main(
        ["build", str(corpus), str(out), "--encoder", encoder, "--codec", "pq", "--dim", "16"]
    )
    assert code == 0, capsys.readouterr()
    with Index.open(out) as index:
        assert (index.info()["codec"], index.info()["dim"]) == ("pq", 16)
        hits = index.search(vectors[3][:4], params=SearchParams(k=3, exact_threshold=0))
        assert hits[0].external_id == ids[3]


def test_a_pq_writer_reads_its_trained_index_once(tmp_path: Path, corpus: Any) -> None:
    """The pq codec's quantizer is trained.faiss: an add encodes with it and fills
    a copy of it, from one verified read, not two."""
    build(tmp_path / "idx", corpus, "pq", None, "ivf-pq").close()
    loads: list[str] = []
    real = TokenIndex.load_faiss

    def counting(*args: Any, **kw: Any) -> Any:
        loads.append(kw["where"])
        return real(*args, **kw)

    with patch.object(TokenIndex, "load_faiss", counting), StoreWriter(tmp_path / "idx") as w:
        assert w.trained_index() is w.codec().quantizer
        assert w.trained_index().ntotal == 0
    assert [where.rsplit("/", 1)[-1] for where in loads] == ["trained.faiss"]


def test_an_sq8_index_verifies_its_trained_index_on_open(tmp_path: Path, corpus: Any) -> None:
    """trained.faiss is checked on open whatever the codec: an sq8 index's was
    first read when a writer used it."""
    build(tmp_path / "idx", corpus, "sq8", None, "ivf-pq").close()
    trained = tmp_path / "idx" / "seg-000001" / "trained.faiss"
    data = bytearray(trained.read_bytes())
    data[len(data) // 2] ^= 0x10
    trained.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match=r"trained\.faiss"):
        Index.open(tmp_path / "idx")
