"""`cmx report`: a self-contained HTML page, checked without a browser."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from cmx.cli import main
from tests.traces_analysis.results_files import write_results, write_trace_rows
from traces.report import ReportOptions, build_report

SECTIONS = [
    "summary",
    "latency",
    "timeseries",
    "slo",
    "cache",
    "instances",
    "send-lag",
    "config",
]


def bursty_rows() -> list[dict[str, object]]:
    """Ten requests at 1 s spacing, then ten within one second."""
    arrivals_ms = [1000.0 * index for index in range(10)]
    arrivals_ms += [10_000.0 + 100.0 * index for index in range(10)]
    return [
        {
            "request_id": f"q{index}",
            "arrival_ms": arrival_ms,
            "actual_send_ms": arrival_ms,
            "wall_e2e_ms": 500.0,
            "ttft_ms": 100.0 + index,
            "tpot_ms": 5.0,
            "e2e_ms": 500.0,
            "output_tokens_received": 81,
            "input_tokens": 1000 * (index + 1),
            "cached_tokens": 0,
            "prefill_instance": index % 2,
            "decode_instance": 0,
        }
        for index, arrival_ms in enumerate(arrivals_ms)
    ]


@pytest.fixture
def run_files(tmp_path: Path) -> tuple[Path, Path]:
    trace_rows = [
        {
            "request_id": row["request_id"],
            "arrival_ms": row["arrival_ms"],
            "input_tokens": row["input_tokens"],
            "prefix_block_hashes": [1],
            "block_tokens": 512,
            "session_id": "s",
        }
        for row in bursty_rows()
    ]
    trace = write_trace_rows(tmp_path / "trace.parquet", trace_rows)
    results = write_results(
        tmp_path / "results.parquet", bursty_rows(), speedup=2.0, trace_path=str(trace)
    )
    return results, trace


def external_references(page: str) -> list[str]:
    """Return every src/href/url() target that is not a fragment or data: URI."""
    targets = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    targets += re.findall(r"url\(([^)]*)\)", page)
    return [
        target
        for target in targets
        if not target.startswith("#") and not target.startswith("data:")
    ]


def test_report_sections_and_figures(
    run_files: tuple[Path, Path], tmp_path: Path
) -> None:
    results, _ = run_files
    output = tmp_path / "report.html"
    options = ReportOptions(window_s=1.0, ttft_slo_ms=105.0)

    build_report(results, output, options=options)
    page = output.read_text()

    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page
    # CDFs, one time series, SLO heatmap, cache bars, instance bars.
    assert page.count("<svg") == 5
    assert "TTFT SLO: 105 ms; TPOT SLO: 50 ms." in page
    assert html.escape('"speedup": 2.0') in page


def test_report_marks_bursts(run_files: tuple[Path, Path], tmp_path: Path) -> None:
    results, _ = run_files
    output = tmp_path / "report.html"

    build_report(results, output, options=ReportOptions(window_s=1.0))
    page = output.read_text()

    # 20 arrivals in 11 windows, a mean of 20/11; only the window at 10 s
    # (10 arrivals) reaches twice that. The last request ends at 11.4 s, so
    # 12 windows in all.
    assert "1 of 12 windows of 1 s are bursts" in page


def test_report_is_self_contained(run_files: tuple[Path, Path], tmp_path: Path) -> None:
    results, _ = run_files
    output = tmp_path / "report.html"

    build_report(results, output)
    page = output.read_text()

    assert "<script" not in page
    assert "<link" not in page
    assert "<img" not in page
    assert external_references(page) == []


def test_report_reproducible_figures(
    run_files: tuple[Path, Path], tmp_path: Path
) -> None:
    results, _ = run_files
    first, second = tmp_path / "one.html", tmp_path / "two.html"

    build_report(results, first)
    build_report(results, second)

    def without_date(path: Path) -> str:
        return re.sub(r"Created [^.]* by", "Created by", path.read_text())

    assert without_date(first) == without_date(second)


def test_report_without_trace(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results.parquet", bursty_rows())
    output = tmp_path / "report.html"

    analysis = build_report(results, output)
    page = output.read_text()

    assert not analysis.traces.available
    assert "No trace, so no ideal reuse to compare with" in page
    assert "its run configuration names no trace; pass --trace" in page
    assert page.count("<svg") == 4


def test_report_of_empty_file(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results.parquet", [])
    output = tmp_path / "report.html"

    build_report(results, output)
    page = output.read_text()

    assert page.count("No requests.") == 2
    assert "<svg" not in page


def test_report_escapes_text(tmp_path: Path) -> None:
    results = write_results(tmp_path / "r.parquet", bursty_rows(), run_id="<b>x</b>")
    output = tmp_path / "report.html"

    build_report(results, output, options=ReportOptions(title="A & B"))
    page = output.read_text()

    assert "<title>A &amp; B</title>" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<b>x</b>" not in page


def test_report_command(
    run_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, _ = run_files
    output = tmp_path / "cli.html"

    status = main(["report", str(results), "-o", str(output), "--window-s", "2"])

    assert status == 0
    assert capsys.readouterr().err == f"wrote {output}\n"
    assert "windows of 2 s are bursts" in output.read_text()


def test_report_command_bad_window(
    run_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, _ = run_files

    status = main(
        ["report", str(results), "-o", str(tmp_path / "x.html"), "--window-s", "0"]
    )

    assert status == 2
    assert "window_s = '0' is invalid; expected number > 0" in capsys.readouterr().err
