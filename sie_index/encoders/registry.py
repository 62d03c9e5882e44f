"""Encoders by name (for the CLI) and from a stored spec (to encode queries for an index)."""

from __future__ import annotations

from pathlib import Path

from sie_index.encoders.base import Encoder, EncoderSpec
from sie_index.errors import EncoderUnavailable, InvalidInput

__all__ = ["ENCODER_NAMES", "encoder_from_spec", "load_encoder"]

ENCODER_NAMES = ("minilm", "token-states:PATH", "precomputed:PATH")


def load_encoder(name: str) -> Encoder:
    """Make an encoder from a CLI name.

    ``minilm`` (or ``default``): the embedded all-MiniLM-L6-v2 token-state encoder;
    ``token-states:PATH``: the token states of a local model folder;
    ``precomputed:PATH``: vectors from a folder of ``<id>.npy`` files or an ``.npz``.
    """
    from sie_index.encoders.precomputed import PrecomputedEncoder
    from sie_index.encoders.token_states import TokenStatesEncoder

    kind, _, arg = name.partition(":")
    if kind in ("minilm", "default") and not arg:
        return TokenStatesEncoder()
    if kind == "token-states" and arg:
        return TokenStatesEncoder(Path(arg))
    if kind == "precomputed" and arg:
        return PrecomputedEncoder(Path(arg))
    raise InvalidInput(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")


def encoder_from_spec(spec: EncoderSpec) -> Encoder:
    """The query encoder for an index built with ``spec``, when it can be made unaided."""
    from sie_index.encoders.token_states import DEFAULT_MODEL, TokenStatesEncoder

    if spec.kind == "token-states" and spec.model == DEFAULT_MODEL:
        return TokenStatesEncoder(
            query_maxlen=int(spec.options.get("query_maxlen", 64)),
            doc_maxlen=int(spec.options.get("doc_maxlen", 256)),
        )
    raise EncoderUnavailable(
        f"the index was built with {spec.kind} encoder {spec.model!r}, which sie-index cannot "
        "load by itself: open the index with encoder=..., or search with query vectors"
    )
