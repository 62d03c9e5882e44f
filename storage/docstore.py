"""``docs.sqlite``: the document maps, written by :class:`DocWriter`, read by :class:`DocReader`.

One file per segment (:mod:`storage.segment`). One row per document: the
dense internal ``doc_id`` (global: a segment's ids follow the previous
segment's; also the row's position in the span arrays), the user's
``external_id``, text, metadata (JSON), and the document's token span
``[token_start, token_start + token_count)`` in the token-vector store. A
segment's rows are committed batch by batch, one transaction each; the
segment counts once a generation names it (:mod:`storage.commit`). The
``deleted`` column is 0 when a row is written: deletes are the generation's
list (:mod:`storage.deletions`), since segments are never written again; only a
merge (:mod:`storage.merging`), copying a document that list already holds,
writes it as 1, so the copy holds no live external id.

Every row carries two checksums, because SQLite checks its page structure but
not the values in it (``PRAGMA integrity_check`` passes when a stored id or a
flag has changed): ``span_sum`` covers the id, external id, span, deleted flag
and generation, and every row's is verified when a reader opens the database;
``doc_sum`` covers text and metadata, verified whenever they are read. A
mismatch, a damaged page, or a schema other than ours is :class:`CorruptIndex`
naming the file.

A pooled index (the layer above merges similar token vectors of a document into
one) stores fewer vectors than its documents had tokens; which original tokens
each stored vector merged is kept, for explanations, in a second table,
``token_sources``: one row per pooled document (a document whose every vector is
one token has none), its ``sources`` the
stored row, within the document, of each original token in order (little-endian
uint32), under its own checksum. It lives here, not in a file of its own, so it
commits, resumes, merges and compacts with the document row it belongs to; a
segment with no pooled document has no such table, so an unpooled index's file
is what it always was.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from storage.build_journal import BATCHES_TABLE, BatchRecord
from storage.errors import CorruptIndex, InvalidInput, read_failure
from storage.lexicon import (
    LEXICON_SCHEMA,
    Postings,
    read_lengths,
    read_postings,
    verify_lexicon,
    write_lexicon,
)
from storage.predicate import Predicate, matching_ids

__all__ = [
    "DOCS_NAME",
    "SOURCE_DTYPE",
    "DocReader",
    "DocRow",
    "DocSpans",
    "DocWriter",
    "StoredDoc",
    "check_sources",
    "sources_digest",
]

DOCS_NAME = "docs.sqlite"

_DOCUMENTS = """CREATE TABLE documents (
    doc_id INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL,
    text TEXT,
    metadata TEXT,
    token_start INTEGER NOT NULL,
    token_count INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL,
    span_sum INTEGER NOT NULL,
    doc_sum INTEGER NOT NULL
)"""
_LIVE_IDS = "CREATE UNIQUE INDEX live_external_id ON documents (external_id) WHERE deleted = 0"
_INSERT = (
    "INSERT INTO documents (doc_id, external_id, text, metadata, token_start, token_count, "
    "deleted, generation, span_sum, doc_sum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_META = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)"
_BATCHES = """CREATE TABLE build_batches (
    first_doc INTEGER PRIMARY KEY,
    docs INTEGER NOT NULL,
    token_start INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    input_digest TEXT NOT NULL,
    rows_sha256 TEXT NOT NULL
)"""
"""A journaled build's batch records (:mod:`storage.build_journal`), committed with
each batch's rows and dropped when the segment is finished: no reader sees it."""
_SCHEMA = {
    ("table", "documents", _DOCUMENTS),
    ("index", "live_external_id", _LIVE_IDS),
    ("table", "meta", _META),
    ("index", "sqlite_autoindex_meta_1", None),
}
_SOURCES_TABLE = "token_sources"
_SOURCES = """CREATE TABLE token_sources (
    doc_id INTEGER PRIMARY KEY,
    sources BLOB NOT NULL,
    sources_sum INTEGER NOT NULL
)"""
SOURCE_DTYPE = np.dtype("<u4")
_SCHEMA_POOLED = _SCHEMA | {("table", _SOURCES_TABLE, _SOURCES)}
_SPAN_COLS = "doc_id, external_id, token_start, token_count, deleted, generation, span_sum"
_CHUNK = 900  # ids per IN (...) list, under SQLite's default variable limit


def _digest(data: str) -> int:
    raw = hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)


