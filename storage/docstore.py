"""``docs.sqlite``: the document maps, through sqlite-utils.

One row per document: the dense internal ``doc_id`` (also the row's position in
the span arrays), the user's ``external_id``, text, metadata (JSON), and the
document's token span ``[token_start, token_start + token_count)`` in the
token-vector store. SQLite is the source of truth: a document exists when its
row is committed. Each batch is one transaction (:meth:`DocStore.insert_batch`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from sie_index.errors import CorruptIndex, InvalidInput

__all__ = ["DOCS_NAME", "DocRow", "DocSpans", "DocStore", "StoredDoc"]

DOCS_NAME = "docs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL UNIQUE,
    text TEXT,
    metadata TEXT,
    token_start INTEGER NOT NULL,
    token_count INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True, kw_only=True)
class DocRow:
    """A document ready to be committed, with its token span already assigned."""

    doc_id: int
    external_id: str
    text: str | None
    metadata: Mapping[str, Any] | None
    token_start: int
    token_count: int


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


class DocStore:
    """The SQLite document maps of one index folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    @classmethod
    def create(cls, path: Path) -> DocStore:
        """Create an empty store at ``path`` (WAL mode)."""
        store = cls(path)
        db = store.db
        db.conn.execute("PRAGMA journal_mode=WAL")
        db.conn.executescript(_SCHEMA)
        return store

    @classmethod
    def open(cls, path: Path) -> DocStore:
        """Open an existing store, checking that it is a document store."""
        if not Path(path).is_file():
            raise CorruptIndex(f"{path} is missing from the index folder")
        store = cls(path)
        try:
            tables = set(store.db.table_names())
        except sqlite3.DatabaseError as exc:
            raise CorruptIndex(f"{path} is not a readable SQLite database: {exc}") from exc
        if not {"documents", "meta"} <= tables:
            raise CorruptIndex(f"{path} has no documents table")
        return store

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection (sqlite3 connections stay in their thread)."""
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(str(self.path), timeout=30.0)
            conn.execute("PRAGMA busy_timeout=30000")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def insert_batch(self, rows: Sequence[DocRow], generation: int) -> None:
        """Commit ``rows`` in one transaction; a duplicate external id commits nothing."""
        records = [
            {
                "doc_id": r.doc_id,
                "external_id": r.external_id,
                "text": r.text,
                "metadata": None if r.metadata is None else json.dumps(r.metadata),
                "token_start": r.token_start,
                "token_count": r.token_count,
                "deleted": 0,
                "generation": generation,
            }
            for r in rows
        ]
        db = self.db
        try:
            with db.atomic():
                db.table("documents").insert_all(records, batch_size=1000)
        except sqlite3.IntegrityError as exc:
            dup = self.first_existing([r.external_id for r in rows])
            raise InvalidInput(
                "duplicate document id: it is already in the index", doc_id=dup
            ) from exc

    def first_existing(self, external_ids: Sequence[str]) -> str | None:
        seen: set[str] = set()
        for ext in external_ids:
            if ext in seen:
                return ext
            seen.add(ext)
        for ext in external_ids:
            row = self.db.execute("SELECT 1 FROM documents WHERE external_id = ?", [ext]).fetchone()
            if row is not None:
                return ext
        return None

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def set_meta(self, values: Mapping[str, str]) -> None:
        db = self.db
        with db.atomic():
            db.table("meta").upsert_all(
                [{"key": k, "value": v} for k, v in values.items()], pk="key"
            )

    def spans(self, limit_doc_id: int | None = None) -> DocSpans:
        """Spans of documents ``0 .. limit_doc_id-1`` (all when None), checked to be dense."""
        sql = "SELECT doc_id, token_start, token_count, deleted FROM documents"
        params: list[int] = []
        if limit_doc_id is not None:
            sql += " WHERE doc_id < ?"
            params.append(limit_doc_id)
        rows = np.array(self.db.execute(sql + " ORDER BY doc_id", params).fetchall(), np.int64)
        rows = rows.reshape(-1, 4)
        if len(rows) and not np.array_equal(rows[:, 0], np.arange(len(rows))):
            raise CorruptIndex(f"{self.path}: document ids are not dense")
        return DocSpans(
            token_start=np.ascontiguousarray(rows[:, 1]),
            token_count=np.ascontiguousarray(rows[:, 2]),
            deleted=rows[:, 3].astype(bool),
        )

    def fetch(
        self, doc_ids: Iterable[int], *, text: bool = False, metadata: bool = False
    ) -> dict[int, StoredDoc]:
        """Read documents by internal id; absent ids are left out."""
        ids = [int(i) for i in doc_ids]
        if not ids:
            return {}
        cols = "doc_id, external_id, " + ("text" if text else "NULL")
        cols += ", " + ("metadata" if metadata else "NULL")
        out: dict[int, StoredDoc] = {}
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {cols} FROM documents WHERE doc_id IN ({marks})"  # noqa: S608
            for doc_id, ext, txt, meta in self.db.execute(sql, chunk).fetchall():
                out[int(doc_id)] = StoredDoc(
                    doc_id=int(doc_id),
                    external_id=ext,
                    text=txt,
                    metadata=None if meta is None else json.loads(meta),
                )
        return out

    def doc_ids_where(self, where: str, params: Sequence[Any] = ()) -> np.ndarray:
        """Internal ids of documents matching an SQL predicate over the documents table.

        ``metadata`` is JSON text, so ``json_extract(metadata, '$.lang') = ?`` works.
        A predicate SQLite cannot run raises :class:`InvalidInput`.
        """
        sql = f"SELECT doc_id FROM documents WHERE ({where})"  # noqa: S608
        try:
            rows = self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise InvalidInput(f"filter {where!r} cannot be evaluated: {exc}") from exc
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
