"""Every byte checked: damage to any file of an index is an error naming it, never a
silently different result, a signal or a raw exception from SQLite or FAISS."""

from __future__ import annotations

import json
import shutil
import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest

from sie_index import Index
from sie_index.errors import CorruptIndex, FormatVersionMismatch, InvalidInput, SieIndexError
from storage.docstore import DOCS_NAME
from storage.generations import CURRENT_NAME
from storage.manifest import MANIFEST_NAME
from storage.predicate import Predicate
from storage.snapshot import StoreSnapshot
from storage.token_index import TOKEN_INDEX_NAME, TokenIndex
from storage.vectors import TOKEN_DOC_NAME, TOKENS_NAME
from tests.conftest import synthetic_corpus, synthetic_queries
from tests.storage_helpers import data_path, gen_dir, rewrite_manifest

N_DOCS = 1000  # above the exact-path threshold (8 x 64), so search runs the ANN
FILES = (CURRENT_NAME, MANIFEST_NAME, DOCS_NAME, TOKENS_NAME, TOKEN_DOC_NAME, TOKEN_INDEX_NAME)

Outcome = tuple[tuple[tuple[str, float, str | None, Any], ...], ...]


def _build(path: Path, kind: str = "ivf-flat") -> tuple[list[str], list[np.ndarray]]:
    ids, vectors = synthetic_corpus(N_DOCS, 32, seed=11)
    meta = [{"topic": i % 7, "name": f"n{i}"} for i in range(N_DOCS)]
    texts = [f"text of {ext} " * (1 + i % 5) for i, ext in enumerate(ids)]
    Index.from_vectors(path, ids, vectors, texts=texts, metadata=meta, index_kind=kind).close()
    return ids, vectors


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("pristine") / "idx"
    _, vectors = _build(path)
    return path, synthetic_queries(vectors, 4, seed=3)


def _outcome(path: Path, queries: list[np.ndarray], *, verify: bool) -> Outcome:
    """Search the way users do: ANN path, text and metadata, with and without a filter."""
    with Index.open(path, verify=verify) as index:
        calls = []
        real = TokenIndex.search_with_lists  # every token search goes through it

        def spy(self: TokenIndex, *args: Any, **kw: Any) -> Any:
            calls.append(1)
            return real(self, *args, **kw)

        with patch.object(TokenIndex, "search_with_lists", spy):
            plain = index.search_batch(queries, k=5, text=True, metadata=True)
            filtered = index.search_batch(queries, k=5, filter={"topic": 3})
        assert calls, "the ANN path did not run"
    return tuple(
        tuple((h.external_id, round(h.score, 5), h.text, h.metadata) for h in hits)
        for hits in [*plain, *filtered]
    )


def _damaged_copy(src: Path, dst: Path, name: str, damage: Callable[[bytearray], bytes]) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    target = data_path(dst, name)
    target.write_bytes(damage(bytearray(target.read_bytes())))


def _flip(offset: int, bit: int) -> Callable[[bytearray], bytes]:
    def damage(data: bytearray) -> bytes:
        data[offset % len(data)] ^= 1 << bit
        return bytes(data)

    return damage


def _cut(length: int) -> Callable[[bytearray], bytes]:
    return lambda data: bytes(data[: min(length, len(data) - 1)])


def _damage_loop(
    pristine: tuple[Path, list[np.ndarray]], tmp_path: Path, name: str, flips: int, cuts: int
) -> dict[str, int]:
    src, queries = pristine
    expected = _outcome(src, queries, verify=True)
    size = data_path(src, name).stat().st_size
    # crc32, not hash(): str hashes change with every process, and CI must replay the
    # same damages that passed here
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    damages = [_flip(int(rng.integers(size)), int(rng.integers(8))) for _ in range(flips)]
    damages += [_cut(n) for n in range(min(cuts, size))]
    counts = {"corrupt": 0, "identical": 0}
    for i, damage in enumerate(damages):
        dst = tmp_path / "damaged"
        _damaged_copy(src, dst, name, damage)
        try:
            got = _outcome(dst, queries, verify=bool(i % 2))
        except CorruptIndex as exc:
            assert name.split("@")[0] in str(exc), (name, str(exc))
            counts["corrupt"] += 1
            continue
        # SieIndexError other than CorruptIndex, or any other exception, fails here
        assert got == expected, f"damage {i} to {name} changed results silently"
        counts["identical"] += 1
    assert counts["corrupt"] + counts["identical"] == len(damages)
    return counts


