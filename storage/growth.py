"""How far an index has grown since its quantizer was trained.

An IVF index's coarse centroids are trained once, on a sample of the tokens the
index held then; adds go into those lists without retraining. An index grown far
past what it was trained on keeps its speed but loses recall (issue 20: grown
12x by adds, a fifth of R@100 was lost against exhaustive MaxSim), because new
tokens land in lists whose centroids do not describe them, and a few lists swell.

So each training records, in the manifest's ``token_index`` record, a
:class:`TrainingRecord` under ``"trained"``: the tokens the index held when its
quantizer was trained, and (IVF kinds) the 1st percentile of a training token's
best inner product with any coarse centroid. A build and a compaction with
``retrain`` write it; an add, a delete, a merge and a compaction without
``retrain`` carry it unchanged. An index written before it existed has none,
and reports its growth as unknown.

:func:`measure_growth` compares with now: the growth factor (tokens now over
tokens then), the imbalance of the inverted lists (largest over mean, and the
coefficient of variation), and the share of a bounded, seeded sample of stored
tokens whose best centroid similarity is below the recorded percentile (about
1% when the quantizer fits the data; more as tokens of a new distribution
arrive). ``flat`` and ``hnsw`` indexes have no lists and no centroids: growth only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from storage.errors import CorruptIndex
from storage.token_index import TokenIndexPlan, training_rows

if TYPE_CHECKING:
    from storage.snapshot import StoreSnapshot

__all__ = [
    "FAR_PERCENTILE",
    "FAR_SAMPLE_MAX",
    "GROWTH_WARN_FACTOR",
    "TRAINED_KEY",
    "Growth",
    "TrainingRecord",
    "best_centroid_similarity",
    "growth_factor",
    "list_sizes",
    "measure_growth",
    "measure_training",
    "training_of",
    "warning_line",
]

GROWTH_WARN_FACTOR = 2.0
"""Past this many times the tokens its quantizer was trained on, an add warns and
``verify`` reports a warning. xtr-warp-rs warns at the same point; retraining at
each doubling (``compact --retrain``) rewrites the index at most about twice its
final size in all, and issue 20 measured 12x growth losing a fifth of recall."""
FAR_SAMPLE_MAX = 16_384
"""At most this many stored tokens are sampled (seeded) for the far-token share,
so ``info`` stays fast at any size (one inner product per token and centroid)."""
FAR_PERCENTILE = 1.0
"""The percentile of the training tokens' best centroid similarity recorded as the
threshold: a fresh index has about this share (in percent) of far tokens."""
TRAINED_KEY = "trained"
"""The key of the manifest's ``token_index`` record that holds the training record."""
_SEED = 0


@dataclass(frozen=True, kw_only=True)
class TrainingRecord:
    """What an index looked like when its quantizer was trained."""

    tokens: int
    """Tokens the index held (for a shard: the shard held) at training."""
    far_similarity: float | None = None
    """IVF kinds: the :data:`FAR_PERCENTILE` percentile of a training token's best
    inner product with any coarse centroid (None for ``flat`` and ``hnsw``)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": self.tokens}
        if self.far_similarity is not None:
            out["far_similarity"] = self.far_similarity
        return out

    @classmethod
    def from_dict(cls, raw: Any, plan: TokenIndexPlan, where: str) -> TrainingRecord:
        """The record as a manifest holds it, checked (:class:`CorruptIndex`): a count of
        tokens, and a finite similarity exactly when the kind is IVF and that count is
        not 0 (an empty shard of a sharded build has no tokens to measure)."""
        if not isinstance(raw, dict) or type(raw.get("tokens")) is not int or raw["tokens"] < 0:
            raise CorruptIndex(
                f"{where}: token_index.{TRAINED_KEY} is {raw!r}, not a record of the tokens "
                "held at training"
            )
        tokens = raw["tokens"]
        measured = plan.kind.startswith("ivf") and tokens > 0
        want = {"tokens", "far_similarity"} if measured else {"tokens"}
        if set(raw) != want:
            raise CorruptIndex(
                f"{where}: token_index.{TRAINED_KEY} has fields {sorted(raw)}; a {plan.kind} "
                f"index of {tokens} tokens records {sorted(want)}"
            )
        sim: Any = raw.get("far_similarity")
        if measured and (type(sim) not in (int, float) or not math.isfinite(sim)):
            raise CorruptIndex(
                f"{where}: token_index.{TRAINED_KEY}.far_similarity is {sim!r}, not a finite number"
            )
        return cls(tokens=tokens, far_similarity=float(sim) if measured else None)


def training_of(
    token_index: dict[str, Any], plan: TokenIndexPlan, where: str
) -> TrainingRecord | None:
    """The training record of a manifest's ``token_index`` record, checked; None for an
    index written before records existed."""
    if TRAINED_KEY not in token_index:
        return None
    return TrainingRecord.from_dict(token_index[TRAINED_KEY], plan, where)


def best_centroid_similarity(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """Each vector's best inner product with any coarse centroid of the IVF ``index``."""
    quantizer = faiss.extract_index_ivf(index).quantizer
    sims, _ = quantizer.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return np.asarray(sims[:, 0], dtype=np.float64)


def list_sizes(parts: list[tuple[faiss.Index, int]]) -> np.ndarray:
    """Tokens in each inverted list, summed over the IVF ``parts`` of a token index."""
    total: np.ndarray | None = None
    for part, _ in parts:
        invlists = faiss.extract_index_ivf(part).invlists
        assert invlists is not None  # an IVF index always has its lists
        sizes = np.array([invlists.list_size(i) for i in range(invlists.nlist)], np.int64)
        total = sizes if total is None else total + sizes
    return total if total is not None else np.zeros(0, np.int64)


