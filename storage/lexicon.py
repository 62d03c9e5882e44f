"""The lexical side of a segment: the terms of its documents' text, for BM25.

Tokenizing is SQLite FTS5's own (``porter unicode61 remove_diacritics 2``: Unicode
words, case and diacritics folded, English Porter stems), run on an in-memory FTS5
table and read back through ``fts5vocab``; documents and queries go through the
same code, so a query term is a document term exactly when FTS5 would match them.
Text only ever enters as a bound value, never as FTS5 query syntax: quotes,
``NEAR``, ``*``, ``-`` or ``OR`` in a query are just characters to tokenize.

Why the postings are not an FTS5 table queried with ``MATCH ... ORDER BY bm25()``:
FTS5 scores every matching row in its virtual machine (243 ms a query on
debian-pkgs, where common words match most documents), and ``bm25()`` takes its
statistics from one table, while an index's statistics must be those of its live
documents across every segment and deletion list (so that any sequence of
changes scores like a fresh build). So a segment stores, in its ``docs.sqlite``,
one row a term: the segment-local offsets of the documents holding it and how
often each does, and one row of every document's length in terms; each row
carries a checksum that every read verifies. Scoring (:mod:`sie_index.lexical`)
reads only the query's terms, in NumPy.

A segment's lexicon is written by :func:`write_lexicon` as the segment is
finished, from the text (and the metadata fields the index names) its documents
table stores, so a merge or a compaction, which copies the stored text, writes
the same lexicon a fresh build of the same documents would.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from storage.errors import CorruptIndex, InvalidInput

__all__ = [
    "LEXICON_SCHEMA",
    "TOKENIZER",
    "Postings",
    "check_lexical_fields",
    "lexical_text",
    "query_terms",
    "read_lengths",
    "read_postings",
    "verify_lexicon",
    "write_lexicon",
]

TOKENIZER = "porter unicode61 remove_diacritics 2"
POSTING_DTYPE = np.dtype("<u4")
_LEXICON = """CREATE TABLE lexicon (
    term TEXT PRIMARY KEY,
    docs BLOB NOT NULL,
    tfs BLOB NOT NULL,
    lex_sum INTEGER NOT NULL
)"""
_LENGTHS = """CREATE TABLE lexicon_lengths (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    tokenizer TEXT NOT NULL,
    lengths BLOB NOT NULL,
    lex_sum INTEGER NOT NULL
)"""
LEXICON_SCHEMA = frozenset(
    {
        ("table", "lexicon", _LEXICON),
        ("index", "sqlite_autoindex_lexicon_1", None),
        ("table", "lexicon_lengths", _LENGTHS),
    }
)
"""The tables a segment with a lexicon adds to its documents schema."""
_TERMS_PER_READ = 500  # terms per IN (...) list, under SQLite's variable limit

Postings = tuple[np.ndarray, np.ndarray]
"""A term's postings in one segment: local document offsets (ascending) and counts."""
Query = Callable[[str, Sequence[Any]], list[Any]]


