"""The SIE encode wire format: request bodies, msgpack-numpy arrays, response checks.

Everything here is pure data handling (no HTTP), shared by the client
(:mod:`sie_index.encoders.sie`) and by the loopback server the tests run.
The contract is SIE's encode API (server and SDK release 0.10.1):

- a request is ``{"items": [{"id", "text"}], "params": {"output_types": ["multivector"],
  "output_dtype", "instruction", "options": {"is_query"}}}``, as msgpack or JSON;
- each result's ``multivector.values`` is a msgpack-numpy map (bytes keys ``nd``,
  ``type``, ``kind``, ``shape``, ``data``) or, in JSON, nested lists.

Arrays are decoded with :func:`numpy.frombuffer` from a short list of flat
numeric dtypes: pickled (kind ``O``) and structured (kind ``V``) arrays are
refused, and the byte count must equal the shape times the item size. Nothing
is ever unpickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from sie_index.encoders.base import l2_normalize
from sie_index.errors import EncoderProtocolError

__all__ = [
    "ACCEPTED_OUTPUT_DTYPES",
    "MSGPACK",
    "decode_body",
    "decode_ndarray",
    "encode_body",
    "encode_ndarray",
    "error_detail",
    "parse_results",
]

MSGPACK = "application/msgpack"
JSON = "application/json"

# What the client asks for and accepts. int8/uint8/binary/ubinary are quantized
# codes that need the server's scales (or bit unpacking) to become comparable
# vectors; they are refused until sie-index supports them.
ACCEPTED_OUTPUT_DTYPES = ("float32", "float16")

# Flat numeric dtypes a msgpack-numpy array may carry (the SDK's own list).
_NUMERIC_TYPES = frozenset(
    ["<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1"]
)
# The float types a multivector may arrive in, by the dtype name the response gives.
_VALUE_TYPES = {"float32": "<f4", "float16": "<f2"}


def encode_ndarray(arr: np.ndarray) -> dict[bytes, Any]:
    """An array as a msgpack-numpy map (little-endian, C order)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return {
        b"nd": True,
        b"type": arr.dtype.str,
        b"kind": b"",
        b"shape": list(arr.shape),
        b"data": arr.tobytes(),
    }


def _get(obj: Mapping[Any, Any], key: str) -> Any:
    """A msgpack-numpy field, whether the packer used bytes or str keys."""
    if key.encode() in obj:
        return obj[key.encode()]
    return obj.get(key)