@pytest.mark.parametrize("name", FILES)
def test_damage_to_any_file_is_caught_or_harmless(
    pristine: tuple[Path, list[np.ndarray]], tmp_path: Path, name: str
) -> None:
    counts = _damage_loop(pristine, tmp_path, name, flips=12, cuts=4)
    assert counts["corrupt"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", FILES)
def test_hundreds_of_flips_and_every_short_truncation(
    pristine: tuple[Path, list[np.ndarray]], tmp_path: Path, name: str
) -> None:
    counts = _damage_loop(pristine, tmp_path, name, flips=300, cuts=64)
    print(f"{name}: {counts}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flat", "ivf-pq", "hnsw"])
def test_flips_in_indexes_of_every_kind(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    _, vectors = _build(src, kind)
    pristine = (src, synthetic_queries(vectors, 4, seed=3))
    for name in FILES:
        _damage_loop(pristine, tmp_path, name, flips=40, cuts=8)


# -- the same on an index that has changed in place -----------------------------------

LIVING_FILES = (
    MANIFEST_NAME,
    "deleted.i64",
    f"{TOKEN_INDEX_NAME}@0",
    "trained.faiss@0",
    f"{DOCS_NAME}@1",
    f"{TOKENS_NAME}@1",
    f"{TOKEN_DOC_NAME}@1",
    "tokens.codes@1",
    "tokens.codes@2",
)


@pytest.fixture(scope="module")
def living(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """An index after an add, a delete, an upsert and a compaction, then more changes:
    three segments, deleted documents, codes appended to the trained index."""
    path = tmp_path_factory.mktemp("living") / "idx"
    ids, vectors = _build(path)
    more_ids, more = synthetic_corpus(300, 32, seed=12)
    with Index.open(path) as index:
        index.delete(ids[:100])
        index.compact()
        meta = [{"topic": i % 7, "name": f"m{i}"} for i in range(300)]
        texts = [f"more text {i}" for i in range(300)]
        index.add_vectors(
            [f"m-{e}" for e in more_ids[:200]], more[:200], texts=texts[:200], metadata=meta[:200]
        )
        index.delete(ids[100:150] + [f"m-{e}" for e in more_ids[:20]])
        index.add_vectors(
            [f"m-{e}" for e in more_ids[100:300]],
            more[100:300],
            texts=texts[100:300],
            metadata=meta[100:300],
            replace=True,
        )
        assert index.info()["segments"] == 3
    return path, synthetic_queries(vectors + more, 4, seed=3)


@pytest.mark.parametrize("name", LIVING_FILES)
def test_damage_to_a_changed_index_is_caught_or_harmless(
    living: tuple[Path, list[np.ndarray]], tmp_path: Path, name: str
) -> None:
    _damage_loop(living, tmp_path, name, flips=8, cuts=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", LIVING_FILES)
def test_hundreds_of_flips_in_a_changed_index(
    living: tuple[Path, list[np.ndarray]], tmp_path: Path, name: str
) -> None:
    counts = _damage_loop(living, tmp_path, name, flips=150, cuts=32)
    print(f"changed index, {name}: {counts}")


# -- the failures of the first index, one by one --------------------------------------


def test_a_changed_external_id_is_caught(tmp_path: Path) -> None:
    """One flipped character in a stored id used to turn the top hit d107 into d106."""
    path = tmp_path / "idx"
    _build(path)
    with sqlite3.connect(data_path(path, DOCS_NAME)) as db:
        db.execute("UPDATE documents SET external_id = 'doc-00106x' WHERE doc_id = 107")
    with pytest.raises(CorruptIndex, match=r"docs\.sqlite.*row 107"):
        Index.open(path)


def test_a_set_deleted_flag_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _build(path)
    with sqlite3.connect(data_path(path, DOCS_NAME)) as db:
        db.execute("UPDATE documents SET deleted = 1 WHERE doc_id = 5")
    with pytest.raises(CorruptIndex, match=r"docs\.sqlite"):
        Index.open(path)


def test_changed_text_is_caught_when_read(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _, vectors = _build(path)
    with sqlite3.connect(data_path(path, DOCS_NAME)) as db:
        db.execute("UPDATE documents SET text = 'forged' WHERE doc_id = 3")
    with Index.open(path) as index:
        index.search(vectors[3], k=1)  # ids and scores do not depend on the text
        with pytest.raises(CorruptIndex, match="text or metadata of document row 3"):
            index.search(vectors[3], k=1, text=True)


def test_a_manifest_edited_without_its_checksum_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _build(path)
    manifest = gen_dir(path) / MANIFEST_NAME
    raw = json.loads(manifest.read_text())
    raw["token_index"]["nlist"] = 1
    manifest.write_text(json.dumps(raw))
    with pytest.raises(CorruptIndex, match=r"manifest\.json does not match its checksum"):
        Index.open(path)


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        (lambda raw: raw["token_index"].update(nlist=1), CorruptIndex, "do not fit together"),
        (
            lambda raw: raw["token_index"].update(nlist=1, factory="IVF1,Flat"),
            CorruptIndex,
            "lists",
        ),
        (lambda raw: raw.update(format_version=1.0), FormatVersionMismatch, "1.0"),
        (lambda raw: raw.update(format_version=True), FormatVersionMismatch, "True"),
        (lambda raw: raw["encoder"].pop("model"), CorruptIndex, "encoder.model"),
        (lambda raw: raw.update(extra=1), CorruptIndex, "unknown fields"),
        (lambda raw: raw.update(documents=-1), CorruptIndex, "documents"),
        (lambda raw: raw.update(documents=N_DOCS + 1), CorruptIndex, "hold 1000 documents"),
        (lambda raw: raw.update(tokens=raw["tokens"] - 1), CorruptIndex, "tokens"),
        (lambda raw: raw.update(dim=16), CorruptIndex, "projection.f32"),
        (lambda raw: raw.update(dim=64), CorruptIndex, "below the stored dim"),
        (lambda raw: raw.update(dim="32"), CorruptIndex, "dim"),
        (lambda raw: raw["segments"][0]["files"].pop(TOKENS_NAME), CorruptIndex, "files"),
        (lambda raw: raw["segments"][0]["files"].pop(TOKEN_INDEX_NAME), CorruptIndex, "files"),
        (lambda raw: raw["segments"][0].update(doc_base=1), CorruptIndex, "doc_base"),
        (lambda raw: raw.update(live_documents=N_DOCS - 1), CorruptIndex, "deleted"),
        (lambda raw: raw.update(codec="pq"), CorruptIndex, "codec"),
        (lambda raw: raw["token_index"].update(kind="annoy"), CorruptIndex, "annoy"),
        (lambda raw: raw["token_index"].update(kind="flat"), CorruptIndex, "token_index"),
        (lambda raw: raw.update(generation=9), CorruptIndex, "another generation"),
    ],
)
def test_the_manifest_is_validated_field_by_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], error: type, needle: str
) -> None:
    """Even a manifest whose checksum was forged to match is checked in full."""
    path = tmp_path / "idx"
    _build(path)
    rewrite_manifest(path, change)
    with pytest.raises(error, match=needle.replace(".", r"\.")):
        Index.open(path)


