"""Corpora given as Python objects: Documents, dicts, or plain texts.

PyLate and RAGatouille users hand over their documents as a list of strings or a
list of dicts; ``Index.build``, ``add`` and ``upsert`` take those too. Each item
of the iterable, read once and lazily, is

- a :class:`~sie_index.corpus.Document`, taken as it is;
- a dict, read by the rules of a corpus file's JSON line (:mod:`sie_index.corpus`:
  ``id`` or ``_id``, ``text`` or ``contents``, ``title``, ``metadata``, other
  fields into metadata);
- a string, the text of a document whose id is the item's position in the
  corpus: ``"0"``, ``"1"``, ... (positions count every item, whatever its kind).

A bad item is an :class:`~sie_index.errors.InvalidInput` naming its position
(``corpus[3]``) and its id when known.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from sie_index.corpus import Document, document_of
from sie_index.errors import InvalidInput

__all__ = ["Corpus", "CorpusItem", "documents_of"]

CorpusItem: TypeAlias = Document | Mapping[str, Any] | str
Corpus: TypeAlias = str | Path | Iterable[CorpusItem]
"""What build, add and upsert take: a corpus file or folder, or the items themselves."""


def documents_of(items: Iterable[CorpusItem]) -> Iterator[Document]:
    """The items of an in-memory corpus as Documents, lazily, in order."""
    if isinstance(items, Mapping):
        raise InvalidInput(
            "a corpus is an iterable of documents, not one dict: wrap it in a list ([{...}])"
        )
    for position, item in enumerate(items):
        where = f"corpus[{position}]"
        if isinstance(item, Document):
            yield item
        elif isinstance(item, str):
            yield Document(id=str(position), text=item, source=where)
        elif isinstance(item, Mapping):
            yield document_of(dict(item), where)
        else:
            raise InvalidInput(
                f"is a {type(item).__name__}; a corpus holds sie_index.Document objects, "
                'dicts ({"id", "text", "metadata"}) or texts',
                source=where,
            )
