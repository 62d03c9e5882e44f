"""The filter language: typed conditions on metadata and ids, compiled to SQL.

A filter is a JSON-shaped mapping (the same in Python, in ``--filter-json`` and
in ``delete_where``)::

    {"section": "devel"}                            equality (the shorthand)
    {"year": {"$gte": 2020, "$lt": 2024}}           ranges: $gt $gte $lt $lte
    {"lang": {"$in": ["en", "de"]}}                 $in, $nin, $eq, $ne
    {"author.name": {"$exists": True}}              dotted paths reach nested fields
    {"$or": [{"a": 1}, {"$not": {"b": 2}}]}         $and, $or, $not
    {"$ids": ["vim", "emacs"]}                      external ids (``ids=`` in search)

Several keys in one mapping must all hold. Conditions are typed as JSON is:
``1`` matches the numbers 1 and 1.0 but not ``true`` or ``"1"``; ``None``
matches a JSON ``null`` only; a missing field matches nothing but ``$ne``,
``$nin``, ``$exists: false`` and ``$not``. Values are JSON scalars (NumPy
scalars count as their Python values); ranges compare numbers with numbers and
strings with strings.

Keys and values may not hold a NUL or a lone surrogate, as stored values may
not (:mod:`storage.values`). The compiled predicate never holds a key or a
value: both are bound parameters (a key that SQLite's JSON paths cannot spell,
one with a ``"``, a backslash or non-ASCII text, is matched by ``json_each``
instead). ``filter_sql`` is a raw condition on a row of the ``documents`` table,
kept as an explicit escape hatch; storage runs every predicate so that it can
only select that table's rows, within one time budget for the whole index
(:mod:`storage.predicate`), and a ``filter_sql`` must give each row true, false
or NULL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sie_index.errors import InvalidInput
from storage import Predicate, check_condition, check_text, plain_json

__all__ = ["CompiledFilter", "compile_filter", "parse_where", "plain_value"]

MAX_DEPTH = 32
MAX_NODES = 10_000
_RANGE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIELD_OPS = {"$eq", "$ne", "$in", "$nin", "$exists", *_RANGE_OPS}
_LOGIC_OPS = {"$and", "$or", "$not", "$ids"}
_NUMBER_TYPES = "('integer','real')"


@dataclass(frozen=True)
class CompiledFilter:
    """A predicate over the ``documents`` table, as storage runs it."""

    predicate: Predicate
    key: str
    """A canonical text of the filter: equal filters have equal keys."""
    fields: tuple[str, ...] = ()
    """The metadata fields (dotted paths) the filter names."""


def plain_value(value: Any, where: str) -> Any:
    """A filter value as a plain JSON scalar (NumPy scalars become Python values);
    NaN, Inf, lists and non-JSON types raise :class:`InvalidInput` (the check
    stored metadata gets), and so do integers past SQLite's 64 bits."""
    out = plain_json(value, where)
    if isinstance(out, int) and not -(2**63) <= out < 2**63:
        raise InvalidInput(f"{where}: {out} does not fit in 64 bits (SQLite's integers)")
    if isinstance(out, dict | list):
        kind = type(out).__name__
        raise InvalidInput(f"{where}: a filter value is one JSON scalar, not a {kind}")
    return out


def _path_safe(key: str) -> bool:
    """Whether a key reads the same in a SQLite JSON path as in stored JSON (printable
    ASCII that JSON does not escape)."""
    return key.isascii() and key.isprintable() and '"' not in key and "\\" not in key