def decode_ndarray(obj: Any, *, where: str) -> np.ndarray:
    """Decode a msgpack-numpy map without pickle, checking dtype, shape and byte count.

    Raises :class:`EncoderProtocolError` naming ``where`` for anything else.
    """
    if not isinstance(obj, Mapping) or _get(obj, "nd") is not True:
        raise EncoderProtocolError(f"{where}: values are not a msgpack-numpy array")
    kind = _get(obj, "kind")
    kind = kind.decode("latin-1") if isinstance(kind, bytes) else kind
    type_str = _get(obj, "type")
    type_str = type_str.decode("latin-1") if isinstance(type_str, bytes) else type_str
    if kind not in ("", None) or not isinstance(type_str, str) or type_str not in _NUMERIC_TYPES:
        raise EncoderProtocolError(
            f"{where}: refusing array of type {type_str!r} kind {kind!r}: only flat numeric "
            "dtypes are decoded (never pickled or structured arrays)"
        )
    shape = _get(obj, "shape")
    if (
        not isinstance(shape, list | tuple)
        or not shape
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise EncoderProtocolError(f"{where}: bad array shape {shape!r}")
    data = _get(obj, "data")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncoderProtocolError(f"{where}: array data is not bytes")
    dtype = np.dtype(type_str)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise EncoderProtocolError(
            f"{where}: array of shape {list(shape)} and type {type_str} needs {expected} bytes, "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode_body(obj: Any, content_type: str) -> bytes:
    """Serialize a request or response body as msgpack (bin type for bytes) or JSON."""
    if content_type == MSGPACK:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def decode_body(body: bytes, content_type: str, *, where: str) -> Any:
    """Parse a msgpack or JSON body; malformed bytes raise :class:`EncoderProtocolError`."""
    try:
        if content_type.split(";")[0].strip() == MSGPACK:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        return json.loads(body)
    except (ValueError, msgpack.UnpackException, msgpack.ExtraData, TypeError) as exc:
        raise EncoderProtocolError(f"{where}: the body cannot be parsed: {exc}") from exc


def error_detail(body: bytes, content_type: str) -> tuple[str | None, str]:
    """The SIE error code (``detail.code``) and a readable message of an error response."""
    try:
        parsed = decode_body(body, content_type or JSON, where="error")
    except EncoderProtocolError:
        return None, body[:200].decode("utf-8", "replace")
    detail = parsed.get("detail") if isinstance(parsed, Mapping) else parsed
    code = detail.get("code") if isinstance(detail, Mapping) else None
    message = detail.get("message", detail) if isinstance(detail, Mapping) else detail
    return (code if isinstance(code, str) else None), str(message)[:200]


def _values(raw: Any, dtype_name: str, *, where: str) -> np.ndarray:
    if isinstance(raw, Mapping):
        arr = decode_ndarray(raw, where=where)
        if arr.dtype.str != _VALUE_TYPES[dtype_name]:
            raise EncoderProtocolError(
                f"{where}: values have type {arr.dtype.str}, the result says {dtype_name}"
            )
        return arr
    if isinstance(raw, list):  # JSON: nested lists of numbers
        try:
            arr = np.array(raw, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise EncoderProtocolError(f"{where}: values are not a matrix of numbers") from exc
        return arr
    raise EncoderProtocolError(f"{where}: values are neither an array nor a list")


def parse_results(
    parsed: Any, ids: Sequence[str], dim: int | None, *, where: str
) -> list[np.ndarray]:
    """The multivectors of a 200 response, one float32 ``[n_tokens, dim]`` array per sent id.

    Checks, before anything is returned: one result per item sent, each with the
    id sent in that position, a ``multivector`` of an accepted dtype whose
    ``num_tokens`` x ``token_dims`` matches its values, ``dim`` columns (when
    known), at least one row, finite values; rows are returned L2-normalized.
    ``where`` names the batch in errors.
    """
    items = parsed.get("items") if isinstance(parsed, Mapping) else None
    if not isinstance(items, list):
        raise EncoderProtocolError(f"{where}: the response has no list of items")
    if len(items) != len(ids):
        raise EncoderProtocolError(
            f"{where}: {len(items)} results for {len(ids)} items sent; nothing of this batch "
            "is stored"
        )
    out = []
    for pos, (item, sent) in enumerate(zip(items, ids, strict=True)):
        at = f"{where}, result {pos} (id {sent!r})"
        if not isinstance(item, Mapping) or item.get("id") != sent:
            got = item.get("id") if isinstance(item, Mapping) else item
            raise EncoderProtocolError(
                f"{at}: the server answered for id {got!r}; results are out of order or foreign"
            )
        mv = item.get("multivector")
        if not isinstance(mv, Mapping):
            raise EncoderProtocolError(f"{at}: no multivector in the result")
        dtype_name = mv.get("dtype", "float32")
        if dtype_name not in ACCEPTED_OUTPUT_DTYPES:
            raise EncoderProtocolError(f"{at}: dtype {dtype_name!r} is not float32 or float16")
        values = _values(mv.get("values"), dtype_name, where=at)
        n, d = mv.get("num_tokens"), mv.get("token_dims")
        if values.ndim != 2 or (n, d) != values.shape:
            raise EncoderProtocolError(
                f"{at}: values have shape {values.shape}, the result says "
                f"num_tokens={n!r} token_dims={d!r}"
            )
        if dim is not None and values.shape[1] != dim:
            raise EncoderProtocolError(f"{at}: {values.shape[1]}-dim vectors, expected {dim}")
        if values.shape[0] == 0:
            raise EncoderProtocolError(f"{at}: no token vectors")
        vecs = values.astype(np.float32, copy=False)  # float32 off the wire: no copy
        if not np.isfinite(vecs).all():
            raise EncoderProtocolError(f"{at}: NaN or Inf in the vectors")
        out.append(_unit_rows(vecs))
    return out


def _unit_rows(v: np.ndarray) -> np.ndarray:
    """Rows of unit length. SIE's ColBERT models normalize already, so most answers
    pass as they are (no copy); float16 rows, or a model that does not normalize,
    are normalized here."""
    sq = np.einsum("ij,ij->i", v, v)
    if np.abs(sq - 1.0).max() <= 1e-5:
        return v
    return l2_normalize(v)
