"""Figures of the HTML report, drawn with matplotlib and returned as inline SVG.

Figures are built with `matplotlib.figure.Figure`, without pyplot, so no
global figure state or GUI backend is involved. Text is drawn as paths
(`svg.fonttype = path`), so the SVG needs no font files, and the SVG ids use
a fixed salt and no date, so the same data gives the same bytes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "cache_figure",
    "cdf_figure",
    "instances_figure",
    "slo_heatmap_figure",
    "timeseries_figure",
]

logger = logging.getLogger(__name__)

_SVG_SETTINGS: dict[Any, Any] = {"svg.fonttype": "path", "svg.hashsalt": "cmx-report"}
# No date, so the same data gives the same bytes, and no creator or type
# entries, whose URLs could be mistaken for links.
_SVG_METADATA: dict[str, Any] = {
    "Date": None,
    "Creator": None,
    "Format": None,
    "Type": None,
}
_BURST_COLOR = "#f4a261"
# A CDF whose values span more than this ratio gets a logarithmic x axis.
_LOG_SCALE_RATIO = 20.0
_CDF_LABELS = {
    "ttft_ms": "TTFT (ms)",
    "tpot_ms": "TPOT (ms)",
    "e2e_ms": "end-to-end (ms)",
}


def _to_svg(figure: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context(_SVG_SETTINGS):
        figure.savefig(buffer, format="svg", metadata=_SVG_METADATA)
    text = buffer.getvalue()
    # Keep only the <svg> element so the markup can sit inside HTML.
    return text[text.index("<svg") :]


def cdf_figure(samples: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """Plot the latency CDFs of each run.

    `samples[metric][run]` are the metric's quantiles at evenly spaced
    probabilities from 0 to 1. The x axis is logarithmic when the largest
    positive value exceeds 20 times the smallest.
    """
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    axes_row = figure.subplots(1, len(_CDF_LABELS), squeeze=False)[0]
    for axes, (metric, label) in zip(axes_row, _CDF_LABELS.items(), strict=True):
        by_run = samples.get(metric, {})
        _plot_cdf(axes, by_run)
        axes.set_xlabel(label)
        axes.set_ylabel("share of ok requests")
        axes.set_ylim(0, 1)
        axes.grid(True, alpha=0.3)
        if len(by_run) > 1:
            axes.legend(fontsize="small")
    return _to_svg(figure)


def _plot_cdf(axes: Axes, by_run: Mapping[str, Sequence[float]]) -> None:
    positive = [value for values in by_run.values() for value in values if value > 0]
    for run, values in by_run.items():
        if not values:
            continue
        count = len(values)
        probabilities = (
            [index / (count - 1) for index in range(count)] if count > 1 else [1.0]
        )
        axes.plot(values, probabilities, label=run, drawstyle="default")
    if not positive:
        axes.text(0.5, 0.5, "no values", ha="center", transform=axes.transAxes)
        return
    if max(positive) / min(positive) > _LOG_SCALE_RATIO:
        axes.set_xscale("log")
    else:
        # Five ticks at most, so that five-digit labels do not overlap.
        axes.xaxis.set_major_locator(MaxNLocator(nbins=5))


def timeseries_figure(rows: Sequence[Mapping[str, Any]], window_s: float) -> str:
    """Plot one run's time series, with burst windows shaded.

    `rows` are the `timeseries` query's rows of one run, in window order.
    """
    figure = Figure(figsize=(12, 8), layout="constrained")
    axes_list = figure.subplots(4, 1, sharex=True)
    starts = [row["window_start_s"] for row in rows]
    panels: list[tuple[str, list[tuple[str, str]]]] = [
        ("arrivals (requests/s)", [("requests_per_s", "arrival rate")]),
        ("requests in flight", [("in_flight", "time-averaged")]),
        ("output tokens/s", [("output_tokens_per_s", "ok requests' tokens")]),
        ("TTFT (ms)", [("ttft_p50_ms", "p50"), ("ttft_p99_ms", "p99")]),
    ]
    for axes, (ylabel, series) in zip(axes_list, panels, strict=True):
        for column, label in series:
            values = [_nan_for_none(row[column]) for row in rows]
            axes.step(starts, values, where="post", label=label)
        _shade_bursts(axes, rows, window_s)
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        if len(series) > 1:
            axes.legend(fontsize="small", loc="upper right")
    axes_list[-1].set_xlabel(
        f"trace time (s from the first arrival), {window_s:g} s windows; "
        "shaded: burst windows"
    )
    return _to_svg(figure)


def _shade_bursts(
    axes: Axes, rows: Sequence[Mapping[str, Any]], window_s: float
) -> None:
    for row in rows:
        if row["is_burst"]:
            start = row["window_start_s"]
            axes.axvspan(start, start + window_s, color=_BURST_COLOR, alpha=0.35, lw=0)


def _nan_for_none(value: object) -> float:
    # matplotlib leaves a gap at NaN, which is how a window without values
    # should look. The query results contain no NaN.
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


def slo_heatmap_figure(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """Plot SLO attainment of one run by prompt-length x output-length bucket.

    `rows` are the `slo` query's rows of one run; the 'all' rows are left out.
    Each cell shows the attainment and the number of requests.
    """
    cells = [
        row
        for row in rows
        if row["input_bucket"] != "all" and row["output_bucket"] != "all"
    ]
    inputs = _sorted_buckets(row["input_bucket"] for row in cells)
    outputs = _sorted_buckets(row["output_bucket"] for row in cells)
    grid = [[float("nan")] * len(outputs) for _ in inputs]
    counts = [[0] * len(outputs) for _ in inputs]
    for row in cells:
        i, j = inputs.index(row["input_bucket"]), outputs.index(row["output_bucket"])
        grid[i][j] = row["attainment"]
        counts[i][j] = row["requests"]

    figure = Figure(figsize=(7, 1.2 + 0.5 * max(len(inputs), 1)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(len(inputs)):
        for j in range(len(outputs)):
            if counts[i][j]:
                text = f"{grid[i][j]:.0%}\nn={counts[i][j]}"
                axes.text(j, i, text, ha="center", va="center", fontsize="small")
    axes.set_xticks(range(len(outputs)), outputs)
    axes.set_yticks(range(len(inputs)), inputs)
    axes.set_xlabel("output tokens")
    axes.set_ylabel("prompt tokens")
    axes.set_title(title, fontsize="medium")
    figure.colorbar(image, ax=axes, label="SLO attainment")
    return _to_svg(figure)


def cache_figure(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """Plot one run's ideal reuse and cache hit rate per reuse bucket."""
    buckets = [row for row in rows if row["reuse_bucket"] != "all"]
    labels = [row["reuse_bucket"] for row in buckets]
    positions = list(range(len(buckets)))
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    axes = figure.subplots()
    width = 0.4
    ideal = [_zero_for_none(row["ideal_reuse"]) for row in buckets]
    hits = [_zero_for_none(row["hit_rate"]) for row in buckets]
    axes.bar([p - width / 2 for p in positions], ideal, width, label="ideal reuse")
    axes.bar([p + width / 2 for p in positions], hits, width, label="cache hit rate")
    axes.set_xticks(positions, labels)
    axes.set_xlabel("ideal prefix reuse of the prompt (bucket)")
    axes.set_ylabel("share of prompt tokens")
    axes.set_ylim(0, 1)
    axes.set_title(title, fontsize="medium")
    axes.legend(fontsize="small")
    axes.grid(True, axis="y", alpha=0.3)
    return _to_svg(figure)