def _sample_rows(n_tokens: int, rows: np.ndarray | None = None) -> np.ndarray:
    """A sorted, seeded sample of at most :data:`FAR_SAMPLE_MAX` of ``rows`` (default:
    every row)."""
    pool = np.arange(n_tokens) if rows is None else rows
    if len(pool) <= FAR_SAMPLE_MAX:
        return np.asarray(pool, np.int64)
    rng = np.random.default_rng(_SEED)
    return np.sort(rng.choice(pool, size=FAR_SAMPLE_MAX, replace=False)).astype(np.int64)


def measure_training(
    plan: TokenIndexPlan, index: faiss.Index | None, tokens: Any
) -> TrainingRecord:
    """The record of a quantizer just trained for (or shared with) the rows of
    ``tokens`` (a reader with ``n_tokens`` and ``spans``): a bounded sample of the
    rows it was trained on, decoded as a reader decodes them."""
    n = int(tokens.n_tokens)
    if not plan.kind.startswith("ivf") or index is None or n == 0:
        return TrainingRecord(tokens=n)
    trained_on = training_rows(n, plan.train_sample or n, plan.seed)
    rows = _sample_rows(n, trained_on)
    vectors = tokens.spans(rows, np.ones(len(rows), np.int64))
    sims = best_centroid_similarity(index, vectors)
    return TrainingRecord(tokens=n, far_similarity=float(np.percentile(sims, FAR_PERCENTILE)))


@dataclass(frozen=True, kw_only=True)
class Growth:
    """How far an index has grown since its quantizer was trained (see the module)."""

    tokens: int
    """Token rows in the index now (deleted documents' too, until a compaction)."""
    tokens_at_training: int | None
    """None: the index was written before training was recorded (growth unknown)."""
    factor: float | None
    lists: int | None = None
    """Inverted lists (IVF kinds; None for ``flat`` and ``hnsw``)."""
    list_largest_over_mean: float | None = None
    list_cv: float | None = None
    """Coefficient of variation of the list sizes (standard deviation over mean)."""
    far_token_share: float | None = None
    """Share of sampled tokens whose best centroid similarity is below
    ``far_similarity`` (about ``FAR_PERCENTILE`` / 100 when the quantizer is fresh)."""
    far_similarity: float | None = None
    far_sample: int = 0

    @property
    def outgrown(self) -> bool:
        """Whether the growth is past :data:`GROWTH_WARN_FACTOR`."""
        return self.factor is not None and self.factor > GROWTH_WARN_FACTOR

    @property
    def verdict(self) -> str:
        """One line for people: unknown, within the threshold, or outgrown."""
        if self.factor is None:
            return (
                "unknown: the index records no training size (written before it was "
                "recorded); compact --retrain records it"
            )
        if self.outgrown:
            return warning_line(self.factor)
        return f"ok: {self.factor:.2f}x the tokens its quantizer was trained on"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens_at_training": self.tokens_at_training,
            "tokens": self.tokens,
            "factor": self.factor,
            "warn_factor": GROWTH_WARN_FACTOR,
            "lists": self.lists,
            "list_largest_over_mean": self.list_largest_over_mean,
            "list_cv": self.list_cv,
            "far_token_share": self.far_token_share,
            "far_token_share_at_training": (
                FAR_PERCENTILE / 100 if self.far_similarity is not None else None
            ),
            "far_similarity": self.far_similarity,
            "far_sample": self.far_sample,
            "verdict": self.verdict,
        }


def warning_line(factor: float) -> str:
    """What an add past the threshold, ``verify`` and ``info`` say."""
    return (
        f"outgrown: the index holds {factor:.2f}x the tokens its quantizer was trained on "
        f"(past {GROWTH_WARN_FACTOR:g}x), which costs recall; retrain it with "
        "compact --retrain (Index.compact(retrain=True))"
    )


def growth_factor(tokens: int, record: TrainingRecord | None) -> float | None:
    """Tokens now over tokens at training; None when unknown (no record, or none then)."""
    if record is None or record.tokens == 0:
        return None
    return tokens / record.tokens


def measure_growth(snapshot: StoreSnapshot) -> Growth:
    """The growth of an opened index: from its manifest, its inverted lists, and a
    seeded sample of at most :data:`FAR_SAMPLE_MAX` stored tokens."""
    manifest = snapshot.manifest
    plan = snapshot.plan
    record = training_of(manifest.token_index, plan, str(snapshot.folder))
    tokens = manifest.tokens
    out: dict[str, Any] = {
        "tokens": tokens,
        "tokens_at_training": record.tokens if record is not None else None,
        "factor": growth_factor(tokens, record),
    }
    if not plan.kind.startswith("ivf"):
        return Growth(**out)
    parts = snapshot.token_index.parts
    sizes = list_sizes(parts)
    mean = float(sizes.mean()) if len(sizes) else 0.0
    out["lists"] = len(sizes)
    if mean > 0:
        out["list_largest_over_mean"] = float(sizes.max()) / mean
        out["list_cv"] = float(sizes.std()) / mean
    if record is not None and record.far_similarity is not None and tokens:
        rows = _sample_rows(tokens)
        vectors = snapshot.tokens.spans(rows, np.ones(len(rows), np.int64))
        sims = best_centroid_similarity(parts[0][0], vectors)
        out["far_token_share"] = float(np.mean(sims < record.far_similarity))
        out["far_similarity"] = record.far_similarity
        out["far_sample"] = len(rows)
    return Growth(**out)
