"""Which query encoder an existing index folder needs (for the CLI and other faces).

An index records the spec of the encoder that built it in its manifest. Reading
that manifest is the storage layer's job and making an encoder from a spec is
the encoders' (:func:`sie_index.encoders.registry.encoder_from_spec`); this
module joins the two, so that :mod:`sie_index.encoders` never reads an index.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sie_index.encoders.base import Encoder, EncoderSpec
from sie_index.encoders.registry import encoder_from_spec, load_encoder
from sie_index.errors import InvalidInput
from storage import read_manifest, read_shard_map

__all__ = ["encoder_for_index", "recorded_spec"]


def recorded_spec(path: str | Path) -> EncoderSpec:
    """The encoder spec the index at ``path`` records in its (verified) manifest (a
    sharded index's: its first shard's, which every shard shares)."""
    path = Path(path)
    shard_map = read_shard_map(path)
    if shard_map is not None:
        path = path / shard_map.shards[0]
    return EncoderSpec.from_dict(read_manifest(path).encoder)


def encoder_for_index(
    path: str | Path,
    name: str | None = None,
    *,
    sie_url: str | None = None,
    model: str | None = None,
    sie_format: str = "msgpack",
    sie_options: Mapping[str, Any] | None = None,
) -> Encoder | None:
    """The query encoder a user asked for to search the index at ``path``, or None.

    ``name`` picks one as :func:`~sie_index.encoders.registry.load_encoder`
    does (for ``sie``, ``model`` defaults to the index's own); with only
    ``sie_url``, the index's own model is asked of that server. Neither: for an
    index built through SIE, its own model at the URL it records, with
    ``sie_format`` and ``sie_options`` (``deadline``, ``batch_size``,
    ``max_in_flight``); for any other index None (the index makes its own).
    """
    if name is not None and name != "sie":
        return load_encoder(
            name, sie_url=sie_url, model=model, sie_format=sie_format, sie_options=sie_options
        )
    spec = recorded_spec(path)
    if spec.kind != "sie":
        if name is None and sie_url is None:
            return None
        if name is None:
            raise InvalidInput(
                f"the index was built with the {spec.kind} encoder, not through SIE: "
                "--sie-url needs --encoder sie --model MODEL"
            )
    if model is None and spec.kind == "sie":
        return encoder_from_spec(
            spec, sie_url=sie_url, sie_format=sie_format, sie_options=sie_options
        )
    return load_encoder(
        "sie",
        sie_url=sie_url or spec.runtime.get("url"),
        model=model,
        sie_format=sie_format,
        sie_options=sie_options,
    )
