"""The sweep plot: Pareto fronts, the oracle as a point, marked settings, honest axes."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from sie_index.sweep import SweepPoint, SweepReport
from sie_index.sweep_plot import best_point, pareto_front, plot_sweep

BASE = {"k_token": 64, "nprobe": 16, "n_rerank": 64}


def point(
    latency: float, mrr: float, *, k_token: int = 16, nprobe: int = 8, n_rerank: int = 32
) -> SweepPoint:
    return SweepPoint(
        k_token=k_token,
        nprobe=nprobe,
        n_rerank=n_rerank,
        metrics={"MRR@10": mrr, "R@100": min(1.0, mrr + 0.4)},
        latency_ms={"p50": latency, "p95": 2 * latency},
    )


def grid_report(*, latency_scale: float, exhaustive_ms: float = 95.0) -> SweepReport:
    """The debian-pkgs shape: MRR@10 within 0.0014 over the whole grid."""
    points = [
        point(
            latency_scale * (1 + k_token * nprobe / 256 + n_rerank / 64),
            0.5124 + 0.0014 * k_token * nprobe * n_rerank / (128 * 16 * 128),
            k_token=k_token,
            nprobe=nprobe,
            n_rerank=n_rerank,
        )
        for k_token, nprobe, n_rerank in itertools.product(
            (16, 32, 64, 128), (8, 16), (32, 64, 128)
        )
    ]
    return SweepReport(
        dataset="synthetic",
        queries=50,
        base_settings=BASE,
        points=points,
        exhaustive_metrics={"MRR@10": 0.5140, "R@100": 0.95},
        exhaustive_latency_ms={"p50": exhaustive_ms, "p95": exhaustive_ms, "mean": exhaustive_ms},
    )


def test_the_front_drops_dominated_points_and_runs_in_latency_order() -> None:
    fast_poor = point(2.0, 0.40)
    slow_good = point(9.0, 0.60, k_token=128)
    middle = point(5.0, 0.50, k_token=32)
    dominated = point(6.0, 0.45, k_token=64)  # slower than `middle` and worse
    same_speed_worse = point(5.0, 0.48, nprobe=16)  # as fast as `middle`, worse
    slower_no_better = point(7.0, 0.50, nprobe=32)  # slower than `middle`, only equal
    front = pareto_front(
        [slow_good, dominated, same_speed_worse, fast_poor, slower_no_better, middle], "MRR@10"
    )
    assert front == [fast_poor, middle, slow_good]


def test_the_front_of_one_metric_is_not_that_of_another() -> None:
    a = SweepPoint(
        k_token=1,
        nprobe=1,
        n_rerank=1,
        metrics={"MRR@10": 0.5, "R@100": 0.9},
        latency_ms={"p50": 1.0},
    )
    b = SweepPoint(
        k_token=2,
        nprobe=1,
        n_rerank=1,
        metrics={"MRR@10": 0.4, "R@100": 0.95},
        latency_ms={"p50": 2.0},
    )
    assert pareto_front([b, a], "MRR@10") == [a]
    assert pareto_front([b, a], "R@100") == [a, b]
    assert pareto_front([], "MRR@10") == []


def test_the_best_point_is_the_fastest_of_the_best() -> None:
    slow = point(9.0, 0.6, k_token=128)
    fast = point(3.0, 0.6, k_token=32)
    assert best_point([point(1.0, 0.5), slow, fast], "MRR@10") is fast


def xs(line: Line2D) -> list[float]:
    return np.asarray(line.get_xdata(), dtype=float).tolist()


def ys(line: Line2D) -> list[float]:
    return np.asarray(line.get_ydata(), dtype=float).tolist()


def lines(ax: Axes, prefix: str) -> list[Line2D]:
    return [line for line in ax.get_lines() if str(line.get_label()).startswith(prefix)]


def test_the_plot_draws_fronts_the_oracle_point_and_marked_settings(tmp_path: Path) -> None:
    report = grid_report(latency_scale=1.0)
    path = tmp_path / "deep" / "sweep.png"
    fig = plot_sweep(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mrr_ax, recall_ax = fig.axes[:2]
    for ax, metric in ((mrr_ax, "MRR@10"), (recall_ax, "R@100")):
        (oracle,) = lines(ax, "exhaustive")
        assert xs(oracle) == [95.0]
        assert ys(oracle) == [report.exhaustive_metrics[metric]]
        (base,) = lines(ax, "base:")
        assert "k_token 64, nprobe 16, n_rerank 64" in str(base.get_label())
        (best,) = lines(ax, "best:")
        top = best_point(report.points, metric)
        assert xs(best) == [top.latency_ms["p50"]]
        # one joined line per n_rerank family, through its front only, fastest first
        for n_rerank in (32, 64, 128):
            (family,) = lines(ax, f"n_rerank {n_rerank}")
            front = pareto_front([p for p in report.points if p.n_rerank == n_rerank], metric)
            assert xs(family) == [p.latency_ms["p50"] for p in front]
            assert len(front) < 8  # the grid has dominated settings, drawn apart
    # the legend names the settings: no text drawn over the points
    assert not mrr_ax.texts and not recall_ax.texts


def test_a_tiny_quality_difference_gets_a_wide_axis(tmp_path: Path) -> None:
    report = grid_report(latency_scale=1.0)
    fig = plot_sweep(report, tmp_path / "sweep.png")
    lo, hi = fig.axes[0].get_ylim()
    assert hi - lo >= 0.05 - 1e-9  # MIN_QUALITY_SPAN
    values = [p.metrics["MRR@10"] for p in report.points] + [0.5140]
    assert lo < min(values) and max(values) < hi


def test_a_quality_of_one_stays_on_the_axis(tmp_path: Path) -> None:
    report = grid_report(latency_scale=1.0)  # R@100 reaches 0.9138, the oracle 0.95
    perfect = [point(p.latency_ms["p50"], 0.6, n_rerank=p.n_rerank) for p in report.points[:3]]
    fig = plot_sweep(replace(report, points=report.points + perfect), tmp_path / "s.png")
    lo, hi = fig.axes[1].get_ylim()
    assert 1.0 < hi <= 1.01 and hi - lo >= 0.05 - 1e-9  # MIN_QUALITY_SPAN


def test_a_wide_latency_span_gets_a_log_axis_with_several_labels(tmp_path: Path) -> None:
    fig = plot_sweep(grid_report(latency_scale=1.0, exhaustive_ms=400.0), tmp_path / "s.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    assert lo <= 2.0 and hi >= 400.0
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert len([t for t in labels if t]) >= 4, labels


def test_a_narrow_latency_span_gets_a_linear_axis_from_zero(tmp_path: Path) -> None:
    fig = plot_sweep(grid_report(latency_scale=10.0, exhaustive_ms=40.0), tmp_path / "s.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    lo, hi = ax.get_xlim()
    assert lo == 0 and hi >= 110.0  # the slowest setting, 10 x (1 + 8 + 2) ms


def test_an_oracle_without_latency_is_a_line_only(tmp_path: Path) -> None:
    fig = plot_sweep(grid_report(latency_scale=1.0, exhaustive_ms=0.0), tmp_path / "s.png")
    assert not lines(fig.axes[0], "exhaustive")
    assert any(ys(line) == [0.5140, 0.5140] for line in fig.axes[0].get_lines())
