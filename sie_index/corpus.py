"""Reading corpora and BEIR evaluation data, strictly and as a stream.

A corpus is JSON lines, plain or gzip-compressed (told apart by the gzip magic
bytes, not the suffix), a BEIR folder holding ``corpus.jsonl[.gz]``, or a TSV
file (``.tsv`` or ``.tsv.gz``: ColBERT's ``collection.tsv``, one ``id<TAB>text``
line a document, an optional third field its title; a first line
``id<TAB>text`` (or ``passage``, ``contents``) is a header). Records are
``{"_id", "title", "text"}`` (BEIR), ``{"id", "text", "metadata"}``, or
Pyserini's ``{"id", "contents"}``:

- The id (``_id`` or ``id``, not both) is a non-empty string; an int is accepted
  and turned into its decimal string. Anything else is an error.
- The text is ``text`` or ``contents`` (not both).
- A non-empty ``title`` is kept in metadata as ``"title"`` and prefixed to the
  text as ``title + "\\n" + text``; a document may then have an empty text.
- Other top-level fields go into metadata, next to the fields of a ``metadata``
  object (which must be an object or null); a name in both is an error.

Every bad line is an :class:`~sie_index.errors.InvalidInput` naming the file,
the 1-based line and the id when known. Lines are read as bytes and decoded
here, so bad UTF-8 is one bad line, not a crash. A damaged gzip stream cannot
be resynchronised and always raises, even in skip mode.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any, Literal, TypeVar

from sie_index.errors import InvalidInput
from storage import check_document, check_text

__all__ = [
    "MAX_LINE_BYTES",
    "BadLine",
    "BeirDataset",
    "CorpusStats",
    "Document",
    "batched",
    "default_split",
    "document_of",
    "load_qrels",
    "load_queries",
    "packaged_dataset",
    "read_documents",
    "resolve_corpus_path",
    "resolve_dataset",
    "validate_corpus",
]

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024 * 1024
"""Longest accepted line, in bytes, not counting the line ending."""

OnError = Literal["raise", "skip"]
T = TypeVar("T")

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_DRAIN_CHUNK = 1 << 20
_RESERVED = frozenset({"_id", "id", "text", "contents", "title", "metadata"})
_TSV_HEADER_TEXTS = frozenset({"text", "passage", "contents"})


@dataclass(frozen=True, kw_only=True, slots=True)
class Document:
    """One corpus record, with where it came from when it came from a file."""

    id: str
    text: str
    metadata: dict[str, Any] | None = None
    source: str | None = None
    line: int | None = None

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"Document(id={self.id!r}, text={text!r}, source={self.source!r}, line={self.line})"


@dataclass(frozen=True, kw_only=True, slots=True)
class BadLine:
    """A line that skip mode left out, and why."""

    source: str
    line: int
    doc_id: str | None
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CorpusStats:
    """What :func:`validate_corpus` found: good documents counted, bad lines listed."""

    documents: int
    bad_lines: list[BadLine] = field(default_factory=list)


def batched(iterable: Iterable[T], n: int) -> Iterator[list[T]]:
    """Yield lists of ``n`` items (the last may be shorter), consuming lazily."""
    if n < 1:
        raise InvalidInput(f"batch size must be at least 1, got {n}")
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch


def resolve_dataset(path: str | Path) -> Path:
    """``path`` itself when it exists, else the shipped dataset of that name (``debian-pkgs``)."""
    p = Path(path)
    if p.exists() or len(p.parts) != 1 or p.suffix:
        return p
    return packaged_dataset(str(path))


def resolve_corpus_path(path: str | Path) -> Path:
    """The corpus file for ``path``: the file itself, a BEIR folder's corpus file, or
    the corpus of a shipped dataset named by ``path``."""
    p = resolve_dataset(path)
    if p.is_dir():
        return _one_of(p, "corpus.jsonl")
    if not p.is_file():
        raise InvalidInput("no such corpus file or folder", source=str(p))
    return p


def read_documents(
    path: str | Path,
    *,
    on_error: OnError = "raise",
    limit: int | None = None,
    bad_lines: list[BadLine] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[Document]:
    """Stream the documents of a JSON-lines corpus or BEIR folder.

    ``on_error="raise"`` raises :class:`InvalidInput` at the first bad line;
    ``"skip"`` yields the good documents and appends a :class:`BadLine` to
    ``bad_lines`` for each bad one (or logs a warning when ``bad_lines`` is None).
    A repeated id is bad at its second occurrence; ids are tracked over the whole
    file. ``limit`` stops after that many good documents. Blank lines are skipped.
    Arguments and the path are checked now; the file is read as you iterate.
    """
    if on_error not in ("raise", "skip"):
        raise InvalidInput(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must be >= 0, got {limit}")
    if max_line_bytes < 1:
        raise InvalidInput(f"max_line_bytes must be positive, got {max_line_bytes}")
    return _documents(resolve_corpus_path(path), on_error, limit, bad_lines, max_line_bytes)


def validate_corpus(
    path: str | Path,
    *,
    on_error: OnError = "skip",
    limit: int | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> CorpusStats:
    """Check a whole corpus without keeping its texts.

    In the default skip mode every bad line is returned; with ``"raise"`` the
    first one raises, as :func:`read_documents` would.
    """
    bad: list[BadLine] = []
    count = sum(
        1
        for _ in read_documents(
            path, on_error=on_error, limit=limit, bad_lines=bad, max_line_bytes=max_line_bytes
        )
    )
    return CorpusStats(documents=count, bad_lines=bad)


def load_queries(path: str | Path) -> dict[str, str]:
    """Read BEIR queries (``{"_id", "text"}`` JSON lines, plain or gzip) strictly.

    Ids follow the corpus rules; the text must be a non-empty string; a repeated
    id is an error. Other fields are ignored.
    """
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for at, record in _records(_existing_file(path), MAX_LINE_BYTES):
        if isinstance(record, InvalidInput):
            raise record
        qid = _record_id(record, at)
        text = _string_field(record, "text", at, qid, required=True)
        if not text.strip():
            raise at.error("query text is empty", qid)
        _check_new(qid, first_line, at, "query id", qid)
        queries[qid] = text
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (``query-id, corpus-id, score``) strictly.

    A first line whose score is not an integer is taken as the header. Every
    other non-blank line needs three tab-separated fields, non-empty ids and an
    integer score; a repeated (query, document) pair is an error.
    """
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[str, int] = {}
    for at, text in _lines(_existing_file(path), MAX_LINE_BYTES):
        if isinstance(text, InvalidInput):
            raise text
        fields = [f.strip() for f in text.split("\t")]
        if len(fields) != 3:
            raise at.error(f"expected 3 tab-separated fields, got {len(fields)}")
        qid, did, raw_score = fields
        try:
            score = int(raw_score)
        except ValueError:
            if at.line == 1:
                continue
            raise at.error(f"score {raw_score!r} is not an integer", did) from None
        if not qid or not did:
            raise at.error("empty query or document id")
        _check_new(f"{qid}\t{did}", first_line, at, "judgement", did)
        qrels.setdefault(qid, {})[did] = score
    return qrels


