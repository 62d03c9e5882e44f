"""``tokens.faiss``: the FAISS index over every document token vector.

Inner product throughout (vectors are L2-normalized). FAISS ids are token rows
of the vector store. Kinds:

- ``flat``: exact, for small corpora and tests;
- ``ivf-flat``, ``ivf-sq8``, ``ivf-pq``: an inverted file with ``nlist`` lists
  and raw, 8-bit scalar or product-quantized codes; ``ivf-pq`` is the
  large-corpus default;
- ``hnsw``: a graph over raw vectors;
- ``auto``: ``flat`` below :data:`AUTO_FLAT_MAX_TOKENS` tokens, else ``ivf-pq``.

``nlist`` follows the token count N: ``2 ** round(log2(c * sqrt(N)))``, never more
than N / 39 (FAISS needs about 39 training points a list), where ``c`` is 4 from
:data:`NLIST_FULL_TOKENS` tokens on and falls linearly to 1 at a quarter of that:
k-means costs about ``nlist**2`` (its sample grows with ``nlist``), and a small
corpus searched with ``nprobe`` lists of a few hundred tokens each loses nothing
by having fewer of them (``scripts/bench.py kinds``, one run: 1,500 documents,
127k tokens, index built in 2.8 s where the old ``4 * sqrt(N)`` rule took 10.9 s,
same quality, 2.8 ms more a query; 5,000 documents: 14.5 s against 25 s, same
speed). Training reads
a bounded, seeded sample of rows (:func:`training_rows`), so build memory does
not grow with the corpus; vectors are then read and added chunk by chunk (read,
not mapped, so a pass over the store leaves no mapped pages in the process).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from storage import coarse
from storage.coarse import CoarseGraph, ivf_of
from storage.errors import CorruptIndex, InvalidInput
from storage.fsio import VerifiedBlocks, atomic_replace
from storage.vectors import TokenReader

__all__ = [
    "AUTO_FLAT_MAX_TOKENS",
    "INDEX_KINDS",
    "NLIST_FULL_TOKENS",
    "OPTION_RANGES",
    "TOKEN_INDEX_NAME",
    "NearLists",
    "RowFilter",
    "TokenIndex",
    "TokenIndexPlan",
    "auto_nlist",
    "check_index_options",
    "option_problem",
    "plan_token_index",
    "takes_codes",
    "training_rows",
]

TOKEN_INDEX_NAME = "tokens.faiss"  # noqa: S105 (a file name)
INDEX_KINDS = ("auto", "flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw")
AUTO_FLAT_MAX_TOKENS = 16_384
"""Up to here (about 200 documents) ``auto`` keeps an exact ``flat`` index: a scan
of every token costs about as much as an IVF search. Beyond it the flat scan grows
with the corpus (127k tokens: 42 ms a query, ``scripts/bench.py kinds``); and
below :data:`SearchParams.exact_threshold` documents a search scores every document
exactly anyway."""
NLIST_FULL_TOKENS = 1_000_000
TRAIN_SAMPLE_MAX = 262_144
ADD_CHUNK_ROWS = 32_768  # rows read and added at a time: bounds the build's peak memory
READ_CHUNK = 1 << 20  # bytes FAISS asks a VerifiedBlocks for at a time
MIN_POINTS_PER_LIST = 39
PQ_CODEC_MAX_M = 32
OPTION_RANGES: dict[str, tuple[int, int]] = {
    "nlist": (1, 1 << 20),
    "pq_m": (1, 256),
    "hnsw_m": (4, 128),
    "seed": (0, (1 << 31) - 1),
}
"""The options a build takes (``index_options``) and the integers each may be.

