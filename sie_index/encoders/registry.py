"""Encoders by name (for the CLI) and from a stored spec (to encode queries for an index).

Which spec an index folder records is not read here (the encoders know nothing
of storage): see :mod:`sie_index.index_encoder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sie_index.encoders.base import Encoder, EncoderSpec
from sie_index.errors import EncoderUnavailable, InvalidInput

__all__ = ["ENCODER_NAMES", "encoder_from_spec", "load_encoder"]

ENCODER_NAMES = ("minilm", "colbert:PATH", "sie", "token-states:PATH", "precomputed:PATH")


def load_encoder(
    name: str,
    *,
    sie_url: str | None = None,
    model: str | None = None,
    sie_format: str = "msgpack",
    sie_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Encoder:
    """Make an encoder from a CLI name.

    ``minilm`` (or ``default``): the embedded all-MiniLM-L6-v2 token-state encoder;
    ``colbert:PATH``: a local ColBERT checkpoint (Stanford or PyLate layout), or the
    Hub id of one in the local Hugging Face cache (``colbert:colbert-ir/colbertv2.0``);
    ``sie``: ``model`` served by the SIE server at ``sie_url``;
    ``token-states:PATH``: the token states of a local model folder;
    ``precomputed:PATH``: vectors from a folder of ``<id>.npy`` files or an ``.npz``.
    ``options`` go to the encoder's constructor; ``sie_options`` (``deadline``,
    ``batch_size``, ``max_in_flight``) too, for the ``sie`` encoder only.
    """
    kind, _, arg = name.partition(":")
    if kind in ("minilm", "default") and not arg:
        from sie_index.encoders.token_states import TokenStatesEncoder

        return TokenStatesEncoder(**options)
    if kind == "token-states" and arg:
        from sie_index.encoders.token_states import TokenStatesEncoder

        return TokenStatesEncoder(Path(arg), **options)
    if kind == "colbert" and arg:
        from sie_index.encoders.colbert import ColbertEncoder

        return ColbertEncoder(Path(arg), **options)
    if kind == "sie" and not arg:
        if not sie_url or not model:
            raise InvalidInput(
                "the sie encoder needs a server URL and a model id (--sie-url, --model)"
            )
        from sie_index.encoders.sie import SieEncoder

        return SieEncoder(
            sie_url, model, wire_format=sie_format, **{**(sie_options or {}), **options}
        )
    if kind == "precomputed" and arg:
        from sie_index.encoders.precomputed import PrecomputedEncoder

        return PrecomputedEncoder(Path(arg), **options)
    raise InvalidInput(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")


def encoder_from_spec(
    spec: EncoderSpec,
    *,
    sie_url: str | None = None,
    sie_format: str = "msgpack",
    sie_options: Mapping[str, Any] | None = None,
) -> Encoder:
    """The query encoder for an index built with ``spec``, when it can be made unaided.

    The default token-states model, a ColBERT checkpoint still at the path the
    spec records, or the spec's SIE model at ``sie_url`` (by default the URL the
    index was built through), made with ``sie_options`` (``deadline``,
    ``batch_size``, ``max_in_flight``). bf16 autocast is used as it was at
    build time.
    """
    runtime = spec.runtime
    if spec.kind == "token-states":
        from sie_index.encoders.token_states import DEFAULT_MODEL, TokenStatesEncoder

        if spec.model == DEFAULT_MODEL:
            return TokenStatesEncoder(
                query_maxlen=int(spec.options.get("query_maxlen", 64)),
                doc_maxlen=int(spec.options.get("doc_maxlen", 256)),
                bf16=runtime.get("bf16"),
            )
    if spec.kind == "colbert" and runtime.get("path") and Path(runtime["path"]).is_dir():
        from sie_index.encoders.colbert import ColbertEncoder

        return ColbertEncoder(Path(runtime["path"]), bf16=bool(runtime.get("bf16", False)))
    if spec.kind == "sie":
        url = sie_url or runtime.get("url")
        if not url:
            raise EncoderUnavailable(f"no SIE server URL for {spec.model!r}: pass sie_url")
        from sie_index.encoders.sie import SieEncoder

        return SieEncoder(
            url,
            spec.model,
            dim=spec.dim,
            wire_format=sie_format,
            output_dtype=runtime.get("output_dtype", "float32"),
            instruction=spec.options.get("instruction"),
            **(sie_options or {}),
        )
    raise EncoderUnavailable(
        f"the index was built with {spec.kind} encoder {spec.model!r}, which sie-index cannot "
        "load by itself: open the index with encoder=..., or search with query vectors"
    )