@dataclass(frozen=True, kw_only=True)
class BeirDataset:
    """A BEIR folder: the corpus file, one split's qrels and the queries they judge."""

    folder: Path
    split: str
    corpus_path: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, folder: str | Path, split: str = "dev") -> BeirDataset:
        """Load ``folder``'s queries and ``qrels/<split>.tsv``; the corpus stays on disk.

        Only queries with judgements in the split are kept; a judged query missing
        from the queries file is an error.
        """
        root = resolve_dataset(folder)
        if not root.is_dir():
            raise InvalidInput("no such BEIR folder", source=str(root))
        if not split or Path(split).name != split or split.startswith("."):
            raise InvalidInput(f"bad split name {split!r}", source=str(root))
        corpus_path = _one_of(root, "corpus.jsonl")
        qrels_path = root / "qrels" / f"{split}.tsv"
        qrels = load_qrels(qrels_path)
        all_queries = load_queries(_one_of(root, "queries.jsonl"))
        missing = sorted(q for q in qrels if q not in all_queries)
        if missing:
            shown = ", ".join(repr(q) for q in missing[:5])
            raise InvalidInput(
                f"{len(missing)} judged queries are not in the queries file: {shown}",
                source=str(qrels_path),
            )
        queries = {q: all_queries[q] for q in qrels}
        return cls(folder=root, split=split, corpus_path=corpus_path, queries=queries, qrels=qrels)

    def documents(self, **kwargs: Any) -> Iterator[Document]:
        """:func:`read_documents` over this dataset's corpus, with the same options."""
        return read_documents(self.corpus_path, **kwargs)


def packaged_dataset(name: str = "debian-pkgs") -> Path:
    """The folder of a BEIR dataset shipped in ``sie_index/data``."""
    data = Path(str(resources.files("sie_index") / "data"))
    available = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    if name not in available:
        raise InvalidInput(
            f"no packaged dataset {name!r}; available: {', '.join(available) or 'none'}"
        )
    return data / name