def span_digest(
    doc_id: int, external_id: str, start: int, count: int, deleted: int, generation: int
) -> int:
    """The checksum of a row's identity and span (the external id last, so it is unambiguous)."""
    return _digest(f"{doc_id}:{start}:{count}:{deleted}:{generation}:{external_id}")


def doc_digest(doc_id: int, text: str | None, metadata: str | None) -> int | None:
    """The checksum of a row's text and metadata JSON (None and empty kept apart)."""
    if not isinstance(text, str | None) or not isinstance(metadata, str | None):
        return None  # a value SQLite gives back as another type is damage: never matches
    head = f"{doc_id}:{-1 if text is None else len(text)}:{text or ''}"
    return _digest(head + ("N" if metadata is None else "M" + metadata))


def sources_digest(doc_id: int, data: bytes) -> int:
    """The checksum of a pooled document's ``sources`` blob."""
    raw = hashlib.blake2b(f"{doc_id}:".encode() + data, digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)


def check_sources(sources: np.ndarray, count: int) -> bool:
    """Whether ``sources`` (one stored row per original token) describes ``count``
    stored rows: every value one of them, and every one of them some token's."""
    if sources.ndim != 1 or len(sources) < count or count < 1:
        return False
    if len(sources) and (int(sources.min()) < 0 or int(sources.max()) >= count):
        return False
    return bool(len(np.unique(sources)) == count)


@dataclass(frozen=True, kw_only=True)
class DocRow:
    """A document ready to be committed, with its token span already assigned; its
    values were checked as its :class:`storage.segment.PendingDoc` was made."""

    doc_id: int
    external_id: str
    text: str | None
    metadata_json: str | None
    token_start: int
    token_count: int
    deleted: bool = False
    """Set only by a merge copying a document the generation already lists as deleted
    (so the copy does not hold its external id against the live one that replaced it)."""
    sources: bytes | None = None
    """A pooled document's ``token_sources`` blob (see the module's docstring)."""


@dataclass(frozen=True, kw_only=True)
class StoredDoc:
    """A committed document as read back."""

    doc_id: int
    external_id: str
    text: str | None
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class DocSpans:
    """Token spans of every document, indexed by ``doc_id``."""

    token_start: np.ndarray  # int64 [n_docs]
    token_count: np.ndarray  # int64 [n_docs]
    deleted: np.ndarray  # bool [n_docs]


