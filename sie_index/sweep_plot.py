"""The sweep plot: quality against search latency, one Pareto front per family.

A sweep's settings fall into families by ``n_rerank``; within a family, a
setting is worth drawing as a choice only when no other is both at least as
fast and at least as good (:func:`pareto_front`). The front is joined in
latency order; dominated settings are drawn faint and unjoined. The exhaustive
MaxSim oracle is a point (its latency is an in-memory scan of every token) and
a faint line at its quality; the base settings and the best settings are
marked and named in the legend, never as text over the points. The quality
axis spans at least :data:`MIN_QUALITY_SPAN`, so that a difference of a few
thousandths does not fill the panel; the latency axis is linear from zero when
every latency is within 10x of the others, logarithmic with 1-2-5 ticks when not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sie_index.sweep import SweepPoint, SweepReport

__all__ = [
    "METRICS",
    "MIN_QUALITY_SPAN",
    "best_point",
    "pareto_front",
    "plot_sweep",
    "quality_limits",
]

METRICS = ("MRR@10", "R@100")
MIN_QUALITY_SPAN = 0.05  # of MRR@10 or R@100: smaller differences look small
QUALITY_EDGE = 0.006  # the quality axis may pass 0 and 1 by this much
LOG_RATIO = 10.0  # latency spans wider than this get a log axis
SETTINGS = ("k_token", "nprobe", "n_rerank")


def pareto_front(points: Sequence[SweepPoint], metric: str) -> list[SweepPoint]:
    """The points no other point dominates, by p50 latency (lower is better) and
    ``metric`` (higher is better), in latency order.

    A point is dominated when another is at least as fast and at least as good
    and strictly better in one of the two; of exact ties the first is kept.
    """
    ordered = sorted(points, key=lambda p: (p.latency_ms["p50"], -p.metrics[metric]))
    front: list[SweepPoint] = []
    for p in ordered:
        # every point before p is at least as fast: p survives only by beating them all
        if not front or p.metrics[metric] > front[-1].metrics[metric]:
            front.append(p)
    return front


def best_point(points: Sequence[SweepPoint], metric: str) -> SweepPoint:
    """The point with the highest ``metric``; of equals, the fastest."""
    return min(points, key=lambda p: (-p.metrics[metric], p.latency_ms["p50"]))


def plot_sweep(report: SweepReport, path: Path) -> Figure:
    """Write a PNG of MRR@10 and R@100 against search p50 latency to ``path``;
    return the figure, for inspection (a bare Figure: no pyplot state, no display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 6.5), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), METRICS, strict=True):
        _draw_panel(ax, report, metric)
    fig.suptitle(
        f"{report.dataset}: quality against search latency, {report.queries} queries "
        f"(lines: Pareto fronts; faint: dominated settings)"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return fig


def _settings(p: SweepPoint) -> str:
    return f"k_token {p.k_token}, nprobe {p.nprobe}, n_rerank {p.n_rerank}"


def _draw_panel(ax: Axes, report: SweepReport, metric: str) -> None:
    families = sorted({p.n_rerank for p in report.points})
    for i, n_rerank in enumerate(families):
        color = f"C{i % 10}"  # the default colour cycle
        family = [p for p in report.points if p.n_rerank == n_rerank]
        front = pareto_front(family, metric)
        on_front = {id(p) for p in front}
        dominated = [p for p in family if id(p) not in on_front]
        ax.plot(
            [p.latency_ms["p50"] for p in front],
            [p.metrics[metric] for p in front],
            "o-",
            color=color,
            lw=1.8,
            ms=6,
            label=f"n_rerank {n_rerank}",
        )
        ax.plot(
            [p.latency_ms["p50"] for p in dominated],
            [p.metrics[metric] for p in dominated],
            "o",
            color=color,
            alpha=0.25,
            ms=5,
        )
    base = next(
        (
            p
            for p in report.points
            if all(getattr(p, k) == report.base_settings.get(k) for k in SETTINGS)
        ),
        None,
    )
    if base is not None:
        ax.plot(
            base.latency_ms["p50"],
            base.metrics[metric],
            "s",
            ms=15,
            mfc="none",
            mec="black",
            mew=1.6,
            label=f"base: {_settings(base)}\n  {metric} {base.metrics[metric]:.4f}, "
            f"{base.latency_ms['p50']:.1f} ms",
        )
    if report.points:
        best = best_point(report.points, metric)
        ax.plot(
            best.latency_ms["p50"],
            best.metrics[metric],
            "*",
            ms=18,
            mfc="gold",
            mec="black",
            mew=1.0,
            zorder=1.9,  # behind the family's own dot, which stays visible inside
            label=f"best: {_settings(best)}\n  {metric} {best.metrics[metric]:.4f}, "
            f"{best.latency_ms['p50']:.1f} ms",
        )
    ex_quality = report.exhaustive_metrics.get(metric)
    ex_latency = report.exhaustive_latency_ms.get("p50", 0.0)
    if ex_quality is not None:
        ax.axhline(ex_quality, color="black", ls=":", lw=1, alpha=0.5)
        if ex_latency > 0:
            ax.plot(
                ex_latency,
                ex_quality,
                "X",
                ms=11,
                color="black",
                label=f"exhaustive MaxSim (in-memory scan)\n  {metric} {ex_quality:.4f}, "
                f"{ex_latency:.1f} ms",
            )
    _set_latency_axis(ax, report)
    ax.set_ylim(*quality_limits(report, metric))
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8.5)


def quality_limits(report: SweepReport, metric: str) -> tuple[float, float]:
    """Y limits holding every point and the oracle, at least
    :data:`MIN_QUALITY_SPAN` apart, inside [0, 1] but for a sliver of
    :data:`QUALITY_EDGE` that keeps a marker at 0 or 1 whole."""
    values = [p.metrics[metric] for p in report.points]
    if metric in report.exhaustive_metrics:
        values.append(report.exhaustive_metrics[metric])
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi - lo < MIN_QUALITY_SPAN:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_QUALITY_SPAN / 2, mid + MIN_QUALITY_SPAN / 2
    floor, ceiling = -QUALITY_EDGE, 1.0 + QUALITY_EDGE
    shift = max(floor - lo, 0.0) - max(hi - ceiling, 0.0)  # slide back inside
    return max(lo + shift, floor), min(hi + shift, ceiling)


def _set_latency_axis(ax: Axes, report: SweepReport) -> None:
    from matplotlib import ticker

    xs = [p.latency_ms["p50"] for p in report.points]
    xs += [v for v in (report.exhaustive_latency_ms.get("p50", 0.0),) if v > 0]
    xs = [x for x in xs if x > 0]
    if not xs:
        return
    lo, hi = min(xs), max(xs)
    if hi / lo <= LOG_RATIO:
        ax.set_xlim(0, hi * 1.08)
        ax.set_xlabel("search latency p50 (ms)")
        return
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.25, hi * 1.25)
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("search latency p50 (ms, log scale)")