class _Compiler:
    def __init__(self) -> None:
        self.params: list[Any] = []
        self.nodes = 0
        self.fields: dict[str, None] = {}  # an ordered set

    # -- fields -------------------------------------------------------------------

    @staticmethod
    def _segments(field: str) -> list[str]:
        if not field or len(field) > 1024:
            raise InvalidInput(f"filter field {field!r} must be 1 to 1,024 characters")
        check_text(field, f"filter field {field!r}")
        segments = field.split(".")
        if any(not s for s in segments):
            raise InvalidInput(f"filter field {field!r} has an empty part between dots")
        return segments

    def _source(self, segments: list[str], what: str) -> str:
        """SQL giving the JSON type (``what='type'``) or value (``'value'``) at a path
        of the metadata; NULL where the path does not exist."""
        if all(_path_safe(s) for s in segments):
            self.params.append("$" + "".join(f'."{s}"' for s in segments))
            fn = "json_type" if what == "type" else "json_extract"
            return f"{fn}(metadata, ?)"
        # SQLite's JSON paths compare a key with its escaped JSON text and cannot
        # quote a '"': walk the objects with json_each, whose keys are unescaped
        joins, conds = [], []
        for n, seg in enumerate(segments):
            parent = "metadata" if n == 0 else f"j{n - 1}.value"
            joins.append(f"json_each({parent}) AS j{n}")
            conds.append(f"j{n}.key = ?")
            self.params.append(seg)
            if n < len(segments) - 1:
                conds.append(f"j{n}.type = 'object'")
        last = len(segments) - 1
        column = "type" if what == "type" else "atom"
        # only fixed names and placeholders are formatted in; keys are bound
        sql = f"SELECT j{last}.{column} FROM {', '.join(joins)} WHERE {' AND '.join(conds)}"  # noqa: S608
        return f"({sql})"

    def _typed(self, segments: list[str], value: Any, op: str) -> str:
        """``field <op> value`` where the field's JSON type is that of ``value``."""
        if value is None or isinstance(value, bool):  # only ever "=" (ranges refuse them)
            name = "null" if value is None else "true" if value else "false"
            return f"{self._source(segments, 'type')} = '{name}'"
        types = "('text')" if isinstance(value, str) else _NUMBER_TYPES
        t = self._source(segments, "type")
        v = self._source(segments, "value")
        self.params.append(value)
        return f"({t} IN {types} AND {v} {op} ?)"

    def _in(self, segments: list[str], values: Any, where: str) -> str:
        if not isinstance(values, list | tuple):
            raise InvalidInput(f"{where}: $in and $nin take a list of values")
        plain = [plain_value(v, where) for v in values]
        parts = []
        for kind, types in (("str", "('text')"), ("num", _NUMBER_TYPES)):
            group = [
                v
                for v in plain
                if (isinstance(v, str) if kind == "str" else type(v) in (int, float))
            ]
            if group:
                t = self._source(segments, "type")
                v = self._source(segments, "value")
                self.params.append(json.dumps(group))
                parts.append(f"({t} IN {types} AND {v} IN (SELECT value FROM json_each(?)))")  # noqa: S608
        for special in (None, True, False):
            if any(v is special for v in plain):
                parts.append(self._typed(segments, special, "="))
        return "(" + " OR ".join(parts) + ")" if parts else "0"

    def _field(self, field: str, cond: Any, depth: int) -> str:
        segments = self._segments(field)
        self.fields[field] = None
        where = f"filter field {field!r}"
        if not isinstance(cond, Mapping):
            if isinstance(cond, list | tuple | set):
                raise InvalidInput(
                    f"{where}: equality takes one value; use {{'$in': [...]}} for several"
                )
            return self._leaf(self._typed(segments, plain_value(cond, where), "="))
        if not cond:
            raise InvalidInput(f"{where}: an empty condition")
        parts = []
        for op, value in cond.items():
            self._count(depth)
            at = f"{where}, {op}"
            if op not in _FIELD_OPS:
                raise InvalidInput(
                    f"{at}: not an operator (fields take {', '.join(sorted(_FIELD_OPS))}; "
                    "nested fields are reached with dotted paths, 'a.b')"
                )
            if op in ("$eq", "$ne"):
                sql = self._leaf(self._typed(segments, plain_value(value, at), "="))
                parts.append(sql if op == "$eq" else f"NOT {sql}")
            elif op in ("$in", "$nin"):
                sql = self._leaf(self._in(segments, value, at))
                parts.append(sql if op == "$in" else f"NOT {sql}")
            elif op == "$exists":
                if not isinstance(value, bool | np.bool_):
                    raise InvalidInput(f"{at} takes true or false")
                test = "IS NOT NULL" if value else "IS NULL"
                parts.append(f"({self._source(segments, 'type')} {test})")
            else:
                v = plain_value(value, at)
                if not isinstance(v, str) and type(v) not in (int, float):
                    raise InvalidInput(f"{at}: ranges compare numbers or strings")
                parts.append(self._leaf(self._typed(segments, v, _RANGE_OPS[op])))
        return "(" + " AND ".join(parts) + ")"

    @staticmethod
    def _leaf(sql: str) -> str:
        # a missing field makes SQL's comparison NULL; count it as false, so that
        # NOT (and $ne, $nin) turn it into true, as two-valued logic would
        return f"COALESCE({sql}, 0)"

    def _count(self, depth: int) -> None:
        self.nodes += 1
        if depth > MAX_DEPTH:
            raise InvalidInput(f"the filter is nested more than {MAX_DEPTH} levels deep")
        if self.nodes > MAX_NODES:
            raise InvalidInput(f"the filter has more than {MAX_NODES:,} conditions")

    # -- logic ----------------------------------------------------------------------

    def node(self, flt: Any, depth: int = 0) -> str:
        self._count(depth)
        if not isinstance(flt, Mapping):
            raise InvalidInput(
                f"a filter is a mapping such as {{'section': 'devel'}}, not a {type(flt).__name__}"
            )
        parts = []
        for key, value in flt.items():
            if not isinstance(key, str):
                raise InvalidInput(f"filter keys are strings, not {type(key).__name__}")
            if key.startswith("$"):
                parts.append(self._logic(key, value, depth + 1))
            else:
                parts.append(self._field(key, value, depth + 1))
        return "(" + " AND ".join(parts) + ")" if parts else "1"

    def _logic(self, op: str, value: Any, depth: int) -> str:
        if op not in _LOGIC_OPS:
            raise InvalidInput(
                f"{op!r} is not an operator here (at the top: {', '.join(sorted(_LOGIC_OPS))})"
            )
        if op == "$not":
            return f"NOT {self.node(value, depth)}"
        if op == "$ids":
            return self.ids(value)
        if not isinstance(value, list | tuple):
            raise InvalidInput(f"{op} takes a list of filters")
        parts = [self.node(v, depth) for v in value]
        if not parts:
            return "1" if op == "$and" else "0"
        return "(" + f" {op[1:].upper()} ".join(parts) + ")"

    def ids(self, ids: Any) -> str:
        if isinstance(ids, str) or not isinstance(ids, Sequence | set | frozenset):
            raise InvalidInput("ids take a list of document ids, not one string")
        plain = [plain_value(i, "ids") for i in ids]
        if not all(isinstance(i, str) for i in plain):
            raise InvalidInput("document ids are strings")
        self.params.append(json.dumps(sorted(set(plain))))
        return "external_id IN (SELECT value FROM json_each(?))"


