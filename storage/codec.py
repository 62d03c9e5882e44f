"""How token vectors are stored: the vector codec and the optional projection.

Codecs, chosen at build time and recorded in the manifest:

- ``f16``: float16 rows, exact up to float16 rounding (``tokens.f16``, 2 bytes a
  dimension);
- ``sq8``: FAISS's 8-bit scalar quantizer, standalone (``tokens.sq8``, 1 byte a
  dimension; its trained ranges in ``codec.faiss``);
- ``pq``: residual product quantization over the IVF centroids, which is what an
  ``ivf-pq`` token index stores for its own search: ``tokens.pq`` holds each
  token's FAISS standalone code (``sa_encode``: its inverted list, then the
  product code of its residual to that list's centroid), once. A reader fills the
  IVF-PQ index from those codes (``add_sa_codes``) and the rerank decodes the
  candidates' codes (``sa_decode``: centroid plus decoded residual), so the ANN
  and the rerank read the same bytes and nothing is stored twice. Its trained
  quantizer and codebooks are the first segment's ``trained.faiss``.

Quantizers are FAISS's own (``sa_encode`` / ``sa_decode``); nothing here
hand-writes one.

A projection (``dim`` below the encoder's dimension) maps every vector, document
and query token alike, through ``P [dim, input_dim]``: the top eigenvectors of
the uncentred second moment of a bounded, seeded sample of token vectors. It is
uncentred on purpose: MaxSim needs dot products, and ``(P x) · (P q)`` is the best
rank-``dim`` approximation of ``x · q`` in the least-squares sense; a centred PCA
would drop the mean's share of every dot product. It is stored as little-endian
float32 rows (``projection.f32``), checksummed like every data file.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from storage.errors import CorruptIndex, InvalidInput

__all__ = [
    "CODECS",
    "CODEC_INDEX_NAME",
    "PROJECTION_NAME",
    "VectorCodec",
    "auto_codec",
    "check_codec",
    "fit_projection",
    "load_sq8",
    "project_rows",
    "projection_bytes",
    "projection_from_bytes",
    "train_sq8",
    "vector_file",
]

CODECS = ("f16", "sq8", "pq")
CODEC_INDEX_NAME = "codec.faiss"
PROJECTION_NAME = "projection.f32"
PROJECTION_DTYPE = np.dtype("<f4")
AUTO_PQ_MIN_TOKENS = 20_000_000
"""Where ``auto`` switches to ``pq``. On the full debian-pkgs corpus (4.8M tokens,
``python scripts/bench.py codecs``) ``pq`` takes 46.9 bytes a token against
f16's 840 but keeps 0.968 of exhaustive MRR@10 (f16: 0.998). Below 20M tokens
an f16 index (about 17 GB there) still fits a machine's memory, so exactness
wins; above it, f16 no longer fits where pq (under 1 GB) does."""
_FILES = {"f16": "tokens.f16", "sq8": "tokens.sq8", "pq": "tokens.pq"}


def vector_file(codec: str) -> str:
    """The name of the file that holds a segment's token vectors under ``codec``."""
    return _FILES[codec]


def auto_codec(n_tokens: int) -> str:
    """What ``auto`` stores: ``pq`` from :data:`AUTO_PQ_MIN_TOKENS` tokens, else ``f16``."""
    return "pq" if n_tokens >= AUTO_PQ_MIN_TOKENS else "f16"


def check_codec(codec: str, dim: int | None, input_dim: int) -> int:
    """Validate a codec name (or ``auto``) and a target dimension; returns the stored
    dimension."""
    if codec != "auto" and codec not in CODECS:
        raise InvalidInput(f"unknown codec {codec!r}; choose auto or one of {', '.join(CODECS)}")
    if dim is None:
        return input_dim
    if type(dim) is not int or not 1 <= dim <= input_dim:
        raise InvalidInput(
            f"dim={dim!r}: a projection keeps between 1 and the encoder's {input_dim} dimensions"
        )
    return dim


def fit_projection(sample: np.ndarray, dim: int) -> np.ndarray:
    """``P [dim, input_dim]``: the top-``dim`` eigenvectors of ``E[x xᵀ]`` over ``sample``.

    Computed in float64 and made deterministic: eigenvectors sorted by eigenvalue
    (largest first), each with its largest-magnitude entry positive.
    """
    x = np.asarray(sample, dtype=np.float64)
    moment = (x.T @ x) / max(len(x), 1)
    values, vectors = np.linalg.eigh(moment)
    top = vectors[:, np.argsort(-values, kind="stable")[:dim]].T  # [dim, input_dim]
    signs = np.sign(top[np.arange(dim), np.abs(top).argmax(axis=1)])
    top *= np.where(signs == 0, 1.0, signs)[:, None]
    return np.ascontiguousarray(top, dtype=np.float32)