def test_the_commit_pointer_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _build(path)
    raw = json.loads((path / CURRENT_NAME).read_text())
    raw["generation"] = 2
    (path / CURRENT_NAME).write_text(json.dumps(raw))
    with pytest.raises(CorruptIndex, match="CURRENT does not match its own checksum"):
        Index.open(path)


def test_no_verify_defers_the_vector_check_to_the_first_read(tmp_path: Path) -> None:
    """verify=False used to skip every check of tokens.f16 (a top score became 14,297)."""
    path = tmp_path / "idx"
    _, vectors = _build(path)
    target = data_path(path, TOKENS_NAME)
    data = bytearray(target.read_bytes())
    data[1000] ^= 0x7C
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match=r"tokens\.f16"):
        Index.open(path)  # verify=True checks it now
    index = Index.open(path, verify=False)  # opens fast ...
    with pytest.raises(CorruptIndex, match=r"tokens\.f16 does not match its checksum"):
        index.search(vectors[0], k=3)  # ... and the first read checks it
    index.close()


def test_the_searcher_keeps_the_token_map_mapped(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _build(path)
    with Index.open(path) as index:
        token_doc = index._searcher.token_doc
        assert token_doc.dtype == np.int32
        assert not token_doc.flags.owndata and not token_doc.flags.writeable


def test_damage_never_escapes_as_a_raw_error(tmp_path: Path) -> None:
    """A database with a torn page, and a FAISS file of garbage, are CorruptIndex."""
    path = tmp_path / "idx"
    _build(path)
    db = data_path(path, DOCS_NAME)
    data = bytearray(db.read_bytes())
    data[4096 : 4096 + 64] = b"\xff" * 64  # the second page, a b-tree page
    db.write_bytes(bytes(data))
    with pytest.raises(SieIndexError) as info:
        Index.open(path)
    assert isinstance(info.value, CorruptIndex) and DOCS_NAME in str(info.value)


def test_bytes_that_are_no_longer_utf8_are_corrupt_index(tmp_path: Path) -> None:
    """A flipped bit in stored SQL or a stored id can leave bytes that do not decode:
    Python's sqlite3 raises UnicodeDecodeError for those, which once escaped raw
    (CI, a flip in the schema's SQL of a changed index)."""
    path = tmp_path / "idx"
    _, vectors = _build(path)
    pristine = tmp_path / "pristine"
    shutil.copytree(path, pristine)
    db = data_path(path, DOCS_NAME)
    data = bytearray(db.read_bytes())
    at = data.index(b"CREATE TABLE documents") + len("CREATE")
    data[at] = 0xDF  # a lead byte followed by "T": an invalid continuation
    db.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match=r"(?i)docs\.sqlite.*utf-8"):
        Index.open(path)

    def undecodable(column: str) -> None:  # a fresh copy whose row 9 holds b"f\xdfA"
        shutil.rmtree(path)
        shutil.copytree(pristine, path)
        with sqlite3.connect(data_path(path, DOCS_NAME)) as conn:
            conn.execute(
                f"UPDATE documents SET {column} = CAST(X'66DF41' AS TEXT) WHERE doc_id = 9"
            )

    undecodable("external_id")
    with pytest.raises(CorruptIndex, match=r"(?i)docs\.sqlite.*utf-8"):
        Index.open(path)
    undecodable("text")
    with Index.open(path, verify=False) as index:
        index.search(vectors[9], k=1)  # ids and scores do not read the text
        with pytest.raises(CorruptIndex, match=r"(?i)docs\.sqlite.*utf-8"):
            index.search(vectors[9], k=1, text=True)