``nlist``: inverted lists of an ``ivf-*`` index (also at most one per 39 tokens);
``pq_m``: bytes of an ``ivf-pq`` code, a divisor of the dimension; ``hnsw_m``:
neighbours a node of an ``hnsw`` graph keeps (FAISS aborts or crashes below 2,
and memory grows with it: 128 takes about 1 KiB a token); ``seed``: the seed of
the training sample and of k-means. A recorded plan is checked against the same
ranges when an index is opened (:meth:`TokenIndexPlan.from_dict`), so a build
cannot commit what a reader refuses.
"""


@dataclass(frozen=True, kw_only=True)
class TokenIndexPlan:
    """A resolved token-index kind and its parameters (what the manifest records)."""

    kind: str
    nlist: int = 0
    pq_m: int = 0
    hnsw_m: int = 0
    train_sample: int = 0
    seed: int = 0

    def factory_string(self) -> str:
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m}"
        codes = {"ivf-flat": "Flat", "ivf-sq8": "SQ8", "ivf-pq": f"PQ{self.pq_m}x8"}[self.kind]
        return f"IVF{self.nlist},{codes}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "nlist": self.nlist,
            "pq_m": self.pq_m,
            "hnsw_m": self.hnsw_m,
            "train_sample": self.train_sample,
            "seed": self.seed,
            "factory": self.factory_string(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> TokenIndexPlan:
        """The plan a manifest records, checked field by field (:class:`CorruptIndex`).

        The record's ``trained`` entry, if any, is not part of the plan: it says what
        the index held at training, and :mod:`storage.growth` checks it."""
        raw = {key: value for key, value in raw.items() if key != "trained"}
        fields = {"kind", "nlist", "pq_m", "hnsw_m", "train_sample", "seed", "factory"}
        if set(raw) != fields:
            raise CorruptIndex(f"{where}: token_index has fields {sorted(raw)}")
        kind = raw["kind"]
        if kind not in INDEX_KINDS or kind == "auto":
            raise CorruptIndex(f"{where}: unknown token index kind {kind!r}")
        for name in ("nlist", "pq_m", "hnsw_m", "train_sample", "seed"):
            value = raw[name]
            if type(value) is not int or value < 0:
                raise CorruptIndex(f"{where}: token_index.{name} is {value!r}")
            # unused options are recorded as 0; a used one must be in its range
            if value and name in OPTION_RANGES and (problem := option_problem(name, value)):
                raise CorruptIndex(f"{where}: token_index.{problem}")
        plan = cls(
            kind=kind,
            nlist=raw["nlist"],
            pq_m=raw["pq_m"],
            hnsw_m=raw["hnsw_m"],
            train_sample=raw["train_sample"],
            seed=raw["seed"],
        )
        used = {
            "ivf-flat": ("nlist",),
            "ivf-sq8": ("nlist",),
            "ivf-pq": ("nlist", "pq_m"),
            "hnsw": ("hnsw_m",),
            "flat": (),
        }[kind]
        if any(raw[name] == 0 for name in used):
            raise CorruptIndex(f"{where}: a {kind} token index needs {', '.join(used)} above 0")
        if raw["factory"] != plan.factory_string() or plan.to_dict() != raw:
            raise CorruptIndex(f"{where}: token_index parameters do not fit together")
        return plan


def option_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``name`` option (see :data:`OPTION_RANGES`), or None."""
    if name not in OPTION_RANGES:
        return f"{name} is not an index option; the options are {', '.join(OPTION_RANGES)}"
    low, high = OPTION_RANGES[name]
    if type(value) is not int or not low <= value <= high:
        return f"{name}={value!r} is not an integer in {low}..{high}"
    return None