class DocWriter:
    """The document maps of a generation being built (one writer, one connection)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)

    @classmethod
    def create(cls, path: Path, *, journaled: bool = False) -> DocWriter:
        """Create an empty store at ``path`` (``journaled``: with a batch-record table)."""
        store = cls(path)
        with store.db.atomic():
            for statement in (_DOCUMENTS, _LIVE_IDS, _META, *([_BATCHES] if journaled else [])):
                store.db.execute(statement)
        return store

    def batch_records(self) -> list[BatchRecord] | None:
        """The batch records of a journaled build, in order; None when the store has none."""
        tables = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", [BATCHES_TABLE]
        ).fetchall()
        if not tables:
            return None
        rows = self.db.execute(
            "SELECT first_doc, docs, token_start, tokens, input_digest, rows_sha256 "
            "FROM build_batches ORDER BY first_doc"
        ).fetchall()
        return [
            BatchRecord(
                first_doc=r[0],
                docs=r[1],
                token_start=r[2],
                tokens=r[3],
                input_digest=r[4],
                rows_sha256=r[5],
            )
            for r in rows
        ]

    def cut_from(self, first_doc: int) -> None:
        """Remove, in one transaction, every document (and batch record) from ``first_doc`` on."""
        with self.db.atomic():
            self.db.execute("DELETE FROM documents WHERE doc_id >= ?", [first_doc])
            self.db.execute("DELETE FROM build_batches WHERE first_doc >= ?", [first_doc])
            if self._has_sources():
                self.db.execute("DELETE FROM token_sources WHERE doc_id >= ?", [first_doc])

    def _has_sources(self) -> bool:
        return bool(
            self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [_SOURCES_TABLE]
            ).fetchall()
        )

    def insert_batch(
        self, rows: Sequence[DocRow], generation: int, *, batch: BatchRecord | None = None
    ) -> None:
        """Commit ``rows`` (and a journaled build's ``batch`` record) in one transaction;
        a duplicate external id commits nothing."""
        records = []
        for r in rows:
            meta = r.metadata_json
            records.append(
                (
                    r.doc_id,
                    r.external_id,
                    r.text,
                    meta,
                    r.token_start,
                    r.token_count,
                    int(r.deleted),
                    generation,
                    span_digest(
                        r.doc_id,
                        r.external_id,
                        r.token_start,
                        r.token_count,
                        int(r.deleted),
                        generation,
                    ),
                    doc_digest(r.doc_id, r.text, meta),
                )
            )
        pooled = [
            (r.doc_id, r.sources, sources_digest(r.doc_id, r.sources))
            for r in rows
            if r.sources is not None
        ]
        db = self.db
        try:
            with db.atomic():  # one transaction; a plain executemany, not row dicts
                db.conn.executemany(_INSERT, records)
                if pooled:
                    if not self._has_sources():
                        db.execute(_SOURCES)
                    db.conn.executemany("INSERT INTO token_sources VALUES (?, ?, ?)", pooled)
                if batch is not None:
                    db.execute(
                        "INSERT INTO build_batches VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            batch.first_doc,
                            batch.docs,
                            batch.token_start,
                            batch.tokens,
                            batch.input_digest,
                            batch.rows_sha256,
                        ],
                    )
        except sqlite3.IntegrityError as exc:
            dup = self.first_existing([r.external_id for r in rows])
            raise InvalidInput(
                "duplicate document id: it is already in the index", doc_id=dup
            ) from exc

    def first_existing(self, external_ids: Sequence[str]) -> str | None:
        """The first of ``external_ids`` that repeats or is already a live document."""
        seen: set[str] = set()
        for ext in external_ids:
            if ext in seen:
                return ext
            seen.add(ext)
        for ext in external_ids:
            row = self.db.execute(
                "SELECT 1 FROM documents WHERE external_id = ? AND deleted = 0", [ext]
            ).fetchone()
            if row is not None:
                return ext
        return None

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def finish(
        self,
        meta: Mapping[str, str],
        *,
        lexical_fields: Sequence[str] | None = None,
        doc_base: int = 0,
    ) -> None:
        """Record ``meta`` (dropping a journaled build's batch records, which no reader
        knows) and, unless ``lexical_fields`` is None, the lexicon of the stored text
        and those metadata fields (:mod:`storage.lexicon`); then close: the file is
        complete (rollback journal, no WAL)."""
        with self.db.atomic():
            self.db.execute("DROP TABLE IF EXISTS build_batches")
            if lexical_fields is not None:
                write_lexicon(self.db.conn, lexical_fields, doc_base)
            self.db.table("meta").upsert_all(
                [{"key": k, "value": v} for k, v in meta.items()], pk="key"
            )
        self.close()

    def close(self) -> None:
        self.db.close()


_READ_ERRORS = (sqlite3.Error, UnicodeError)
"""What a read of a damaged file raises: SQLite's errors, and the decode error of a
TEXT value (a stored id, a text, the schema's own SQL) whose bytes are no longer
UTF-8, which Python's sqlite3 raises as it is, not as an ``sqlite3.Error``."""


class DocReader:
    """Read-only access to the document maps of one committed generation.

    One connection, opened once and shared by every thread (under a lock), so an
    open index keeps reading the file it opened whatever happens on disk. The
    generation is never written again (``immutable``: no locks, no journal).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro&immutable=1"
        self._lock = threading.Lock()
        self._content_verified = False
        self._longest_value = 0
        try:
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._conn.execute("PRAGMA query_only=1")
            schema = set(self._query("SELECT type, name, sql FROM sqlite_master"))
        except _READ_ERRORS as exc:
            raise read_failure(
                exc, f"{self.path} is not a readable SQLite database: {exc}"
            ) from exc
        lexical = schema & LEXICON_SCHEMA
        if schema - lexical not in (_SCHEMA, _SCHEMA_POOLED) or lexical not in (
            set(),
            LEXICON_SCHEMA,
        ):
            raise CorruptIndex(f"{self.path} does not hold the documents schema of sie-index")
        self.lexical = bool(lexical)
        """Whether the file holds a lexicon (:mod:`storage.lexicon`)."""
        schema -= lexical
        page_size, pages = (self._query(f"PRAGMA {p}")[0][0] for p in ("page_size", "page_count"))
        self.size = int(page_size) * int(pages)
        """Bytes of the database file."""
        self.pooled = schema == _SCHEMA_POOLED
        """Whether the file holds pooled documents' token sources."""

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read; any SQLite error here means the file is damaged."""
        try:
            with self._lock:
                return self._conn.execute(sql, params).fetchall()
        except _READ_ERRORS as exc:
            raise CorruptIndex(f"{self.path} cannot be read: {exc}") from exc

    def _damaged(self, what: str) -> CorruptIndex:
        return CorruptIndex(f"{self.path}: {what} does not match its row checksum")

    def _check_span_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        for doc_id, ext, start, count, deleted, gen, total in rows:
            if not isinstance(ext, str) or span_digest(doc_id, ext, start, count, deleted, gen) != (
                total
            ):
                raise self._damaged(f"document row {doc_id}")

    def spans(self, n_docs: int, doc_base: int = 0) -> DocSpans:
        """Spans of documents ``doc_base .. doc_base + n_docs - 1`` (every document of
        the file), every row's checksum verified."""
        return self.spans_and_ids(n_docs, doc_base)[0]

    def spans_and_ids(self, n_docs: int, doc_base: int = 0) -> tuple[DocSpans, list[str]]:
        """:meth:`spans` and every document's external id, from one checked pass."""
        rows = self._query(f"SELECT {_SPAN_COLS} FROM documents ORDER BY doc_id")  # noqa: S608
        if len(rows) != n_docs:
            raise CorruptIndex(
                f"{self.path} holds {len(rows)} documents, the manifest says {n_docs}"
            )
        self._check_span_rows(rows)
        arr = np.array([(r[0], r[2], r[3], r[4]) for r in rows], np.int64).reshape(-1, 4)
        if (
            not np.array_equal(arr[:, 0], np.arange(doc_base, doc_base + len(arr)))
            or not np.isin(arr[:, 3], (0, 1)).all()
        ):
            raise CorruptIndex(f"{self.path}: document ids are not dense")
        spans = DocSpans(
            token_start=np.ascontiguousarray(arr[:, 1]),
            token_count=np.ascontiguousarray(arr[:, 2]),
            deleted=arr[:, 3].astype(bool),
        )
        return spans, [r[1] for r in rows]

    def fetch(
        self, doc_ids: Iterable[int], *, text: bool = False, metadata: bool = False
    ) -> dict[int, StoredDoc]:
        """Read documents by internal id, checksums verified; absent ids are left out."""
        ids = [int(i) for i in doc_ids]
        body = text or metadata
        cols = _SPAN_COLS + (", text, metadata, doc_sum" if body else "")
        out: dict[int, StoredDoc] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {cols} FROM documents WHERE doc_id IN ({marks})"  # noqa: S608
            rows = self._query(sql, chunk)
            self._check_span_rows(r[:7] for r in rows)
            for row in rows:
                doc_id, ext = int(row[0]), row[1]
                txt = meta = None
                if body:
                    txt, meta, total = row[7:]
                    if doc_digest(doc_id, txt, meta) != total:
                        raise self._damaged(f"the text or metadata of document row {doc_id}")
                try:
                    meta_obj = json.loads(meta) if metadata and meta is not None else None
                except ValueError as exc:  # pragma: no cover - the checksum caught damage
                    raise self._damaged(f"the metadata of document row {doc_id}") from exc
                out[doc_id] = StoredDoc(
                    doc_id=doc_id,
                    external_id=ext,
                    text=txt if text else None,
                    metadata=meta_obj,
                )
        return out

    def sources(self, doc_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The token sources of the pooled documents among ``doc_ids`` (the stored
        row, within the document, of each original token), checksums verified and
        checked against the documents' spans; a document not pooled is left out."""
        ids = [int(i) for i in doc_ids]
        out: dict[int, np.ndarray] = {}
        if not self.pooled:
            return out
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                "SELECT s.doc_id, s.sources, s.sources_sum, d.token_count "  # noqa: S608
                "FROM token_sources s JOIN documents d ON d.doc_id = s.doc_id "
                f"WHERE s.doc_id IN ({marks})",
                chunk,
            )
            out.update(self._checked_sources(rows))
        return out

    def _checked_sources(self, rows: Iterable[Sequence[Any]]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for doc_id, data, total, count in rows:
            if not isinstance(data, bytes) or sources_digest(doc_id, data) != total:
                raise self._damaged(f"the token sources of document row {doc_id}")
            if len(data) % SOURCE_DTYPE.itemsize:
                raise self._damaged(f"the token sources of document row {doc_id}")
            sources = np.frombuffer(data, SOURCE_DTYPE).astype(np.int64)
            if not check_sources(sources, int(count)):
                raise CorruptIndex(
                    f"{self.path}: the token sources of document row {doc_id} do not "
                    f"describe its {count} stored vectors"
                )
            out[int(doc_id)] = sources
        return out

    def verify_sources(self) -> None:
        """Check every pooled document's token sources (checksum, and that they describe
        its stored vectors), and that each belongs to a document: what verify runs."""
        if not self.pooled:
            return
        orphans = self._query(
            "SELECT COUNT(*) FROM token_sources WHERE doc_id NOT IN (SELECT doc_id FROM documents)"
        )[0][0]
        if orphans:
            raise CorruptIndex(f"{self.path}: {orphans} token sources belong to no document")
        after = -(2**63)
        while True:  # keyset pages, each checked and let go
            rows = self._query(
                "SELECT s.doc_id, s.sources, s.sources_sum, d.token_count "
                "FROM token_sources s JOIN documents d ON d.doc_id = s.doc_id "
                "WHERE s.doc_id > ? ORDER BY s.doc_id LIMIT ?",
                [after, _CHUNK],
            )
            if not rows:
                return
            self._checked_sources(rows)
            after = rows[-1][0]

    def lexicon_lengths(self, n_docs: int) -> np.ndarray:
        """Every document's length in lexical terms (local order), verified."""
        return read_lengths(self._query, n_docs, str(self.path))

    def postings(self, terms: Iterable[str], n_docs: int) -> dict[str, Postings]:
        """The lexicon's postings of ``terms`` (local offsets), each row verified."""
        return read_postings(self._query, terms, n_docs, str(self.path))

    def verify_lexicon(self, n_docs: int) -> None:
        """Check every row of the lexicon (what verify runs); none to check: a no-op."""
        if self.lexical:
            verify_lexicon(self._query, n_docs, str(self.path))

    def lookup(self, external_ids: Sequence[str]) -> dict[str, int]:
        """Internal ids of the live documents among ``external_ids``."""
        out: dict[str, int] = {}
        for start in range(0, len(external_ids), _CHUNK):
            chunk = list(external_ids[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            sql = (
                f"SELECT {_SPAN_COLS} FROM documents "  # noqa: S608
                f"WHERE external_id IN ({marks}) AND deleted = 0"
            )
            rows = self._query(sql, chunk)
            self._check_span_rows(rows)
            out.update({row[1]: int(row[0]) for row in rows})
        return out

    def external_ids(self) -> list[str]:
        """Every document's external id, in internal-id order, checksums verified."""
        rows = self._query(f"SELECT {_SPAN_COLS} FROM documents ORDER BY doc_id")  # noqa: S608
        self._check_span_rows(rows)
        return [row[1] for row in rows]

    def verify_content(self) -> None:
        """Check every row's text and metadata against its checksum (once per reader).

        Filters read every row's metadata inside SQLite, where a damaged value
        would silently change which documents match; so the first filter checks
        them all, and the file, opened immutable, cannot change afterwards.
        """
        if self._content_verified:
            return
        longest = 0
        after = -(2**63)
        while True:  # keyset pages: damaged ids cannot make this loop long
            rows = self._query(
                "SELECT doc_id, text, metadata, doc_sum, length(external_id) FROM documents "
                "WHERE doc_id > ? ORDER BY doc_id LIMIT ?",
                [after, _CHUNK * 10],
            )
            for doc_id, text, meta, total, ext_chars in rows:
                if doc_digest(doc_id, text, meta) != total:
                    raise self._damaged(f"the text or metadata of document row {doc_id}")
                longest = max(longest, len(text or ""), len(meta or ""), ext_chars or 0)
            if not rows:
                break
            after = rows[-1][0]
        # UTF-8 takes at most 4 bytes a character: what a filter's limit must let through
        self._longest_value = 4 * longest
        self._content_verified = True

    def doc_ids_where(self, predicate: Predicate, *, ids: range, deadline: float) -> np.ndarray:
        """Internal ids of the documents for which ``predicate`` holds; the file's
        documents are ``ids``; ``deadline`` a ``time.monotonic()`` instant (see
        :func:`storage.predicate.matching_ids`: a predicate that cannot run, or runs
        past the deadline, raises :class:`InvalidInput`; a damaged database raises
        :class:`CorruptIndex`, whatever the predicate)."""
        self.verify_content()
        with self._lock:
            return matching_ids(
                self._conn,
                predicate,
                ids=ids,
                deadline=deadline,
                value_bytes=self._longest_value,
                path=self.path,
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