def test_the_search_connection_cannot_write_and_a_runaway_filter_is_stopped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "idx"
    _build(path)
    with Index.open(path) as index:
        docs = StoreSnapshot.open(index.path).docs
        for hostile in ("1); DELETE FROM documents; --", "(SELECT load_extension('x'))"):
            with pytest.raises(InvalidInput):
                docs.doc_ids_where(Predicate(hostile))
        runaway = (
            "doc_id IN (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            "SELECT x FROM c WHERE x < 0)"
        )
        with pytest.raises(InvalidInput, match="time budget"):
            docs.doc_ids_where(Predicate(runaway), budget_s=0.2)
        assert len(docs.doc_ids_where(Predicate("1"))) == N_DOCS  # nothing was deleted
    assert sorted(p.name for p in gen_dir(path).iterdir()) == sorted(
        ["lease", MANIFEST_NAME, "deleted.i64"]
    )
    assert sorted(p.name for p in data_path(path, DOCS_NAME).parent.iterdir()) == sorted(
        [DOCS_NAME, TOKENS_NAME, TOKEN_DOC_NAME, TOKEN_INDEX_NAME, "trained.faiss"]
    )  # no -wal / -shm / -journal left by the reader


def test_the_token_index_streams_to_faiss_a_verified_block_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening hands FAISS the token index file block by block, each block checked
    before any of its bytes is served (storage/fsio.py VerifiedBlocks): the file is
    never read whole (it was held three times over), the index answers as before,
    and a flipped byte stops the read at its block, nothing of it served."""
    from storage import fsio, snapshot, vectors

    block = 4096  # small blocks, so the file has many; writer and reader agree on it
    monkeypatch.setattr(fsio, "BLOCK_SIZE", block)
    monkeypatch.setattr(vectors, "BLOCK_SIZE", block)
    ids, vecs = synthetic_corpus(300, 32, seed=3)
    path = tmp_path / "idx"
    with Index.from_vectors(path, ids, vecs, index_kind="ivf-flat") as index:
        queries = synthetic_queries(vecs, 3, seed=4)
        want = [[(h.id, h.score) for h in index.search(Q, k=5)] for Q in queries]
    size = data_path(path, TOKEN_INDEX_NAME).stat().st_size
    assert size > 20 * block
    served: list[int] = []
    whole: list[str] = []
    read, read_verified = fsio.VerifiedBlocks.read, snapshot._read_verified

    def spy_read(self: fsio.VerifiedBlocks, n: int) -> bytes:
        out = read(self, n)
        served.append(len(out))
        return out

    def spy_whole(dir_fd: int, name: str, *args: Any) -> bytes:
        whole.append(name)
        return read_verified(dir_fd, name, *args)

    monkeypatch.setattr(fsio.VerifiedBlocks, "read", spy_read)
    monkeypatch.setattr(snapshot, "_read_verified", spy_whole)
    with Index.open(path) as index:
        got = [[(h.id, h.score) for h in index.search(Q, k=5)] for Q in queries]
    assert got == want
    assert TOKEN_INDEX_NAME not in whole and sum(served) == size
    assert max(served) <= block  # a block at most: never more than one verified block held
    # damage in block 7: the read stops there, the 7 blocks before it served, none of it
    target = data_path(path, TOKEN_INDEX_NAME)
    raw = bytearray(target.read_bytes())
    raw[7 * block + 100] ^= 0x40
    target.write_bytes(bytes(raw))
    served.clear()
    with pytest.raises(
        CorruptIndex, match=r"tokens\.faiss does not match its checksum \(block 7\)"
    ):
        Index.open(path)
    assert sum(served) == 7 * block