def compile_filter(
    flt: Mapping[str, Any] | None = None,
    *,
    ids: Sequence[str] | None = None,
    filter_sql: str | None = None,
) -> CompiledFilter | None:
    """Compile a filter, an id set and a raw predicate (all optional, all must hold)
    to one predicate; None when there is nothing to filter."""
    if isinstance(flt, str):
        raise InvalidInput(
            "a filter is a mapping such as {'section': 'devel'}; a raw SQL predicate "
            "goes in filter_sql="
        )
    compiler = _Compiler()
    parts = []
    if flt is not None:
        parts.append(compiler.node(flt))
    if ids is not None:
        parts.append(compiler.ids(ids))
    sql = " AND ".join(parts)
    if filter_sql is not None:
        raw = check_condition(filter_sql)
        # the raw condition's own value, not AND's truth of it, reaches storage's
        # check that it is a condition (so that filter_sql="text" fails there)
        sql = f"CASE WHEN {sql} THEN ({raw}) ELSE 0 END" if sql else f"({raw})"
    if not sql:
        return None
    key = json.dumps([sql, compiler.params], sort_keys=True)
    return CompiledFilter(Predicate(sql, tuple(compiler.params)), key, tuple(compiler.fields))


_WHERE_OPS = ("!=", ">=", "<=", "=", ">", "<")


def parse_where(clause: str) -> dict[str, Any]:
    """One ``--where`` clause as a filter: ``field=value`` (also ``!=``, ``>``,
    ``>=``, ``<``, ``<=``). The value is read as JSON when it parses as a number,
    ``true``, ``false``, ``null`` or a quoted string, else taken as text:
    ``section=devel``, ``year>=2020``, ``code="007"``."""
    for op in _WHERE_OPS:
        field, sep, raw = clause.partition(op)
        if sep and field.strip() and not any(o in field for o in _WHERE_OPS):
            break
    else:
        raise InvalidInput(f"--where {clause!r}: expected FIELD=VALUE (or !=, >, >=, <, <=)")
    if raw[:1] in ("=", "<", ">", "!"):  # 'year==2021', 'year=>2021': not a value
        raise InvalidInput(
            f"--where {clause!r}: {op + raw[:1]!r} is not an operator (=, !=, >, >=, <, <=; "
            'a text value starting with one is quoted: code="=x")'
        )
    try:
        value = json.loads(raw)
        if isinstance(value, list | dict):
            value = raw
    except ValueError:
        value = raw
    name = {"=": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}[op]
    return {field.strip(): {name: value}}
