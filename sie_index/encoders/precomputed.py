"""Multivectors the user already has.

:class:`PrecomputedEncoder` serves document vectors looked up by document id:
from a mapping (``{id: array}``), from a folder of ``<id>.npy`` files, or from
one ``.npz`` archive holding an array per id. Files are read with
``allow_pickle=False``. Queries come from an optional ``query_encoder``; without
one, search takes query vectors directly.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sie_index.encoders.base import Encoder, EncoderSpec, l2_normalize
from sie_index.errors import EncoderUnavailable, InvalidInput

__all__ = ["PrecomputedEncoder"]


class PrecomputedEncoder:
    """An encoder whose document vectors already exist.

    Documents are looked up by their id (``document_key = "id"``: the index
    writer passes ids, not texts). Rows are L2-normalized unless ``normalize``
    is False. ``model`` names where the vectors came from, for the manifest.
    """

    document_key = "id"

    def __init__(
        self,
        vectors: Mapping[str, Any] | str | Path,
        *,
        dim: int | None = None,
        model: str = "precomputed",
        normalize: bool = True,
        query_encoder: Encoder | None = None,
    ) -> None:
        self._npz: Any = None
        self._folder: Path | None = None
        self._mapping: Mapping[str, Any] | None = None
        if isinstance(vectors, str | Path):
            path = Path(vectors)
            if path.is_dir():
                self._folder = path
            elif path.is_file() and zipfile.is_zipfile(path):
                self._npz = np.load(path, allow_pickle=False)
            else:
                raise InvalidInput(f"{path} is neither a folder of .npy files nor an .npz archive")
        else:
            self._mapping = vectors
        self.normalize = normalize
        self.query_encoder = query_encoder
        if dim is None:
            dim = self._infer_dim()
        self._spec = EncoderSpec(
            kind="precomputed", model=model, dim=int(dim), options={"normalize": normalize}
        )

    @property
    def spec(self) -> EncoderSpec:
        return self._spec

    def _infer_dim(self) -> int:
        if self._mapping is not None:
            first = next(iter(self._mapping.values()), None)
        elif self._npz is not None:
            first = self._npz[self._npz.files[0]] if self._npz.files else None
        else:
            assert self._folder is not None
            path = next(iter(sorted(self._folder.glob("*.npy"))), None)
            first = None if path is None else np.load(path, allow_pickle=False, mmap_mode="r")
        arr = None if first is None else np.asarray(first)
        if arr is None or arr.ndim != 2:
            raise InvalidInput("cannot infer the dimension from the precomputed vectors; pass dim=")
        return int(arr.shape[1])

    def _lookup(self, key: str) -> np.ndarray:
        try:
            if self._mapping is not None:
                return np.asarray(self._mapping[key])
            if self._npz is not None:
                return np.asarray(self._npz[key])
        except KeyError as exc:
            raise InvalidInput("no precomputed vectors for this document", doc_id=key) from exc
        assert self._folder is not None
        path = self._folder / f"{key}.npy"
        if "/" in key or key.startswith(".") or not path.is_file():
            raise InvalidInput(f"no precomputed vectors file {path.name}", doc_id=key)
        try:
            return np.asarray(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise InvalidInput(f"{path} cannot be read without pickle: {exc}", doc_id=key) from exc

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Vectors of the documents whose ids are ``texts`` (see ``document_key``)."""
        out = []
        for key in texts:
            arr = self._lookup(key)
            if arr.dtype.kind not in "fiu":
                raise InvalidInput(f"vectors have dtype {arr.dtype}", doc_id=key)
            out.append(l2_normalize(arr) if self.normalize and arr.ndim == 2 else arr)
        return out

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        if self.query_encoder is None:
            raise EncoderUnavailable(
                "this index holds precomputed vectors and has no query encoder: "
                "search with query vectors, or open the index with encoder=..."
            )
        return self.query_encoder.encode_queries(texts)
