"""Tests of the `cmx trace` commands through the `cmx` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from cmx.cli import main
from traces.schema import read_trace, read_trace_metadata, write_trace

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MOONCAKE_FILE = DATA_DIR / "mooncake_conversation.jsonl"
AZURE_FILE = DATA_DIR / "azure_code_2023.csv"

GOOD_JSON = (
    '{"timestamp": 0, "input_length": 1024, "output_length": 10, "hash_ids": [1, 2]}\n'
)
BAD_JSON = '{"timestamp": 3, "input_length": 0, "output_length": 10, "hash_ids": []}\n'


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real trace {path} is absent (it lives in ../shared/data)")
    return path


def _write_four_rows(path: Path) -> Path:
    table = pa.table(
        {
            "request_id": ["0", "1", "2", "3"],
            "arrival_ms": pa.array([0.0, 500.0, 1500.0, 2000.0]),
            "input_tokens": pa.array([10, 20, 30, 40], type=pa.int64()),
            "output_tokens": pa.array([1, 2, 3, 100], type=pa.int64()),
            "prefix_block_hashes": pa.array([[]] * 4, type=pa.list_(pa.uint64())),
            "block_tokens": pa.array([0] * 4, type=pa.int32()),
            "session_id": pa.nulls(4, type=pa.string()),
        }
    )
    write_trace(table, path)
    return path


def test_import_mooncake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _require(MOONCAKE_FILE)
    output = tmp_path / "mooncake.parquet"

    status = main(
        ["trace", "import", "--format", "mooncake", str(source), "-o", str(output)]
    )

    captured = capsys.readouterr()
    assert status == 0
    assert captured.out == f"wrote 12031 requests to {output}\n"
    assert read_trace(output).num_rows == 12031
    assert read_trace_metadata(output)["source_format"] == "mooncake"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mooncake.parquet"]


def test_import_azure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _require(AZURE_FILE)
    output = tmp_path / "azure.parquet"

    status = main(
        ["trace", "import", "--format", "azure", str(source), "-o", str(output)]
    )

    captured = capsys.readouterr()
    metadata = read_trace_metadata(output)
    assert status == 0
    assert captured.out == f"wrote 8819 requests to {output}\n"
    assert metadata["trace_start"] == "2023-11-16T18:17:03.979960000Z"


def test_bad_row_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(GOOD_JSON + BAD_JSON)
    output = tmp_path / "out.parquet"

    status = main(
        ["trace", "import", "--format", "mooncake", str(source), "-o", str(output)]
    )

    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2
    assert len(lines) == 1
    assert "Traceback" not in captured.err
    assert lines[0].startswith(f"cmx: error: {source}, row 2, field 'input_length'")
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (
            [
                "import",
                "--format",
                "azure",
                "{tmp}/absent.csv",
                "-o",
                "{tmp}/o.parquet",
            ],
            "absent.csv: file not found",
        ),
        (["info", "{tmp}/absent.parquet"], "absent.parquet: trace file not found"),
        (["info", "{tmp}/bad.jsonl"], "not a readable Parquet file"),
        (
            ["gen", "-o", "{tmp}/g.parquet", "--burstiness", "0"],
            "invalid generator parameter burstiness=0.0",
        ),
        (
            ["gen", "-o", "{tmp}/g.parquet", "--requests", "0"],
            "invalid generator parameter requests=0",
        ),
        (
            ["gen", "-o", "{tmp}/g.parquet", "--max-input-tokens", "8"],
            "invalid generator parameter max_input_tokens=8",
        ),
        (["gen", "-o", "{tmp}/missing/g.parquet"], "output folder"),
        (["gen", "-o", "{tmp}"], "output is a folder"),
        (
            ["gen", "-o", "{tmp}/g.parquet", "--prefix-reuse", "1.5"],
            "invalid generator parameter prefix_reuse_ratio=1.5",
        ),
        (
            ["gen", "-o", "{tmp}/g.parquet", "--seed", "-3"],
            "invalid generator parameter seed=-3",
        ),
        (
            [
                "import",
                "--format",
                "mooncake",
                "--map",
                "arrival=t",
                "{tmp}/bad.jsonl",
                "-o",
                "{tmp}/o.parquet",
            ],
            "--map, --time-unit and --block-tokens apply to --format csv or jsonl",
        ),
        (
            ["import", "--format", "csv", "--map", "arrival", "{tmp}/bad.jsonl"]
            + ["-o", "{tmp}/o.parquet"],
            "invalid --map 'arrival': expected FIELD=COLUMN",
        ),
        (
            ["import", "--format", "azure", "--time-zone", "Nowhere/City"]
            + ["{tmp}/bad.jsonl", "-o", "{tmp}/o.parquet"],
            "invalid time zone 'Nowhere/City'",
        ),
        (
            ["scale", "{tmp}/bad.jsonl", "-o", "{tmp}/o.parquet", "--speedup", "0"],
            "invalid speedup 0.0",
        ),
        (
            ["merge", "{tmp}/bad.jsonl", "-o", "{tmp}/o.parquet"],
            "merge needs at least 2 traces, got 1",
        ),
        (
            ["sample", "{tmp}/absent.parquet", "-o", "{tmp}/o.parquet", "--requests"]
            + ["3"],
            "absent.parquet: trace file not found",
        ),
    ],
    ids=[
        "missing input",
        "missing trace",
        "not parquet",
        "burstiness",
        "requests",
        "max input",
        "missing folder",
        "folder output",
        "reuse target",
        "negative seed",
        "map with mooncake",
        "map syntax",
        "time zone",
        "speedup",
        "merge one",
        "sample missing",
    ],
)
def test_bad_input_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    fragment: str,
) -> None:
    (tmp_path / "bad.jsonl").write_text(GOOD_JSON + BAD_JSON)
    argv = ["trace"] + [part.replace("{tmp}", str(tmp_path)) for part in arguments]

    status = main(argv)

    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    assert status == 2
    assert len(lines) == 1
    assert lines[0].startswith("cmx: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in captured.err


def test_existing_output_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "trace.parquet"
    output.write_text("keep me")
    argv = ["trace", "gen", "-o", str(output), "--requests", "10"]

    status_without_force = main(argv)
    content_after_reject = output.read_text()
    status_with_force = main([*argv, "--force"])

    captured = capsys.readouterr()
    assert status_without_force == 2
    assert content_after_reject == "keep me"
    assert f"{output}: file exists; pass --force to replace it" in captured.err
    assert status_with_force == 0
    assert read_trace(output).num_rows == 10


def test_gen_same_seed_same_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "a.parquet"
    second = tmp_path / "b.parquet"
    options = ["--seed", "3", "--requests", "200", "--rate", "2", "--burstiness", "1"]

    main(["trace", "gen", "-o", str(first), *options])
    main(["trace", "gen", "-o", str(second), *options])

    captured = capsys.readouterr()
    assert captured.out == (
        f"wrote 200 requests to {first}\nwrote 200 requests to {second}\n"
    )
    assert first.read_bytes() == second.read_bytes()
    assert read_trace_metadata(first)["generator_seed"] == "3"


def test_gen_small_max_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "short.parquet"

    status = main(["trace", "gen", "-o", str(output), "--max-input-tokens", "1000"])

    capsys.readouterr()
    input_tokens = read_trace(output).column("input_tokens").to_pylist()
    assert status == 0
    assert max(input_tokens) <= 1000


def test_info_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_four_rows(tmp_path / "four.parquet")

    status = main(["trace", "info", str(path), "--json"])

    captured = capsys.readouterr()
    stats = json.loads(captured.out)
    assert status == 0
    assert len(captured.out.splitlines()) == 1
    assert stats["rows"] == 4
    assert stats["duration_s"] == 2.0
    assert stats["mean_rate_per_s"] == 2.0
    assert stats["input_tokens"]["p50"] == 25.0
    assert stats["input_tokens"]["max"] == 40
    assert stats["output_tokens"]["max"] == 100


def test_info_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_four_rows(tmp_path / "four.parquet")

    status = main(["trace", "info", str(path)])

    captured = capsys.readouterr()
    assert status == 0
    assert "2.000 s" in captured.out
    assert "2.000 requests/s" in captured.out
    assert "p99" in captured.out
    assert "39.7" in captured.out
    assert "70.9" in captured.out


def test_import_skips_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "burst.csv"
    source.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "1,ChatGPT,10,0,10,API log\n"
        "2,ChatGPT,10,5,15,API log\n"
    )
    output = tmp_path / "burst.parquet"
    argv = ["trace", "import", "--format", "burstgpt", str(source), "-o", str(output)]

    status = main([*argv, "--skip-bad-rows"])

    captured = capsys.readouterr()
    assert status == 0
    assert captured.out.splitlines() == [
        f"wrote 1 requests to {output}",
        "skipped 1 of 2 rows:",
        "  1 row: failed request in 'Response tokens' (first at row 1: 0 response "
        "tokens, which BurstGPT records for a failed request; pass --skip-bad-rows "
        "to skip failed requests)",
    ]
    assert read_trace_metadata(output)["skipped_rows"] == "1"


def test_import_generic_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "logs.csv"
    source.write_text("when,p,c\n2024-01-01 08:00:00,5,1\n2024-01-01 08:00:02.5,6,2\n")
    output = tmp_path / "logs.parquet"

    status = main(
        ["trace", "import", "--format", "csv", str(source), "-o", str(output)]
        + ["--map", "arrival=when", "--map", "input_tokens=p"]
        + ["--map", "output_tokens=c", "--time-unit", "iso", "--time-zone", "+08:00"]
    )

    capsys.readouterr()
    table = read_trace(output)
    metadata = read_trace_metadata(output)
    assert status == 0
    assert table.column("arrival_ms").to_pylist() == [0.0, 2500.0]
    assert metadata["trace_start"] == "2024-01-01T00:00:00.000000000Z"
    assert metadata["time_unit"] == "iso"


def test_export_then_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "g.parquet"
    exported = tmp_path / "g.jsonl"
    back = tmp_path / "back.parquet"
    main(["trace", "gen", "-o", str(trace), "--requests", "50"])

    export_status = main(
        ["trace", "export", str(trace), "--format", "jsonl", "-o", str(exported)]
    )
    import_status = main(
        ["trace", "import", "--format", "jsonl", str(exported), "-o", str(back)]
    )

    capsys.readouterr()
    assert export_status == 0
    assert import_status == 0
    assert read_trace(back).equals(read_trace(trace))


def test_gen_options_reach_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "onoff.parquet"

    status = main(
        ["trace", "gen", "-o", str(output), "--requests", "3000", "--arrival", "onoff"]
        + ["--on-s", "2", "--off-s", "8", "--input-dist", "pareto"]
        + ["--input-alpha", "1.2", "--mean-turns", "1", "--prefix-reuse", "0.4"]
    )

    capsys.readouterr()
    params = json.loads(read_trace_metadata(output)["generator_params"])
    assert status == 0
    assert params["arrival_process"] == "onoff"
    assert params["on_mean_s"] == 2.0
    assert params["off_mean_s"] == 8.0
    assert params["input_distribution"] == "pareto"
    assert params["input_pareto_alpha"] == 1.2
    assert params["prefix_reuse_ratio"] == 0.4

    main(["trace", "info", str(output), "--json"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["prefix_reuse_ratio"] == pytest.approx(0.4, abs=0.01)
    assert stats["sessions"] == 3000


def test_transform_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write_four_rows(tmp_path / "four.parquet")
    other = _write_four_rows(tmp_path / "other.parquet")
    commands = [
        ["slice", str(source), "--start-s", "0.5", "--end-s", "2"],
        ["scale", str(source), "--speedup", "2", "--rate-factor", "2"],
        ["merge", str(source), str(other)],
        ["sample", str(source), "--requests", "2", "--seed", "1"],
    ]
    expected_rows = [2, 8, 8, 2]

    for command, rows in zip(commands, expected_rows, strict=True):
        output = tmp_path / f"{command[0]}.parquet"
        status = main(["trace", *command, "-o", str(output)])

        captured = capsys.readouterr()
        assert status == 0
        assert captured.out == f"wrote {rows} requests to {output}\n"
        assert read_trace(output).num_rows == rows


def test_info_json_new_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_four_rows(tmp_path / "four.parquet")

    status = main(["trace", "info", str(path), "--json", "--no-reuse"])

    stats = json.loads(capsys.readouterr().out)
    assert status == 0
    assert stats["interarrival_cv"] == pytest.approx(0.125**0.5)
    assert stats["peak_rate_per_s"] == 2
    assert stats["prefix_reuse_ratio"] is None
    assert stats["sessions"] == 0
    assert stats["input_tokens_total"] == 100