def default_split(folder: str | Path) -> str:
    """The qrels split a BEIR folder is scored on when none is named: ``dev`` when it
    has one, else its only split; several others (or none) raise :class:`InvalidInput`
    naming what it has."""
    root = resolve_dataset(folder)
    qrels = root / "qrels"
    splits = sorted(p.name[: -len(".tsv")] for p in qrels.glob("*.tsv")) if qrels.is_dir() else []
    if "dev" in splits:
        return "dev"
    if len(splits) == 1:
        return splits[0]
    if not splits:
        raise InvalidInput("no qrels split (qrels/<split>.tsv)", source=str(qrels))
    raise InvalidInput(
        f"{len(splits)} qrels splits and none is dev: {', '.join(splits)}; name one (split=)",
        source=str(qrels),
    )


# --- reading -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _At:
    source: str
    line: int

    def error(self, reason: str, doc_id: str | None = None) -> InvalidInput:
        return InvalidInput(reason, source=self.source, line=self.line, doc_id=doc_id)


def _documents(
    file: Path,
    on_error: OnError,
    limit: int | None,
    bad_lines: list[BadLine] | None,
    max_line_bytes: int,
) -> Iterator[Document]:
    first_line: dict[str, int] = {}
    produced = 0
    if limit == 0:
        return
    records = _tsv_records if _is_tsv(file) else _records
    for at, record in records(file, max_line_bytes):
        try:
            if isinstance(record, InvalidInput):
                raise record
            doc = _document(record, at)
            _check_new(doc.id, first_line, at, "id", doc.id)
        except InvalidInput as err:
            if on_error == "raise":
                raise
            if bad_lines is None:
                logger.warning("skipped bad corpus line: %s", err)
            else:
                bad_lines.append(
                    BadLine(source=at.source, line=at.line, doc_id=err.doc_id, reason=err.reason)
                )
            continue
        yield doc
        produced += 1
        if limit is not None and produced >= limit:
            return


def document_of(record: Any, where: str) -> Document:
    """One record given in memory (a dict with a corpus line's fields) as a
    :class:`Document`, by a corpus line's rules; a bad one is :class:`InvalidInput`
    naming ``where`` (say ``corpus[3]``) and the id when known."""
    try:
        doc = _document(record, _At(where, 0))
    except InvalidInput as err:
        raise InvalidInput(err.reason, source=where, doc_id=err.doc_id) from None
    return Document(id=doc.id, text=doc.text, metadata=doc.metadata, source=where)


def _document(record: Any, at: _At) -> Document:
    doc_id = _record_id(record, at)
    if "text" in record and "contents" in record:
        raise at.error("has both 'text' and 'contents'; give one", doc_id)
    text_key = "contents" if "contents" in record else "text"  # Pyserini names it contents
    text = _string_field(record, text_key, at, doc_id, required=True)
    title = _string_field(record, "title", at, doc_id, required=False)
    meta = record.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise at.error(f"'metadata' must be a JSON object, got {_kind(meta)}", doc_id)
    metadata: dict[str, Any] = dict(meta or {})
    extra = {k: v for k, v in record.items() if k not in _RESERVED}
    if title.strip():
        extra["title"] = title
        text = f"{title}\n{text}"
    if clash := sorted(metadata.keys() & extra.keys()):
        raise at.error(f"field {clash[0]!r} is both a top-level field and in 'metadata'", doc_id)
    if not text.strip():
        raise at.error("text is empty", doc_id)
    metadata.update(extra)
    try:  # what the store would refuse (a NUL, a lone surrogate) is a bad line now
        check_document(doc_id, text, metadata)
    except InvalidInput as err:
        raise at.error(err.reason, doc_id) from None
    return Document(id=doc_id, text=text, metadata=metadata or None, source=at.source, line=at.line)


def _record_id(record: Any, at: _At) -> str:
    if not isinstance(record, dict):
        raise at.error(f"expected a JSON object, got {_kind(record)}")
    if "_id" in record and "id" in record:
        raise at.error("has both '_id' and 'id'; give one")
    key = "_id" if "_id" in record else "id"
    if key not in record:
        raise at.error("missing id ('_id' or 'id')")
    value = record[key]
    # bool is an int subclass; True as an id is almost surely a mistake.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise at.error(f"{key!r} must be a string or an integer, got {_kind(value)}")
    if not value.strip():
        raise at.error(f"{key!r} is empty")
    _check_encodable(value, key, at, None)
    return value