def instances_figure(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """Plot one run's ok requests per prefill and per decode instance."""
    figure = Figure(figsize=(10, 3), layout="constrained")
    axes_pair = figure.subplots(1, 2, squeeze=False)[0]
    for axes, role in zip(axes_pair, ("prefill", "decode"), strict=True):
        placed = [row for row in rows if row["role"] == role]
        axes.bar(
            [str(row["instance"]) for row in placed],
            [row["requests"] for row in placed],
        )
        axes.set_xlabel(f"{role} instance")
        axes.set_ylabel("ok requests")
        axes.grid(True, axis="y", alpha=0.3)
        if not placed:
            axes.text(
                0.5, 0.5, "no instance ids", ha="center", transform=axes.transAxes
            )
    figure.suptitle(title, fontsize="medium")
    return _to_svg(figure)


def _zero_for_none(value: object) -> float:
    return 0.0 if value is None else float(value)  # type: ignore[arg-type]


def _sorted_buckets(labels: Iterable[str]) -> list[str]:
    """Sort bucket labels such as '[1024, 4096)' by lower edge, others last."""

    def lower_edge(label: str) -> float:
        if label.startswith("["):
            return float(label[1:].split(",")[0])
        return float("inf")

    return sorted(set(labels), key=lambda label: (lower_edge(label), label))
