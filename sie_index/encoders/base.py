"""The encoder protocol, the encoder spec, and the check every encoder output passes.

An encoder turns texts into multivectors: one float32 ``[n_tokens, dim]`` array
per text, rows L2-normalized and finite. Documents and queries may be encoded
differently (markers, lengths, expansion), hence two methods.

The :class:`EncoderSpec` names what produced an index's vectors. It is stored
in the manifest, and search refuses a query encoder whose spec does not match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sie_index.errors import DimensionMismatch, EncoderMismatch, EncoderProtocolError

__all__ = ["Encoder", "EncoderSpec", "check_encoder_output", "l2_normalize"]


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """What produced a set of vectors.

    ``kind`` is the implementation (``token-states``, ``colbert``, ``sie``,
    ``precomputed``), ``model`` the model's name, ``dim`` the vector dimension,
    ``options`` the settings that change what the vectors mean (lengths, markers,
    weights fingerprint): a query encoder must agree on all of these.
    ``runtime`` records how the vectors were computed without changing what they
    mean (bf16 autocast, the SIE server's URL, the wire dtype, a checkpoint's
    path), so a build can be reproduced from its manifest; it is never compared.
    """

    kind: str
    model: str
    dim: int
    options: Mapping[str, Any] = field(default_factory=dict)
    runtime: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "dim": self.dim,
            "options": dict(self.options),
            "runtime": dict(self.runtime),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EncoderSpec:
        return cls(
            kind=str(raw["kind"]),
            model=str(raw["model"]),
            dim=int(raw["dim"]),
            options=dict(raw.get("options", {})),
            runtime=dict(raw.get("runtime", {})),
        )

    def check_query_encoder(self, other: EncoderSpec) -> None:
        """Raise unless ``other`` can encode queries for an index built with this spec.

        A different dimension raises :class:`DimensionMismatch`. An index of
        precomputed vectors takes any query encoder of its dimension; otherwise
        kind, model and options must agree too, or :class:`EncoderMismatch` is
        raised. ``runtime`` (server URL, bf16, paths) is never compared.
        """
        if other.dim != self.dim:
            raise DimensionMismatch(
                f"the query encoder {other.model!r} gives {other.dim}-dim vectors, "
                f"the index holds {self.dim}-dim vectors from {self.model!r}"
            )
        if self.kind == "precomputed":
            return
        if (other.kind, other.model, dict(other.options)) != (
            self.kind,
            self.model,
            dict(self.options),
        ):
            raise EncoderMismatch(
                f"the query encoder ({other.kind} {other.model!r}, options {dict(other.options)}) "
                f"is not the encoder the index was built with ({self.kind} {self.model!r}, "
                f"options {dict(self.options)}); open the index with a matching encoder"
            )


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns texts into multivectors."""

    @property
    def spec(self) -> EncoderSpec: ...

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]: ...


@runtime_checkable
class TokenTexts(Protocol):
    """An encoder that can say which token each vector row stands for (for
    explanations): ``token_texts(texts, is_query=...)`` gives, per text, one string
    per row that encoding it returns, without running the model."""

    def token_texts(self, texts: Sequence[str], *, is_query: bool) -> list[list[str]]: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf stay visible to the checks
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        normalized: np.ndarray = x / np.maximum(norms, np.finfo(np.float32).tiny)
    return normalized


def check_encoder_output(
    outputs: Sequence[Any], n_expected: int, dim: int, *, who: str
) -> list[np.ndarray]:
    """Check what an encoder returned: count, 2-D float arrays of ``dim`` columns,
    at least one row each, finite. Raises :class:`EncoderProtocolError` naming the item."""
    if len(outputs) != n_expected:
        raise EncoderProtocolError(f"{who} returned {len(outputs)} results for {n_expected} inputs")
    checked = []
    for i, out in enumerate(outputs):
        arr = np.asarray(out)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != dim or arr.dtype.kind != "f":
            raise EncoderProtocolError(
                f"{who} result {i} has shape {arr.shape} and dtype {arr.dtype}; "
                f"expected float [n_tokens >= 1, {dim}]"
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise EncoderProtocolError(f"{who} result {i} holds NaN or Inf values")
        checked.append(arr)
    return checked