def train_sq8(sample: np.ndarray) -> Any:
    """A trained, empty FAISS 8-bit scalar quantizer over ``sample``'s dimension."""
    index = faiss.IndexScalarQuantizer(
        sample.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def load_sq8(data: bytes, dim: int, where: str) -> Any:
    """The ``sq8`` quantizer from bytes the caller verified, checked to be one."""
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise CorruptIndex(f"{where} cannot be read by FAISS: {exc}") from exc
    typed = faiss.downcast_index(index)
    if (
        not isinstance(typed, faiss.IndexScalarQuantizer)
        or typed.sq.qtype != faiss.ScalarQuantizer.QT_8bit
        or typed.d != dim
        or typed.ntotal != 0
        or not typed.is_trained
    ):
        raise CorruptIndex(f"{where} is not a trained, empty 8-bit scalar quantizer of {dim} dims")
    return index


class VectorCodec:
    """Encodes vectors of the encoder's dimension into stored rows and decodes them.

    ``quantizer`` is the trained FAISS index whose standalone codes the rows are
    (``sq8``: a scalar quantizer; ``pq``: the IVF-PQ token index's trained copy);
    ``f16`` has none. ``projection`` is ``P [dim, input_dim]`` or None.
    """

    def __init__(
        self,
        name: str,
        dim: int,
        input_dim: int,
        *,
        projection: np.ndarray | None = None,
        quantizer: Any = None,
    ) -> None:
        if name not in CODECS:
            raise CorruptIndex(f"unknown vector codec {name!r}")
        if (name == "f16") != (quantizer is None):
            raise ValueError(f"codec {name} and its quantizer do not fit")  # a programming error
        if projection is not None and projection.shape != (dim, input_dim):
            raise CorruptIndex(
                f"{PROJECTION_NAME} has shape {projection.shape}, the manifest says "
                f"{(dim, input_dim)}"
            )
        if (projection is None) != (dim == input_dim):
            raise CorruptIndex(f"a projection from {input_dim} to {dim} dimensions is missing")
        if quantizer is not None and int(quantizer.d) != dim:
            raise CorruptIndex(f"the {name} quantizer has dimension {quantizer.d}, not {dim}")
        self.name = name
        self.dim = dim
        self.input_dim = input_dim
        self.projection = projection
        self.quantizer = quantizer
        self.file_name = vector_file(name)
        self.row_dtype: np.dtype[Any] = np.dtype("<f2") if name == "f16" else np.dtype(np.uint8)
        self.row_width = dim if name == "f16" else int(quantizer.sa_code_size())
        self.row_bytes = self.row_width * self.row_dtype.itemsize

    @property
    def exact(self) -> bool:
        """Whether stored rows are the vectors themselves (float16, no projection)."""
        return self.name == "f16" and self.projection is None

    def project(self, x: np.ndarray) -> np.ndarray:
        """Vectors (or query tokens) of the encoder's dimension in the stored space, float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.projection is None:
            return x
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise InvalidInput(f"vectors of shape {x.shape} do not have dimension {self.input_dim}")
        return project_rows(x, self.projection)

    def encode_projected(self, y: np.ndarray) -> np.ndarray:
        """Stored rows of vectors already in the stored space (``[n, dim]`` float32)."""
        y = np.ascontiguousarray(y, dtype=np.float32)
        if self.quantizer is None:
            return y.astype(self.row_dtype)
        codes: np.ndarray = self.quantizer.sa_encode(y)
        return codes

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Stored rows of vectors of the encoder's dimension. They are rounded to
        float16 first, as a build's scratch holds them, so an add codes exactly what
        a build of the same vectors codes."""
        x16 = np.ascontiguousarray(x, dtype=np.float32).astype(np.float16)
        return self.encode_projected(self.project(x16.astype(np.float32)))

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """Float32 vectors ``[n, dim]`` of stored rows. Float16 rows are widened by
        NumPy: storage loads no torch (a writer process would pay seconds of import
        for a few rows); the searcher widens its float16 candidates itself."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.quantizer is None:
            return np.asarray(rows, dtype=np.float32)
        decoded: np.ndarray = self.quantizer.sa_decode(np.ascontiguousarray(rows, dtype=np.uint8))
        return decoded

    def describe(self) -> dict[str, Any]:
        """What ``info()`` reports about the codec."""
        return {
            "codec": self.name,
            "dim": self.dim,
            "input_dim": self.input_dim,
            "bytes_per_vector": self.row_bytes,
        }


def project_rows(x: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """Rows ``x [n, input_dim]`` in the projected space ``[n, dim]``, float32: the one
    product every projected vector goes through (training samples, stored rows,
    query tokens)."""
    out: np.ndarray = np.ascontiguousarray(x, dtype=np.float32) @ projection.T
    return out


def projection_bytes(projection: np.ndarray) -> bytes:
    return np.ascontiguousarray(projection, dtype=PROJECTION_DTYPE).tobytes()


def projection_from_bytes(data: bytes, dim: int, input_dim: int, where: str) -> np.ndarray:
    if len(data) != dim * input_dim * PROJECTION_DTYPE.itemsize:
        raise CorruptIndex(f"{where} holds {len(data)} bytes, not a {dim} x {input_dim} matrix")
    matrix = np.frombuffer(data, dtype=PROJECTION_DTYPE).reshape(dim, input_dim)
    if not np.isfinite(matrix).all():
        raise CorruptIndex(f"{where} holds values that are not finite")
    return matrix.astype(np.float32)
