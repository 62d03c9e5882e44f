"""What a stored document value may be: the one check every write passes.

Ids, texts and metadata are stored in SQLite as TEXT and read back by its JSON
functions (filters, ``$ids``), which end a string at a NUL character; and a lone
surrogate (``"\\ud800"``) has no UTF-8 form at all. So a NUL or a lone
surrogate anywhere in an id, a text, a metadata key or a metadata value would
make one value read as another (``"a\\x00b"`` as ``"a"``): they are refused
here, and so are metadata values JSON cannot hold (NaN, Inf, bytes, sets).
:class:`storage.segment.PendingDoc` calls :func:`check_document` as it is
made, before any row or vector of its batch is written, so every writer (a
build, an add, an upsert, a compaction) goes through it. Filters check their values with
the same functions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from storage.errors import InvalidInput

__all__ = [
    "MAX_METADATA_DEPTH",
    "check_document",
    "check_external_id",
    "check_text",
    "plain_json",
]

MAX_METADATA_DEPTH = 64
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_text(value: str, where: str, doc_id: str | None = None) -> str:
    """``value`` when SQLite and its JSON functions keep it whole: no NUL and no lone
    surrogate; else :class:`InvalidInput` naming ``where`` and the document."""
    found = _UNSTORABLE.search(value)
    if found is not None:
        char = found.group()
        what = "a NUL character" if char == "\x00" else f"a lone surrogate {char!r}"
        # the message shows ids with repr, which escapes the character itself
        raise InvalidInput(f"{where} holds {what} at position {found.start()}", doc_id=doc_id)
    return value


def check_external_id(value: Any) -> str:
    """A document id as stored: a non-empty string that :func:`check_text` accepts."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(
            f"a document id must be a non-empty string, not {type(value).__name__} {value!r}"
        )
    return check_text(value, "the document id", value)


def plain_json(value: Any, where: str, doc_id: str | None = None, depth: int = 0) -> Any:
    """``value`` as plain JSON data: objects with string keys, lists (tuples too),
    strings, finite numbers, booleans and null; NumPy scalars become their Python
    values. Anything else, and a key or string :func:`check_text` refuses, raises
    :class:`InvalidInput` naming the document and where in the value it is."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return check_text(value, where, doc_id)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where} is {value}, not a finite number", doc_id=doc_id)
        return value
    if depth >= MAX_METADATA_DEPTH:
        raise InvalidInput(f"{where} is nested over {MAX_METADATA_DEPTH} levels", doc_id=doc_id)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(
                    f"{where} has a key {key!r} of type {type(key).__name__}; keys are strings",
                    doc_id=doc_id,
                )
            check_text(key, f"a key of {where}", doc_id)
            out[key] = plain_json(item, f"{where}[{key!r}]", doc_id, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [plain_json(v, f"{where}[{i}]", doc_id, depth + 1) for i, v in enumerate(value)]
    raise InvalidInput(
        f"{where} is a {type(value).__name__}, not a JSON type (object, list, string, "
        "number, true, false, null)",
        doc_id=doc_id,
    )


def check_document(external_id: Any, text: Any, metadata: Any) -> str | None:
    """Check one document's stored values; return its metadata as the JSON text
    SQLite will hold (None for no metadata). Raises :class:`InvalidInput` naming
    the document and what is wrong."""
    ext = check_external_id(external_id)
    if text is not None:
        if not isinstance(text, str):
            raise InvalidInput(
                f"the text must be a string or None, not {type(text).__name__}", doc_id=ext
            )
        check_text(text, "the text", ext)
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidInput(
            f"metadata must be a mapping, not a {type(metadata).__name__}", doc_id=ext
        )
    return json.dumps(plain_json(metadata, "metadata", ext), allow_nan=False)
