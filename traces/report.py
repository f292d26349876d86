"""`cmx report`: a self-contained HTML page about one or more runs.

The page contains the summary, latency CDFs, time series with burst windows
shaded, SLO attainment by prompt-length and output-length bucket, cache hit
rates against the trace's ideal reuse, load per instance, send lag and each
run's configuration. Figures are inline SVG and the styles are inline CSS;
the page has no scripts and no links outside itself, so it opens without a
network connection. Every number comes from the canned queries of
`traces.queries`, with their definitions.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traces.analysis import Analysis, QueryResult, parse_param
from traces.analyze_cli import print_source_warnings
from traces.errors import TraceError
from traces.output_formats import format_cell
from traces.queries import STATUS_OK, get_query

__all__ = ["ReportOptions", "build_report", "register", "render_report", "run"]

logger = logging.getLogger(__name__)

# Quantiles of each latency at evenly spaced probabilities, for the CDFs.
CDF_SQL = """
SELECT
    run,
    quantile_cont(ttft_ms, $probabilities) FILTER (WHERE status = $ok) AS ttft_ms,
    quantile_cont(tpot_ms, $probabilities) FILTER (WHERE status = $ok) AS tpot_ms,
    quantile_cont(e2e_ms, $probabilities) FILTER (WHERE status = $ok) AS e2e_ms
FROM measured_results
GROUP BY run
ORDER BY run
"""
CDF_POINTS = 201

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child, th:first-child { text-align: left; }
th { background: #f3f3f3; }
svg { max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.9em; }
nav a { margin-right: 1em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
.scroll { overflow-x: auto; }
"""


@dataclass(frozen=True)
class ReportOptions:
    """Settings of a report: time-series window, burst factor and SLOs."""

    window_s: float = 10.0
    burst_factor: float = 2.0
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = 50.0
    title: str | None = None


def build_report(
    results_paths: str | Path | Sequence[str | Path],
    output_path: str | Path,
    *,
    trace_path: str | Path | None = None,
    options: ReportOptions | None = None,
) -> Analysis:
    """Write the HTML report of `results_paths` to `output_path`.

    Returns the (closed) Analysis, whose `source` and `traces` tell which
    files were skipped and which runs had no trace. Raises TraceFormatError
    when no results file is readable, AnalysisError for an option out of
    range and TraceError when the output cannot be written.
    """
    options = options or ReportOptions()
    with Analysis(results_paths, trace_path=trace_path) as analysis:
        page = render_report(analysis, options)
    try:
        Path(output_path).write_text(page, encoding="utf-8")
    except OSError as error:
        raise TraceError(f"cannot write {output_path}: {error.strerror}") from None
    logger.info("wrote the report to %s", output_path)
    return analysis


def render_report(analysis: Analysis, options: ReportOptions) -> str:
    """Return the report page of the runs behind `analysis` as HTML text.

    The figure functions import matplotlib on first use, which keeps it out
    of every other `cmx` command's start-up time.
    """
    slo_params = {
        "ttft_slo_ms": options.ttft_slo_ms,
        "tpot_slo_ms": options.tpot_slo_ms,
    }
    window_params = {"window_s": options.window_s, "burst_factor": options.burst_factor}
    summary = analysis.run_query("summary")
    percentiles = analysis.run_query("percentiles")
    timeseries = analysis.run_query("timeseries", window_params)
    slo = analysis.run_query("slo", slo_params)
    instances = analysis.run_query("instances")
    send_lag = analysis.run_query("send_lag")
    cache = analysis.run_query("cache") if analysis.traces.available else None
    cdf = analysis.run_sql(CDF_SQL, _cdf_params())

    sections = [
        _section("summary", "Summary", _summary_body(summary)),
        _section(
            "latency",
            "Latency distributions",
            _cdf_body(cdf) + _table(percentiles),
        ),
        _section(
            "timeseries",
            "Time series",
            _timeseries_body(timeseries, options),
        ),
        _section("slo", "SLO attainment", _slo_body(slo, options)),
        _section("cache", "Prefix cache", _cache_body(cache, analysis)),
        _section("instances", "Load per instance", _instances_body(instances)),
        _section("send-lag", "Send lag", _send_lag_body(send_lag)),
        _section("config", "Runs and files", _config_body(analysis)),
    ]
    title = options.title or f"cmx report: {', '.join(analysis.source.patterns)}"
    return _page(title, analysis, sections)


def _cdf_params() -> dict[str, object]:
    step = 1 / (CDF_POINTS - 1)
    return {
        "probabilities": [index * step for index in range(CDF_POINTS)],
        "ok": STATUS_OK,
    }