def check_index_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` as a plain dict, each one checked (:class:`InvalidInput` naming it)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidInput(f"index options must be a mapping, not {type(options).__name__}")
    for name, value in options.items():
        problem = option_problem(str(name), value)
        if problem is not None:
            raise InvalidInput(f"index option {problem}")
    return dict(options)


def _pq_subquantizers(dim: int, most: int | None = None) -> int:
    """The largest divisor of ``dim`` that is at most ``dim / 8`` (8+ dims a sub-vector),
    or with ``most``, the largest divisor of ``dim`` up to ``most``."""
    top = most if most is not None else max(dim // 8, 1)
    return max(m for m in range(1, top + 1) if dim % m == 0)


def plan_token_index(
    kind: str,
    n_tokens: int,
    dim: int,
    *,
    nlist: int | None = None,
    pq_m: int | None = None,
    hnsw_m: int = 32,
    seed: int = 0,
    codec: str = "f16",
) -> TokenIndexPlan:
    """Resolve ``kind`` (maybe ``auto``) and derive its parameters from the token count.

    The ``pq`` codec stores the IVF-PQ index's own codes, so it needs ``ivf-pq``
    (``auto`` picks it at any size), and its default product code is at most
    :data:`PQ_CODEC_MAX_M` bytes: it is the only copy of each vector.
    """
    if kind not in INDEX_KINDS:
        raise InvalidInput(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    check_index_options(
        {
            name: value
            for name, value in (
                ("nlist", nlist),
                ("pq_m", pq_m),
                ("hnsw_m", hnsw_m),
                ("seed", seed),
            )
            if value is not None
        }
    )
    if codec == "pq":
        if kind not in ("auto", "ivf-pq"):
            raise InvalidInput(
                f"codec 'pq' stores the ivf-pq index's own codes; index kind {kind!r} has "
                "none (use index kind 'ivf-pq' or 'auto', or codec 'sq8')"
            )
        kind = "ivf-pq"
        pq_m = pq_m or _pq_subquantizers(dim, PQ_CODEC_MAX_M)
    if kind == "auto":
        kind = "flat" if n_tokens <= AUTO_FLAT_MAX_TOKENS else "ivf-pq"
    if kind == "flat":
        return TokenIndexPlan(kind=kind, seed=seed)
    if kind == "hnsw":
        return TokenIndexPlan(kind=kind, hnsw_m=hnsw_m, seed=seed)
    max_lists = n_tokens // MIN_POINTS_PER_LIST
    if nlist is None:
        nlist = auto_nlist(n_tokens)
        nlist = min(nlist, max_lists)
    if nlist < 1 or nlist > max_lists:
        raise InvalidInput(
            f"index kind {kind!r} with nlist={nlist} needs at least "
            f"{MIN_POINTS_PER_LIST * max(nlist, 1)} tokens to train, and the corpus has "
            f"{n_tokens}; use index kind 'flat' for a corpus this small"
        )
    m = 0
    if kind == "ivf-pq":
        m = pq_m or _pq_subquantizers(dim)
        if dim % m or m > dim:
            raise InvalidInput(f"pq_m={m} does not divide the dimension {dim}")
        if n_tokens < 256 * MIN_POINTS_PER_LIST:
            raise InvalidInput(
                f"ivf-pq needs at least {256 * MIN_POINTS_PER_LIST} tokens to train its codebooks "
                f"and the corpus has {n_tokens}; use index kind 'flat' or 'ivf-flat' "
                "(with codec 'f16' or 'sq8')"
            )
    sample = min(n_tokens, max(64 * nlist, 256 * 64 if m else 0), TRAIN_SAMPLE_MAX)
    return TokenIndexPlan(kind=kind, nlist=nlist, pq_m=m, train_sample=sample, seed=seed)


def auto_nlist(n_tokens: int) -> int:
    """The default ``nlist`` for ``n_tokens`` tokens (see the module's docstring)."""
    n = max(n_tokens, 1)
    c = min(4.0, max(1.0, 4.0 * n / NLIST_FULL_TOKENS))
    return int(2 ** round(math.log2(max(c * math.sqrt(n), 1))))


def training_rows(n_tokens: int, sample: int, seed: int) -> np.ndarray:
    """A sorted, seeded sample of ``sample`` distinct rows out of ``n_tokens``."""
    rng = np.random.default_rng(seed)
    if sample >= n_tokens:
        return np.arange(n_tokens)
    return np.sort(rng.choice(n_tokens, size=sample, replace=False))


_CLASSES = {
    "flat": faiss.IndexFlatIP,
    "hnsw": faiss.IndexHNSWFlat,
    "ivf-flat": faiss.IndexIVFFlat,
    "ivf-sq8": faiss.IndexIVFScalarQuantizer,
    "ivf-pq": faiss.IndexIVFPQ,
}


def takes_codes(plan: TokenIndexPlan) -> bool:
    """Whether later segments extend the first one's index with standalone codes
    (``hnsw`` cannot: each of its segments holds its own graph)."""
    return plan.kind != "hnsw"


class TokenIndex:
    """A FAISS token index: built from a vector store, saved, loaded, searched.

    It may be made of parts, one FAISS index each with the token row of its first
    id (an ``hnsw`` index keeps one graph per segment); a search asks every part
    and keeps the best ``k_token`` rows per query token, which is what one index
    over the union would return. Rows of deleted documents are masked out of
    every search (:meth:`mask_rows`), so a deleted document takes no place among
    the ``k_token`` results, as in a fresh build without it.
    """

    def __init__(self, index: faiss.Index, plan: TokenIndexPlan) -> None:
        self.index = index
        self.plan = plan
        self.parts: list[tuple[faiss.Index, int]] = [(index, 0)]
        self._live: RowFilter | None = None  # the rows of deleted documents masked out
        self._empty: faiss.Index | None = None
        self._coarse: dict[int, CoarseGraph | None] = {}  # a part's centroid graph, if any
        self._row_lists: np.ndarray | None = None
        self._row_lists_lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return sum(int(part.ntotal) for part, _ in self.parts)

    @classmethod
    def build(
        cls,
        plan: TokenIndexPlan,
        tokens: TokenReader,
        progress: Callable[[int], None] | None = None,
        *,
        trained: faiss.Index | None = None,
    ) -> TokenIndex:
        """Train (on a bounded sample) and fill an index with every row of ``tokens``;
        with ``trained`` (an empty trained index), fill a copy of it instead."""
        if trained is not None:
            index = faiss.clone_index(trained)
            index.reset()
        else:
            index = cls.train(plan, tokens)
        # the empty trained copy, made before the codes go in: a copy of the filled
        # index would hold every code twice at the build's peak
        empty = faiss.clone_index(index)
        for start, stop in tokens.chunks(ADD_CHUNK_ROWS):
            index.add(tokens.read_rows(start, stop).astype(np.float32))
            if progress is not None:
                progress(stop - start)
        built = cls(index, plan)
        built._empty = empty
        return built

    @staticmethod
    def train(plan: TokenIndexPlan, tokens: Any) -> faiss.Index:
        """An empty FAISS index of ``plan``, trained on a bounded, seeded sample of the
        rows of ``tokens`` (anything with ``n_tokens``, ``dim`` and ``sample_rows``)."""
        index = faiss.index_factory(tokens.dim, plan.factory_string(), faiss.METRIC_INNER_PRODUCT)
        if plan.kind.startswith("ivf"):
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = plan.seed
            ivf.cp.niter = 10
            if plan.kind == "ivf-pq":
                ivfpq = faiss.downcast_index(index)
                ivfpq.pq.cp.seed = plan.seed  # type: ignore[attr-defined]
                # index_factory turns on polysemous training (an annealing that orders
                # the centroids so Hamming distances between codes mean something). No
                # search here uses Hamming filtering, and it took four fifths of the
                # training time: off, the codebooks hold the same centroids (in k-means order)
                # and every distance is the same.
                ivfpq.do_polysemous_training = False  # type: ignore[attr-defined]
        if not index.is_trained:
            rows = training_rows(tokens.n_tokens, plan.train_sample, plan.seed)
            sample = tokens.sample_rows(rows, ADD_CHUNK_ROWS)
            index.train(sample)
            del sample
        return index

    def trained_copy(self) -> faiss.Index:
        """An empty copy of the (first part's) index: its trained quantizer and codebooks."""
        if self._empty is not None:
            return self._empty
        copy = faiss.clone_index(self.index)
        copy.reset()
        return copy

    def save(self, path: Path) -> None:
        atomic_replace(path, lambda tmp: faiss.write_index(self.index, str(tmp)))

    @staticmethod
    def save_index(index: faiss.Index, path: Path) -> None:
        atomic_replace(path, lambda tmp: faiss.write_index(index, str(tmp)))

    @staticmethod
    def load_faiss(
        data: bytes | VerifiedBlocks, plan: TokenIndexPlan, *, dim: int, ntotal: int, where: str
    ) -> Any:
        """Deserialize a FAISS file, from bytes the caller has verified against their
        checksums or streamed from a :class:`VerifiedBlocks` (each block checked before
        FAISS reads it; the file is never whole in memory), and check that it is the
        index the plan describes."""
        try:
            if isinstance(data, VerifiedBlocks):
                reader = faiss.PyCallbackIOReader(data.read, READ_CHUNK)  # type: ignore[attr-defined]
                index = faiss.read_index(reader)
                data.finish()
            else:
                index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            if isinstance(data, VerifiedBlocks) and data.error is not None:
                raise data.error from exc  # a block failed its checksum, or the read
            raise CorruptIndex(f"{where} cannot be read by FAISS: {exc}") from exc
        typed = faiss.downcast_index(index)  # a view: ``index`` still owns the C++ object
        problems = []
        if not isinstance(typed, _CLASSES[plan.kind]):
            problems.append(f"is a {type(typed).__name__}, the manifest says {plan.kind}")
        elif typed.metric_type != faiss.METRIC_INNER_PRODUCT:
            problems.append("does not use inner product")
        elif plan.kind.startswith("ivf") and typed.nlist != plan.nlist:  # type: ignore[attr-defined]
            problems.append(f"has {typed.nlist} lists, the manifest says {plan.nlist}")  # type: ignore[attr-defined]
        elif plan.kind == "ivf-pq" and plan.pq_m != typed.pq.M:  # type: ignore[attr-defined]
            problems.append(f"has {typed.pq.M} sub-quantizers, the manifest says {plan.pq_m}")  # type: ignore[attr-defined]
        if typed.d != dim:
            problems.append(f"has dimension {typed.d}, the manifest says {dim}")
        if typed.ntotal != ntotal:
            problems.append(f"holds {typed.ntotal} tokens, the manifest says {ntotal}")
        if not typed.is_trained:
            problems.append("is not trained")
        if problems:
            raise CorruptIndex(f"{where} " + "; ".join(problems))
        return index

    def code_size(self) -> int:
        """Bytes of one token's standalone code (``sa_encode``)."""
        return int(self.index.sa_code_size())

    def add_codes(self, codes: bytes, first_row: int, n: int, where: str) -> None:
        """Append ``n`` tokens' standalone codes (verified) as rows ``first_row ..``."""
        size = self.code_size()
        if len(codes) != n * size:
            raise CorruptIndex(f"{where} holds {len(codes)} bytes, {n} codes take {n * size}")
        if first_row != self.ntotal:
            raise CorruptIndex(
                f"{where} starts at row {first_row}, the index ends at {self.ntotal}"
            )
        if n:
            arr = np.frombuffer(codes, dtype=np.uint8).reshape(n, size)
            if self.plan.kind.startswith("ivf"):
                nlist = self.plan.nlist
                head = int(faiss.extract_index_ivf(self.index).coarse_code_size())  # type: ignore[attr-defined]
                lists = _list_numbers(arr, head)
                if (lists >= nlist).any():
                    raise CorruptIndex(f"{where} names an inverted list the index lacks")
            ids = np.arange(first_row, first_row + n, dtype=np.int64)
            self.index.add_sa_codes(arr, ids)

    def add_part(self, index: faiss.Index, first_row: int) -> None:
        """Add another segment's own index (``hnsw``), its ids starting at ``first_row``."""
        assert self._live is None, "mask rows after every part is added"
        self.parts.append((index, first_row))

    def mask_rows(self, live: np.ndarray | None) -> None:
        """Search only rows whose ``live`` flag is set (None: every row)."""
        self._live = None if live is None else self.row_filter(live)

    def row_filter(self, allowed: np.ndarray) -> RowFilter:
        """Selectors that let a search return only rows whose ``allowed`` flag is set
        (the live rows, or for a filtered search the rows of allowed documents); a
        part whose rows are all allowed gets none."""
        bits: list[np.ndarray | None] = []
        selectors: list[Any] = []
        for part, base in self.parts:
            flags = allowed[base : base + part.ntotal]
            if flags.all():
                bits.append(None)
                selectors.append(None)
                continue
            packed = np.packbits(flags, bitorder="little")
            bits.append(packed)  # the selector reads this buffer: the RowFilter keeps it
            selectors.append(faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed)))
        return RowFilter(bits, selectors)

    def _params(
        self, i: int, k: int, nprobe: int, ef_search: int, rows: RowFilter | None = None
    ) -> Any:
        params: Any
        if self.plan.kind.startswith("ivf"):
            params = faiss.SearchParametersIVF()
            params.nprobe = min(nprobe, self.plan.nlist)
        elif self.plan.kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(ef_search, k)
        else:
            params = faiss.SearchParameters()
        chosen = rows if rows is not None else self._live
        selector = chosen.selectors[i] if chosen is not None else None
        if selector is not None:
            params.sel = selector
        return params

    def _coarse_graph(self, i: int, part: faiss.Index) -> CoarseGraph | None:
        """Part ``i``'s graph over its centroids (:mod:`storage.coarse`), for an
        inverted file of at least ``COARSE_GRAPH_MIN_LISTS`` lists; else None."""
        if i not in self._coarse:
            ivf = ivf_of(part) if self.plan.kind.startswith("ivf") else None
            big = ivf is not None and ivf.nlist >= coarse.COARSE_GRAPH_MIN_LISTS
            self._coarse[i] = CoarseGraph(ivf) if big else None
        return self._coarse[i]

    def search(
        self,
        Q: np.ndarray,
        k_token: int,
        *,
        nprobe: int = 16,
        ef_search: int = 64,
        rows: RowFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k_token`` token rows per query token: ``(sims [nq, k], rows [nq, k])``,
        among the rows ``rows`` allows (by default every live row).

        Missing results (fewer than ``k_token`` reachable rows) have row -1.
        """
        sims, ids, _ = self.search_with_lists(
            Q, k_token, lists=0, nprobe=nprobe, ef_search=ef_search, rows=rows
        )
        return sims, ids

    def search_with_lists(
        self,
        Q: np.ndarray,
        k_token: int,
        *,
        lists: int,
        nprobe: int = 16,
        ef_search: int = 64,
        rows: RowFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray, NearLists | None]:
        """:meth:`search`, and the ``lists`` inverted lists nearest each query token
        with their similarities (:class:`NearLists`; None for a kind without lists,
        or when ``lists`` is 0). The rows found are :meth:`search`'s: the lists it
        visits are the first ``nprobe`` of the same coarse answer (where ``lists``
        is at most the graph's breadth for ``nprobe``, 64 or more: see
        :meth:`storage.coarse.CoarseGraph.nearest`)."""
        if isinstance(lists, bool) or not isinstance(lists, int) or lists < 0:
            raise InvalidInput(f"lists must be a count of lists (0 or more), got {lists!r}")
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        k = max(1, min(k_token, self.ntotal))
        ivf_kind = self.plan.kind.startswith("ivf")
        want = lists if ivf_kind else 0
        if self.ntotal == 0:
            empty = np.zeros((len(Q), 0), np.float32), np.zeros((len(Q), 0), np.int64)
            return *empty, None
        found = []
        near_parts: list[tuple[np.ndarray, np.ndarray]] = []
        offset = 0  # a part's lists are numbered after the lists of the parts before it
        for i, (part, base) in enumerate(self.parts):
            ivf = ivf_of(part) if ivf_kind else None
            n_lists = int(ivf.nlist) if ivf is not None else 0
            if part.ntotal == 0:
                offset += n_lists
                continue
            kp = min(k, int(part.ntotal))
            params = self._params(i, kp, nprobe, ef_search, rows)
            graph = self._coarse_graph(i, part)
            near = None
            if want and ivf is not None:
                if graph is not None:
                    # at least the nprobe lists the scan visits; past the breadth
                    # nprobe takes, the graph searches wider, and its first nprobe
                    # lists may be better ones than a plain search's
                    near = graph.nearest(Q, max(want, params.nprobe), params.nprobe)
                else:  # a small quantizer: scanned whole, as FAISS's own search does
                    csims, clists = ivf.quantizer.search(Q, min(want, n_lists))
                    near = (np.asarray(csims, np.float32), np.asarray(clists, np.int64))
                sims_n, lists_n = near[0][:, :want], near[1][:, :want]
                near_parts.append((sims_n, np.where(lists_n >= 0, lists_n + offset, -1)))
            if graph is not None:
                part_sims, part_rows = graph.search(Q, kp, params.nprobe, params, near)
            else:
                part_sims, part_rows = part.search(Q, kp, params=params)
            if base:
                part_rows = np.where(part_rows >= 0, part_rows + base, part_rows)
            found.append((part_sims, part_rows))
            offset += n_lists
        near_lists = None
        if near_parts:
            near_lists = NearLists(
                sims=np.concatenate([p[0] for p in near_parts], axis=1),
                lists=np.concatenate([p[1] for p in near_parts], axis=1),
                n_lists=offset,
            )
        if len(found) == 1:
            return *found[0], near_lists
        sims = np.concatenate([f[0] for f in found], axis=1)
        ids = np.concatenate([f[1] for f in found], axis=1)
        keyed = np.where(ids >= 0, sims, -np.inf)
        top = np.argsort(-keyed, axis=1, kind="stable")[:, :k]
        sims = np.take_along_axis(sims, top, axis=1)
        ids = np.take_along_axis(ids, top, axis=1)
        ids[~np.isfinite(np.take_along_axis(keyed, top, axis=1))] = -1
        return sims, ids, near_lists

    def row_lists(self) -> np.ndarray | None:
        """The inverted list of every token row (int32, numbered as in
        :class:`NearLists`), read from the index's own lists on first use and kept:
        4 bytes a token. None for a kind without lists."""
        if not self.plan.kind.startswith("ivf"):
            return None
        if self._row_lists is None:
            with self._row_lists_lock:
                if self._row_lists is None:
                    self._row_lists = self._read_row_lists()
        return self._row_lists

    def _read_row_lists(self) -> np.ndarray:
        out = np.full(self.ntotal, -1, np.int32)
        offset = 0
        for part, base in self.parts:
            ivf = ivf_of(part)
            if ivf is None:
                raise CorruptIndex("an inverted-file index holds a part that is not one")
            invlists = ivf.invlists
            for number in range(ivf.nlist):
                size = invlists.list_size(number)
                if not size:
                    continue
                pointer = invlists.get_ids(number)
                try:
                    ids = faiss.rev_swig_ptr(pointer, size).astype(np.int64) + base
                finally:
                    invlists.release_ids(number, pointer)
                if ids.min() < 0 or ids.max() >= len(out):
                    raise CorruptIndex(f"inverted list {number} holds a row past the index")
                out[ids] = offset + number
            offset += int(ivf.nlist)
        if (out < 0).any():
            raise CorruptIndex(f"{int((out < 0).sum())} token rows are in no inverted list")
        out.flags.writeable = False
        return out


@dataclass(frozen=True)
class NearLists:
    """The inverted lists nearest each query token (:meth:`TokenIndex.search_with_lists`):
    ``lists [nq, n]`` int64 (-1 where none), best first within a part, numbered over
    every part (a part's lists after the lists of the parts before it; ``n_lists`` in
    all), and the query token's similarity to each list's centroid, ``sims [nq, n]``."""

    sims: np.ndarray
    lists: np.ndarray
    n_lists: int


@dataclass(frozen=True)
class RowFilter:
    """FAISS selectors, one a part, and the bit buffers they read (kept alive here)."""

    bits: list[np.ndarray | None]
    selectors: list[Any]


def _list_numbers(codes: np.ndarray, nbytes: int) -> np.ndarray:
    """The inverted-list numbers at the head of IVF standalone codes: ``nbytes``
    little-endian bytes (FAISS's coarse code size; none when there is one list)."""
    if nbytes == 0:
        return np.zeros(len(codes), np.int64)
    head = codes[:, :nbytes].astype(np.int64)
    return (head << (8 * np.arange(nbytes, dtype=np.int64))).sum(axis=1)
