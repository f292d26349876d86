"""Self-contained HTML pages of a sweep or a search, with inline SVG plots.

The pages load nothing from the network: styles are inline and the plots
are SVG drawn by matplotlib (Agg, no display needed). The same results give
the same page byte for byte, because matplotlib's SVG ids are salted with a
fixed string and the date is left out.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from emulator.planning.points import TraceSource
from emulator.planning.search import SearchResult, deployment_to_mapping
from emulator.planning.sweep import SweepResult

__all__ = ["write_search_page", "write_sweep_page"]

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 90em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; }
tr.saturated td { color: #b00; }
tr.best td { font-weight: bold; background: #eef7ee; }
.note { color: #555; }
"""
_OK_COLOUR = "#2a7"
_FAIL_COLOUR = "#d80"
_SATURATED_COLOUR = "#c22"


def write_sweep_page(result: SweepResult, source: TraceSource, path: Path) -> None:
    """Write the page of a rate sweep: findings, two plots and the points."""
    best = result.best
    findings = [
        f"SLOs: {html.escape(result.config.slo.describe())}.",
        _max_rate_sentence(result),
        _saturation_sentence(result),
    ]
    sections = [
        _paragraphs(findings),
        _svg(_goodput_figure(result)),
        _svg(_latency_figure(result)),
        _sweep_table(result),
    ]
    title = f"Rate sweep of {source.path.name}"
    if best is None:
        title += " (no point meets the SLOs)"
    _write_page(path, title, _trace_line(source), sections)


def write_search_page(
    result: SearchResult, source: TraceSource, path: Path, top: int = 20
) -> None:
    """Write the page of a deployment search: Pareto plot and ranking."""
    best = result.best
    ranked = sum(entry.rank is not None for entry in result.ranking)
    skipped = ", ".join(f"{count} {reason}" for reason, count in result.skipped.items())
    findings = [
        f"SLOs: {html.escape(result.config.slo.describe())}.",
        f"{len(result.deployments)} deployments at rate factors "
        f"{', '.join(f'{f:g}' for f in sorted(set(result.config.rate_factors)))}; "
        f"{ranked} meet the SLOs at some factor"
        + (f"; skipped: {html.escape(skipped)}." if skipped else "."),
    ]
    if best is not None and best.best_point is not None:
        point = best.best_point
        findings.append(
            f"Best: deployment {best.deployment_id} ({point.npus} NPUs) at rate "
            f"factor {point.result.point.rate_factor:g}: "
            f"{point.goodput_tokens_per_s_per_npu:,.1f} goodput tokens/s per NPU."
        )
    sections = [
        _paragraphs(findings),
        _svg(_pareto_figure(result)),
        _ranking_table(result, top),
    ]
    title = f"Deployment search on {source.path.name}"
    _write_page(path, title, _trace_line(source), sections)


def _write_page(path: Path, title: str, subtitle: str, sections: Iterable[str]) -> None:
    body = "\n".join(sections)
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p class='note'>{subtitle}</p>"
        f"\n{body}\n</body></html>\n"
    )
    path.write_text(page)


def _trace_line(source: TraceSource) -> str:
    window = []
    if source.limit is not None:
        window.append(f"first {source.limit} requests")
    if source.duration_s is not None:
        window.append(f"first {source.duration_s:g} s")
    text = f"Trace {source.path} (SHA-256 {source.sha256[:12]}…)"
    if window:
        text += ", " + " and ".join(window)
    return html.escape(text) + ". Rates are per second of trace time."


def _max_rate_sentence(result: SweepResult) -> str:
    best = result.best
    if best is None:
        return "No point meets the SLOs, not even the lowest rate."
    offered = best.metrics.offered_rps or 0.0
    text = (
        f"Largest rate meeting the SLOs: factor {best.rate_factor:g} "
        f"({offered:,.2f} requests/s offered, "
        f"{best.metrics.goodput_rps:,.2f} requests/s goodput)"
    )
    if not result.limit_found:
        return text + "; every point meets them, so the limit lies higher."
    assert result.max_slo_index is not None
    following = result.points[result.max_slo_index + 1]
    return text + f"; the next point, factor {following.rate_factor:g}, does not."


def _saturation_sentence(result: SweepResult) -> str:
    if result.saturation_index is None:
        return "No point is saturated."
    point = result.points[result.saturation_index]
    return (
        f"Saturated from factor {point.rate_factor:g} "
        f"({point.metrics.offered_rps or 0.0:,.2f} requests/s offered): the backlog "
        f"grows {point.metrics.backlog_growth:.1f}-fold and "
        f"{point.metrics.completion_ratio:.0%} of arrivals complete in the second "
        "half. Saturated points are drawn as crosses and count as failing the SLOs."
    )


def _goodput_figure(result: SweepResult) -> Figure:
    figure, axes = _figure()
    points = result.points
    offered = [p.metrics.offered_rps or 0.0 for p in points]
    axes.plot(offered, offered, ":", color="#999", label="offered")
    axes.plot(
        offered, [p.metrics.throughput_rps for p in points], "-", label="throughput"
    )
    axes.plot(offered, [p.metrics.goodput_rps for p in points], "-", label="goodput")
    for point, x in zip(points, offered, strict=True):
        y = point.metrics.goodput_rps
        if point.metrics.saturated:
            axes.plot(x, y, "x", color=_SATURATED_COLOUR, markersize=9)
        else:
            colour = _OK_COLOUR if point.metrics.meets_slo else _FAIL_COLOUR
            axes.plot(x, y, "o", color=colour)
    if result.best is not None:
        axes.axvline(
            result.best.metrics.offered_rps or 0.0,
            color=_OK_COLOUR,
            lw=0.8,
            label="largest SLO rate",
        )
    axes.set_xlabel("offered rate (requests/s)")
    axes.set_ylabel("requests/s")
    axes.set_title("Throughput and goodput against offered rate")
    axes.legend()
    return figure