def _page(
    title: str, analysis: Analysis, sections: Sequence[tuple[str, str, str]]
) -> str:
    nav = " ".join(
        f'<a href="#{anchor}">{html.escape(heading)}</a>'
        for anchor, heading, _ in sections
    )
    body = "\n".join(
        f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>\n{content}</section>'
        for anchor, heading, content in sections
    )
    created = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    runs = ", ".join(analysis.source.runs)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Runs: {html.escape(runs)}. Created {created} by cmx report.
Latencies are emulated and cover ok requests outside any warm-up or
cool-down; percentiles interpolate linearly between ranks (DuckDB
quantile_cont, numpy's default). Rates are per second of trace time.</p>
<nav>{nav}</nav>
{body}
</body>
</html>
"""


def _section(anchor: str, heading: str, content: str) -> tuple[str, str, str]:
    return anchor, heading, content


def _summary_body(summary: QueryResult) -> str:
    return _table(summary, transpose=True)


def _cdf_body(cdf: QueryResult) -> str:
    from traces.report_plots import cdf_figure

    samples: dict[str, dict[str, list[float]]] = {}
    for row in cdf.to_rows():
        for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
            values = row[metric]
            samples.setdefault(metric, {})[row["run"]] = list(values or [])
    if not samples:
        return '<p class="note">No requests.</p>'
    note = (
        '<p class="note">Each curve is the share of ok requests at or below a '
        f"latency, drawn through {CDF_POINTS} evenly spaced percentiles.</p>"
    )
    return note + cdf_figure(samples)


def _timeseries_body(result: QueryResult, options: ReportOptions) -> str:
    from traces.report_plots import timeseries_figure

    by_run = _rows_by_run(result)
    if not by_run:
        return '<p class="note">No requests.</p>'
    parts = []
    for run, rows in by_run.items():
        bursts = sum(1 for row in rows if row["is_burst"])
        parts.append(
            f'<h3>{html.escape(run)}</h3><p class="note">{bursts} of {len(rows)} '
            f"windows of {options.window_s:g} s are bursts (arrivals at least "
            f"{options.burst_factor:g} times the run's mean per window).</p>"
        )
        parts.append(timeseries_figure(rows, options.window_s))
    return "\n".join(parts)


def _slo_body(result: QueryResult, options: ReportOptions) -> str:
    from traces.report_plots import slo_heatmap_figure

    ttft = (
        "not checked" if options.ttft_slo_ms is None else f"{options.ttft_slo_ms:g} ms"
    )
    tpot = (
        "not checked" if options.tpot_slo_ms is None else f"{options.tpot_slo_ms:g} ms"
    )
    parts = [
        f'<p class="note">TTFT SLO: {ttft}; TPOT SLO: {tpot}. Attainment is the '
        "share of all requests (failed ones included) that are ok and meet every "
        "SLO; goodput is such requests per second of trace time.</p>"
    ]
    for run, rows in _rows_by_run(result).items():
        parts.append(slo_heatmap_figure(rows, f"SLO attainment, {run}"))
    parts.append(_details("All buckets", _table(result)))
    return "\n".join(parts)


def _cache_body(result: QueryResult | None, analysis: Analysis) -> str:
    from traces.report_plots import cache_figure

    if result is None:
        reasons = "; ".join(
            f"{run}: {reason}" for run, reason in analysis.traces.missing.items()
        )
        return (
            '<p class="note">No trace, so no ideal reuse to compare with '
            f"({html.escape(reasons)}).</p>"
        )
    parts = [
        '<p class="note">Ideal reuse: share of prompt tokens in blocks whose hash '
        "appeared in an earlier request of the trace (an infinite cache). Hit "
        "rate: cached tokens reported by the emulator over prompt tokens.</p>"
    ]
    for run, rows in _rows_by_run(result).items():
        parts.append(cache_figure(rows, f"Prefix reuse and cache hits, {run}"))
    parts.append(_table(result))
    return "\n".join(parts)


def _instances_body(result: QueryResult) -> str:
    from traces.report_plots import instances_figure

    by_run = _rows_by_run(result)
    if not by_run:
        return '<p class="note">No ok request carries an instance id.</p>'
    parts = [instances_figure(rows, run) for run, rows in by_run.items()]
    parts.append(_details("Per-instance table", _table(result)))
    return "\n".join(parts)


def _send_lag_body(result: QueryResult) -> str:
    return (
        '<p class="note">How much later than scheduled the replayer sent each '
        "request (wall ms); large values mean the client, not the emulator, "
        "limited the load.</p>" + _table(result)
    )


def _config_body(analysis: Analysis) -> str:
    source = analysis.source
    parts = []
    for run in source.runs:
        config = json.dumps(dict(source.run_config(run)), indent=2, sort_keys=True)
        files = source.files_of(run)
        trace = analysis.traces.paths.get(run) or analysis.traces.missing.get(run, "")
        parts.append(
            f"<h3>{html.escape(run)}</h3>"
            f"<p>{len(files)} file(s); speed-up {source.speedup(run):g}; trace: "
            f"{html.escape(trace)}</p><pre>{html.escape(config)}</pre>"
        )
        parts.append(_details("Files", _list(item.path for item in files)))
    if source.skipped:
        skipped = (f"{item.path}: {item.reason}" for item in source.skipped)
        parts.append(f"<h3>Skipped files</h3>{_list(skipped)}")
    if source.warnings:
        parts.append(f"<h3>Warnings</h3>{_list(source.warnings)}")
    return "\n".join(parts)


def _rows_by_run(result: QueryResult) -> dict[str, list[dict[str, Any]]]:
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in result.to_rows():
        by_run.setdefault(row["run"], []).append(row)
    return by_run


def _table(result: QueryResult, transpose: bool = False) -> str:
    rows = result.to_rows()
    columns = result.columns
    if not rows:
        return '<p class="note">No rows.</p>'
    if transpose:
        header = "".join(f"<th>{html.escape(str(row['run']))}</th>" for row in rows)
        body = "".join(
            f"<tr><td>{html.escape(name)}</td>"
            + "".join(f"<td>{html.escape(format_cell(row[name]))}</td>" for row in rows)
            + "</tr>"
            for name in columns[1:]
        )
        return _scrolling(f"<table><tr><th>metric</th>{header}</tr>{body}</table>")
    header = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(format_cell(row[name]))}</td>" for name in columns)
        + "</tr>"
        for row in rows
    )
    return _scrolling(f"<table><tr>{header}</tr>{body}</table>")


def _scrolling(table: str) -> str:
    # Wide tables scroll inside the page instead of widening it.
    return f'<div class="scroll">{table}</div>'


def _details(summary: str, content: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{content}</details>"


def _list(items: Any) -> str:
    return (
        "<ul>"
        + "".join(f"<li>{html.escape(str(item))}</li>" for item in items)
        + "</ul>"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `report` subcommand to the `cmx` parser."""
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of one or more runs",
        description=(
            "Write an HTML page with the summary, latency CDFs, time series with "
            "bursts shaded, SLO attainment by bucket, cache hit rates against "
            "reuse, load per instance and the run configuration. The page has "
            "no scripts or outside links, so it opens offline."
        ),
    )
    parser.add_argument(
        "results", nargs="+", metavar="RESULTS", help="results file, directory or glob"
    )

    parser.add_argument("--output", "-o", required=True, metavar="REPORT.html")
    parser.add_argument(
        "--trace",
        metavar="TRACE.parquet",
        help="trace of the runs (default: the trace_path in each run's config)",
    )

    defaults = ReportOptions()
    parser.add_argument(
        "--window-s",
        default=str(defaults.window_s),
        help=f"time-series window in trace seconds (default {defaults.window_s:g})",
    )
    parser.add_argument(
        "--burst-factor",
        default=str(defaults.burst_factor),
        help=(
            "a window is a burst when its arrivals reach this multiple of the "
            f"run's mean (default {defaults.burst_factor:g})"
        ),
    )
    parser.add_argument(
        "--ttft-slo-ms", default="none", help="TTFT SLO in ms (default: none)"
    )
    parser.add_argument(
        "--tpot-slo-ms", default="50", help="TPOT SLO in ms (default: 50)"
    )
    parser.add_argument("--title", help="page title (default: from the paths)")

    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and return the exit status."""
    options = ReportOptions(
        window_s=_option(args.window_s, "timeseries", "window_s"),
        burst_factor=_option(args.burst_factor, "timeseries", "burst_factor"),
        ttft_slo_ms=_option(args.ttft_slo_ms, "slo", "ttft_slo_ms"),
        tpot_slo_ms=_option(args.tpot_slo_ms, "slo", "tpot_slo_ms"),
        title=args.title,
    )
    analysis = build_report(
        args.results, args.output, trace_path=args.trace, options=options
    )
    print_source_warnings(analysis)
    for run_label, reason in analysis.traces.missing.items():
        print(
            f"cmx: warning: run {run_label} has no trace rows: {reason}",
            file=sys.stderr,
        )
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _option(value: str, query_name: str, param_name: str) -> Any:
    """Parse a command-line value with the rules of a query parameter."""
    query = get_query(query_name)
    param = next(item for item in query.params if item.name == param_name)
    return parse_param(param, value)
