"""Running a filter predicate over one segment's documents, and nothing more.

A :class:`Predicate` is a condition on one row of the ``documents`` table
(:mod:`storage.docstore`) with its bound parameters: what the filter language
compiles to, or the raw ``filter_sql`` a user wrote. Whatever its text, running
it can only select rows of that table, within a deadline:

- its text must be one complete expression (:func:`check_condition`): quotes
  closed, parentheses balanced and never closing one it did not open, and no
  ``;`` or comment marker outside a quoted string, so it cannot end the
  statement it is put in or hide the rest of it;
- the statement is ``SELECT doc_id FROM documents WHERE <the condition>``, and
  an authorizer lets it read the ``documents`` table and the JSON functions'
  tables and call plain functions, nothing else;
- each row's value must be true (1), false (0) or NULL; text or another number
  is an :class:`InvalidInput` naming the document (``filter_sql="text"`` is a
  mistake, not a condition);
- a watchdog interrupts the statement when the deadline passes, and no string or
  blob may grow past a limit (one giant ``randomblob`` fails at once);
- every id it returns is checked against the segment's id range.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import CorruptIndex, InvalidInput
from storage.values import check_text

__all__ = [
    "FILTER_BUDGET_S",
    "MIN_VALUE_BYTES",
    "Predicate",
    "check_condition",
    "matching_ids",
]

FILTER_BUDGET_S = 10.0
"""How long one filter may run, over all the segments of an index together."""
MIN_VALUE_BYTES = 64 * 1024 * 1024
"""The longest string or blob a predicate may make (more where a stored value is longer)."""

_NOT_A_CONDITION = "sie_index_not_a_condition"
_ALLOWED_TABLES = frozenset({"documents", "json_each", "json_tree"})
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile"})
# SQLite's primary result codes that mean the file itself is bad, not the query.
_DAMAGE_CODES = {10, 11, 26}  # SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_NOTADB
_TOOBIG = 18
_JSON_TABLES_SETUP = "SELECT 1 FROM json_each('[]'), json_tree('[]')"


@dataclass(frozen=True)
class Predicate:
    """A condition on one row of the ``documents`` table (its columns ``doc_id``,
    ``external_id``, ``text``, ``metadata`` as JSON text, ...) and the values of its
    ``?`` placeholders. Checked as it is made (:func:`check_condition`)."""

    sql: str
    params: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        check_condition(self.sql)
        object.__setattr__(self, "params", tuple(self.params))


def _closing(sql: str, start: int, quote: str) -> int:
    """Where the quoted string or name opened at ``start`` ends (a doubled quote is
    one quote character inside it), or -1 when it is never closed."""
    end = "]" if quote == "[" else quote
    at = start + 1
    while True:
        found = sql.find(end, at)
        if found < 0 or end == "]" or sql[found + 1 : found + 2] != end:
            return found
        at = found + 2


def check_condition(sql: Any, what: str = "filter_sql") -> str:
    """``sql`` when it is one complete SQL expression that cannot reach outside the
    parentheses it is put in; else :class:`InvalidInput` saying why."""
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidInput(f"{what} must be a non-empty SQL condition, not {sql!r}")
    check_text(sql, what)
    depth = 0
    at = 0
    while at < len(sql):
        char = sql[at]
        if char in "'\"`[":
            end = _closing(sql, at, char)
            if end < 0:
                raise InvalidInput(f"{what} opens a {char} at position {at} and never closes it")
            at = end + 1
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise InvalidInput(
                    f"{what} closes a parenthesis at position {at} that it did not open"
                )
        elif char == ";" or sql.startswith(("--", "/*"), at):
            mark = ";" if char == ";" else sql[at : at + 2]
            raise InvalidInput(
                f"{what} holds {mark!r} at position {at}: a condition is one expression, "
                "without statements or comments"
            )
        at += 1
    if depth:
        raise InvalidInput(f"{what} leaves {depth} parenthesis(es) open")
    return sql


def _authorize(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
    """Reads of the documents table (and the JSON functions' tables), selects and
    plain functions; anything else is refused as the statement is prepared."""
    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_READ and arg1 in _ALLOWED_TABLES:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() not in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class _NotACondition(Exception):
    """Raised inside SQLite by the statement's check of a row's value."""


def matching_ids(
    conn: sqlite3.Connection,
    predicate: Predicate,
    *,
    ids: range,
    deadline: float,
    value_bytes: int,
    path: Path,
) -> np.ndarray:
    """The ``doc_id`` of every row of ``conn``'s documents table for which
    ``predicate`` is true, all within ``ids``, ascending.

    The caller holds ``conn`` for the call. ``deadline`` is a ``time.monotonic()``
    instant; ``value_bytes`` the longest stored value, which the limit on made
    values must let through. A predicate that cannot run, runs past the deadline,
    makes a value too long or gives a row a value other than true, false or NULL
    is :class:`InvalidInput`; a damaged file is :class:`CorruptIndex`.
    """
    check_condition(predicate.sql)
    budget_left = deadline - time.monotonic()
    if budget_left <= 0:
        raise InvalidInput("the filter ran past its time budget (before this segment)")
    bad_row: list[int] = []

    def not_a_condition(doc_id: int) -> int:
        bad_row.append(doc_id)
        raise _NotACondition

    sql = (
        "SELECT doc_id FROM documents WHERE CASE coalesce(("  # noqa: S608 - checked above
        + predicate.sql
        + f"), 0) WHEN 0 THEN 0 WHEN 1 THEN 1 ELSE {_NOT_A_CONDITION}(documents.doc_id) END"
    )
    limit = max(MIN_VALUE_BYTES, value_bytes + 1024)
    done = threading.Lock()
    finished = False

    def interrupt() -> None:  # the watchdog; never after the statement is over
        with done:
            if not finished:
                conn.interrupt()

    watchdog = threading.Timer(budget_left, interrupt)
    conn.create_function(_NOT_A_CONDITION, 1, not_a_condition)
    # a JSON table's first use on a connection runs SQLite's own setup statements,
    # which an authorizer would refuse: make it before one is set
    conn.execute(_JSON_TABLES_SETUP).fetchall()
    old_limit = conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)
    conn.set_authorizer(_authorize)
    rows: list[Any] = []
    error: sqlite3.Error | None = None
    try:
        watchdog.start()
        rows = conn.execute(sql, predicate.params).fetchall()
    except UnicodeError as exc:
        raise CorruptIndex(f"{path} cannot be read: {exc}") from exc
    except sqlite3.Error as exc:
        error = exc
    finally:
        with done:
            finished = True
        watchdog.cancel()
        conn.set_authorizer(None)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, old_limit)
    if error is not None:
        raise _mapped(conn, error, predicate, bad_row, deadline, limit, path) from error
    found = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if len(found) and (found.min() < ids.start or found.max() >= ids.stop):
        raise InvalidInput(
            f"the filter {predicate.sql!r} selected an id outside the documents of {path}"
        )
    return found


def _mapped(
    conn: sqlite3.Connection,
    exc: sqlite3.Error,
    predicate: Predicate,
    bad_row: list[int],
    deadline: float,
    limit: int,
    path: Path,
) -> Exception:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    shown = predicate.sql if len(predicate.sql) <= 200 else predicate.sql[:197] + "..."
    if code in _DAMAGE_CODES:
        return CorruptIndex(f"{path} cannot be read: {exc}")
    if bad_row:
        return InvalidInput(
            f"the filter {shown!r} is not a condition: it gives this document a value "
            "other than true (1), false (0) or NULL; compare it with something "
            "(e.g. 'length(text) > 10')",
            doc_id=_external_id(conn, bad_row[0]),
        )
    if time.monotonic() >= deadline:
        return InvalidInput(f"the filter {shown!r} ran past its time budget")
    if code == _TOOBIG:
        return InvalidInput(
            f"the filter {shown!r} makes a string or blob longer than {limit:,} bytes"
        )
    return InvalidInput(f"the filter {shown!r} cannot be evaluated: {exc}")


def _external_id(conn: sqlite3.Connection, doc_id: int) -> str:
    """The external id of a row, for an error message (its internal id if unreadable)."""
    try:
        row = conn.execute(
            "SELECT external_id FROM documents WHERE doc_id = ?", [doc_id]
        ).fetchone()
    except (sqlite3.Error, UnicodeError):
        row = None
    return str(row[0]) if row else f"#{doc_id}"