def _digest(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return int.from_bytes(h.digest(), "little", signed=True)


def check_lexical_fields(fields: Any) -> tuple[str, ...] | None:
    """``fields`` as the tuple of metadata field names a lexicon indexes besides the
    text (None: no lexicon); anything else is :class:`InvalidInput`."""
    if fields is None:
        return None
    if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
        raise InvalidInput(f"lexical_fields must be a list of metadata field names, got {fields!r}")
    return tuple(dict.fromkeys(fields))


def lexical_text(text: str | None, metadata_json: str | None, fields: Sequence[str]) -> str:
    """What the lexicon indexes of one document: its text, then the values of the
    metadata ``fields`` it has (strings, numbers, and lists of them; not true or
    false, which are flags, not words), space-joined."""
    parts = [text or ""]
    if fields and metadata_json is not None:
        meta = json.loads(metadata_json)
        if isinstance(meta, dict):
            for name in fields:
                value = meta.get(name)
                items = value if isinstance(value, list) else [value]
                parts.extend(
                    str(v)
                    for v in items
                    if isinstance(v, str | int | float) and not isinstance(v, bool)
                )
    return " ".join(p for p in parts if p)


class _Tokenizer:
    """An in-memory FTS5 table a thread, used only to tokenize."""

    def __init__(self) -> None:
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = tokenizer_table()
        return conn


def tokenizer_table() -> sqlite3.Connection:
    """An in-memory FTS5 table ``t`` (one column ``x``) and its ``fts5vocab``
    instance table ``v``: what documents and queries are tokenized in."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{TOKENIZER}')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
    return conn


_TOKENIZER = _Tokenizer()


def query_terms(text: str) -> list[str]:
    """The terms of a query's text, each as often as it occurs, in term order."""
    conn = _TOKENIZER.connection()
    with conn:
        conn.execute("INSERT INTO t(rowid, x) VALUES (1, ?)", (text,))
        try:
            rows = conn.execute("SELECT term FROM v WHERE doc = 1").fetchall()
        finally:
            conn.execute("DELETE FROM t")
    return [r[0] for r in rows]


def write_lexicon(conn: sqlite3.Connection, fields: Sequence[str], doc_base: int) -> None:
    """Write the lexicon of every document in the ``documents`` table of ``conn``
    (a segment being finished; its ids start at ``doc_base``), in the caller's
    transaction."""
    tok = tokenizer_table()
    try:
        n_docs = 0
        rows = conn.execute("SELECT doc_id, text, metadata FROM documents ORDER BY doc_id")
        for doc_id, text, meta in rows:
            tok.execute(
                "INSERT INTO t(rowid, x) VALUES (?, ?)",
                (doc_id - doc_base, lexical_text(text, meta, fields)),
            )
            n_docs += 1
        lengths = np.zeros(n_docs, POSTING_DTYPE)
        conn.execute(_LEXICON)
        conn.execute(_LENGTHS)
        grouped = tok.execute("SELECT term, doc, COUNT(*) FROM v GROUP BY term, doc")
        term: str | None = None
        docs: list[int] = []
        tfs: list[int] = []
        for t, doc, count in grouped:
            if t != term:
                if term is not None:
                    _insert_term(conn, term, docs, tfs, lengths)
                term, docs, tfs = t, [], []
            docs.append(doc)
            tfs.append(count)
        if term is not None:
            _insert_term(conn, term, docs, tfs, lengths)
        data = lengths.tobytes()
        conn.execute(
            "INSERT INTO lexicon_lengths (id, tokenizer, lengths, lex_sum) VALUES (0, ?, ?, ?)",
            (TOKENIZER, data, _digest(TOKENIZER.encode(), data)),
        )
    finally:
        tok.close()


def _insert_term(
    conn: sqlite3.Connection, term: str, docs: list[int], tfs: list[int], lengths: np.ndarray
) -> None:
    d_arr, f_arr = np.asarray(docs, POSTING_DTYPE), np.asarray(tfs, POSTING_DTYPE)
    lengths[d_arr] += f_arr  # a document appears once in a term's postings
    d, f = d_arr.tobytes(), f_arr.tobytes()
    conn.execute(
        "INSERT INTO lexicon (term, docs, tfs, lex_sum) VALUES (?, ?, ?, ?)",
        (term, d, f, _digest(term.encode("utf-8", "surrogatepass"), d, f)),
    )


def read_lengths(query: Query, n_docs: int, where: str) -> np.ndarray:
    """Every document's length in terms (local order), checksum and size verified."""
    rows = query("SELECT tokenizer, lengths, lex_sum FROM lexicon_lengths WHERE id = 0", ())
    if len(rows) != 1:
        raise CorruptIndex(f"{where}: the lexicon's document lengths are missing")
    tokenizer, data, total = rows[0]
    if (
        not isinstance(tokenizer, str)
        or not isinstance(data, bytes)
        or _digest(tokenizer.encode(), data) != total
    ):
        raise CorruptIndex(f"{where}: the lexicon's document lengths do not match their checksum")
    if tokenizer != TOKENIZER:
        raise CorruptIndex(f"{where}: the lexicon was made by tokenizer {tokenizer!r}")
    if len(data) != n_docs * POSTING_DTYPE.itemsize:
        raise CorruptIndex(f"{where}: the lexicon's lengths are not those of {n_docs} documents")
    return np.frombuffer(data, POSTING_DTYPE).astype(np.int64)


def _checked(term: Any, docs: Any, tfs: Any, total: Any, n_docs: int, where: str) -> Postings:
    if (
        not isinstance(term, str)
        or not isinstance(docs, bytes)
        or not isinstance(tfs, bytes)
        or _digest(term.encode("utf-8", "surrogatepass"), docs, tfs) != total
    ):
        raise CorruptIndex(f"{where}: the lexicon row of term {term!r} does not match its checksum")
    d = np.frombuffer(docs, POSTING_DTYPE)
    f = np.frombuffer(tfs, POSTING_DTYPE)
    if (
        len(docs) % POSTING_DTYPE.itemsize
        or len(d) != len(f)
        or not len(d)
        or int(d[-1]) >= n_docs
        or (len(d) > 1 and not (np.diff(d.astype(np.int64)) > 0).all())
        or not f.all()
    ):
        raise CorruptIndex(f"{where}: the postings of term {term!r} are not those of its documents")
    return d.astype(np.int64), f.astype(np.float64)


def read_postings(
    query: Query, terms: Iterable[str], n_docs: int, where: str
) -> dict[str, Postings]:
    """The postings of those ``terms`` the segment has, each row verified."""
    wanted = sorted(set(terms))
    out: dict[str, Postings] = {}
    for start in range(0, len(wanted), _TERMS_PER_READ):
        chunk = wanted[start : start + _TERMS_PER_READ]
        marks = ",".join("?" * len(chunk))
        rows = query(
            f"SELECT term, docs, tfs, lex_sum FROM lexicon WHERE term IN ({marks})",  # noqa: S608
            chunk,
        )
        for term, docs, tfs, total in rows:
            out[term] = _checked(term, docs, tfs, total, n_docs, where)
    return out


def verify_lexicon(query: Query, n_docs: int, where: str) -> None:
    """Check every row of a segment's lexicon, and that the postings sum to the lengths."""
    lengths = read_lengths(query, n_docs, where)
    seen = np.zeros(n_docs, np.int64)
    after = ""  # FTS5 makes no empty term
    while True:  # keyset pages, each checked and let go
        rows = query(
            "SELECT term, docs, tfs, lex_sum FROM lexicon WHERE term > ? ORDER BY term LIMIT 2000",
            (after,),
        )
        if not rows:
            break
        for term, docs, tfs, total in rows:
            d, f = _checked(term, docs, tfs, total, n_docs, where)
            np.add.at(seen, d, f.astype(np.int64))
        after = rows[-1][0]
    if not np.array_equal(seen, lengths):
        raise CorruptIndex(f"{where}: the lexicon's postings do not add up to its lengths")