def _string_field(record: dict[str, Any], key: str, at: _At, doc_id: str, *, required: bool) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if key not in record:
        raise at.error(f"missing {key!r}", doc_id)
    if not isinstance(value, str):
        raise at.error(f"{key!r} must be a string, got {_kind(value)}", doc_id)
    _check_encodable(value, key, at, doc_id)
    return value


def _check_encodable(value: str, key: str, at: _At, doc_id: str | None) -> None:
    # JSON's \ud800 and \u0000 escapes decode to characters SQLite cannot keep whole
    try:
        check_text(value, repr(key))
    except InvalidInput as err:
        raise at.error(err.reason, doc_id) from None


def _check_new(
    key: str, first_line: dict[str, int], at: _At, what: str, doc_id: str | None
) -> None:
    first = first_line.setdefault(key, at.line)
    if first != at.line:
        raise at.error(f"duplicate {what}, first seen at line {first}", doc_id)


def _records(file: Path, max_line_bytes: int) -> Iterator[tuple[_At, Any | InvalidInput]]:
    """Parsed JSON values per non-blank line, or the line's error."""
    for at, text in _lines(file, max_line_bytes):
        if isinstance(text, InvalidInput):
            yield at, text
            continue
        try:
            yield at, json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
        except (ValueError, RecursionError) as err:
            yield at, at.error(f"not valid JSON: {err}")


def _is_tsv(file: Path) -> bool:
    return file.name.lower().endswith((".tsv", ".tsv.gz"))


def _tsv_records(file: Path, max_line_bytes: int) -> Iterator[tuple[_At, Any | InvalidInput]]:
    """ColBERT's ``collection.tsv``: ``id<TAB>text[<TAB>title]`` lines as records."""
    for at, text in _lines(file, max_line_bytes):
        if isinstance(text, InvalidInput):
            yield at, text
            continue
        fields = text.split("\t")
        if not 2 <= len(fields) <= 3:
            yield (
                at,
                at.error(
                    f"expected 'id<TAB>text' or 'id<TAB>text<TAB>title', got {len(fields)} "
                    "tab-separated field(s)"
                ),
            )
            continue
        if at.line == 1 and fields[0] in ("id", "pid") and fields[1] in _TSV_HEADER_TEXTS:
            continue  # a header line
        record = {"id": fields[0], "text": fields[1]}
        if len(fields) == 3:
            record["title"] = fields[2]
        yield at, record


def _lines(file: Path, max_line_bytes: int) -> Iterator[tuple[_At, str | InvalidInput]]:
    """Decoded non-blank lines with where they are, or the line's error; never the whole file."""
    source, number = str(file), 0
    try:
        with file.open("rb") as raw:
            stream: io.BufferedIOBase = raw
            if raw.peek(2)[:2] == _GZIP_MAGIC:
                stream = gzip.GzipFile(fileobj=raw)
            with stream:
                while chunk := stream.readline(max_line_bytes + 2):
                    number += 1
                    at = _At(source, number)
                    if number == 1:
                        if chunk[:2] in (b"\xff\xfe", b"\xfe\xff"):
                            raise at.error("file looks UTF-16; convert it to UTF-8")
                        chunk = chunk.removeprefix(_BOM)
                    ended = chunk.endswith(b"\n")
                    body = chunk.rstrip(b"\n").removesuffix(b"\r")
                    if len(body) > max_line_bytes:
                        while not ended and (rest := stream.readline(_DRAIN_CHUNK)):
                            ended = rest.endswith(b"\n")
                        yield at, at.error(f"line is longer than {max_line_bytes} bytes")
                    elif body.strip():
                        try:
                            yield at, body.decode("utf-8")
                        except UnicodeDecodeError as err:
                            yield at, at.error(f"not valid UTF-8 at byte {err.start}")
    except (OSError, EOFError, zlib.error) as err:
        raise InvalidInput(
            f"cannot read (damaged gzip stream or I/O error): {err}",
            source=source,
            line=number or None,
        ) from err


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite(literal: str) -> float:
    """A JSON number with a fraction or exponent, which must fit in a float (``1e400``
    would read as inf, which nothing can store or compare)."""
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal} is too large for a 64-bit float")
    return value


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _one_of(folder: Path, name: str) -> Path:
    plain, packed = folder / name, folder / f"{name}.gz"
    if plain.is_file() and packed.is_file():
        raise InvalidInput(f"both {name} and {name}.gz exist; keep one", source=str(folder))
    if plain.is_file():
        return plain
    if packed.is_file():
        return packed
    raise InvalidInput(f"missing {name} or {name}.gz", source=str(plain))


def _existing_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InvalidInput("no such file", source=str(p))
    return p