def _latency_figure(result: SweepResult) -> Figure:
    figure, axes = _figure()
    offered = [p.metrics.offered_rps or 0.0 for p in result.points]
    for metric in ("ttft_ms_p50", "ttft_ms_p99", "e2e_ms_p50", "e2e_ms_p99"):
        values = [getattr(p.metrics, metric) for p in result.points]
        pairs = [(x, v) for x, v in zip(offered, values, strict=True) if v]
        if pairs:
            axes.plot(*zip(*pairs, strict=True), "o-", label=metric, markersize=3)
    axes.set_yscale("log")
    axes.set_xlabel("offered rate (requests/s)")
    axes.set_ylabel("ms")
    axes.set_title("Latency percentiles against offered rate")
    axes.legend()
    return figure


def _pareto_figure(result: SearchResult) -> Figure:
    figure, axes = _figure()
    metric = result.config.latency_metric
    front = []
    for point, on_front in zip(result.points, result.on_front, strict=True):
        x = point.latency_ms(metric)
        if x is None:
            continue
        y = point.output_tokens_per_s_per_npu
        if point.metrics.saturated:
            axes.plot(x, y, "x", color=_SATURATED_COLOUR, alpha=0.5)
        else:
            colour = _OK_COLOUR if point.metrics.meets_slo else "#aaa"
            axes.plot(x, y, "o", color=colour, markersize=4)
        if on_front:
            front.append((x, y))
    if front:
        axes.plot(
            *zip(*sorted(front), strict=True), "-", color="#36c", label="Pareto front"
        )
    best = result.best
    if best is not None and best.best_point is not None:
        x_best = best.best_point.latency_ms(metric)
        if x_best is not None:
            y_best = best.best_point.output_tokens_per_s_per_npu
            axes.plot(x_best, y_best, "*", color="#000", markersize=12, label="best")
    axes.set_xlabel(f"{metric} (ms)")
    axes.set_ylabel("output tokens/s per NPU")
    axes.set_title("Throughput per NPU against latency (green: meets the SLOs)")
    axes.legend()
    return figure


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.add_subplot()
    axes.grid(True, alpha=0.3)
    return figure, axes


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "cmx", "svg.fonttype": "none"}):
        figure.savefig(
            buffer, format="svg", bbox_inches="tight", metadata={"Date": None}
        )
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _sweep_table(result: SweepResult) -> str:
    headers = [
        "factor",
        "offered req/s",
        "throughput req/s",
        "goodput req/s",
        "attainment",
        "TTFT p99 ms",
        "TPOT p99 ms",
        "E2E p99 ms",
        "saturated",
        "meets SLOs",
    ]
    rows = []
    for index, point in enumerate(result.points):
        m = point.metrics
        css = "best" if index == result.max_slo_index else ""
        css = "saturated" if m.saturated else css
        cells = [
            f"{point.rate_factor:g}" + (" (refined)" if point.refined else ""),
            _number(m.offered_rps, 2),
            _number(m.throughput_rps, 2),
            _number(m.goodput_rps, 2),
            f"{m.slo_attainment:.1%}",
            _number(m.ttft_ms_p99, 0),
            _number(m.tpot_ms_p99, 1),
            _number(m.e2e_ms_p99, 0),
            "yes" if m.saturated else "no",
            "yes" if m.meets_slo else "no",
        ]
        rows.append((css, cells))
    return _table(headers, rows)


def _ranking_table(result: SearchResult, top: int) -> str:
    varied = _varied_fields(result)
    metric = result.config.latency_metric
    headers = [
        "rank",
        "id",
        "NPUs",
        *varied,
        "factor",
        "goodput tok/s/NPU",
        "tok/s/NPU",
        metric,
        "attainment",
    ]
    rows = []
    for entry in result.ranking[:top]:
        fields = deployment_to_mapping(entry.deployment)
        point = entry.best_point
        cells = [
            "-" if entry.rank is None else str(entry.rank),
            str(entry.deployment_id),
            str(entry.deployment.npus_used()),
            *(html.escape(str(fields[name])) for name in varied),
        ]
        if point is None:
            cells += ["-", "-", "-", "-", "below target"]
        else:
            cells += [
                f"{point.result.point.rate_factor:g}",
                _number(point.goodput_tokens_per_s_per_npu, 1),
                _number(point.output_tokens_per_s_per_npu, 1),
                _number(point.latency_ms(metric), 0),
                f"{point.metrics.slo_attainment:.1%}",
            ]
        rows.append(("best" if entry.rank == 1 else "", cells))
    note = (
        f"<p class='note'>The first {min(top, len(result.ranking))} of "
        f"{len(result.ranking)} deployments; every point is in the Parquet file.</p>"
    )
    return _table(headers, rows) + note


def _varied_fields(result: SearchResult) -> list[str]:
    mappings = [deployment_to_mapping(d) for d in result.deployments]
    if not mappings:
        return []
    return [
        name
        for name in mappings[0]
        if len({repr(mapping[name]) for mapping in mappings}) > 1
    ]


def _table(headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{css}'>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
        for css, cells in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _paragraphs(lines: Iterable[str]) -> str:
    return "".join(f"<p>{line}</p>" for line in lines)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
