"""Tests of the Mooncake and Azure importers, on real and hand-written files."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from traces.errors import TraceError, TraceFormatError
from traces.importers import (
    ColumnMap,
    ImportedTrace,
    ImportOptions,
    SourceFormat,
    TimeUnit,
    import_azure,
    import_burstgpt,
    import_mooncake,
    import_trace,
    import_trace_file,
)
from traces.schema import read_trace, read_trace_metadata

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MOONCAKE_FILE = DATA_DIR / "mooncake_conversation.jsonl"
AZURE_FILE = DATA_DIR / "azure_code_2023.csv"

GOOD_JSON = (
    '{"timestamp": 0, "input_length": 1024, "output_length": 10, "hash_ids": [1, 2]}\n'
)
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD_CSV = "2023-11-16 18:17:03.9799600,4808,10\n"


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real trace {path} is absent (it lives in ../shared/data)")
    return path


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _json_line(**fields: object) -> str:
    parts = []
    for key, value in fields.items():
        parts.append(f'"{key}": {value}')
    return "{" + ", ".join(parts) + "}\n"


def test_mooncake_real_file() -> None:
    path = _require(MOONCAKE_FILE)

    started = time.perf_counter()
    trace = import_mooncake(path)
    elapsed_s = time.perf_counter() - started

    first = trace.table.slice(0, 1).to_pylist()[0]
    assert trace.rows == 12031
    assert first["request_id"] == "0"
    assert first["arrival_ms"] == 0.0
    assert first["input_tokens"] == 6758
    assert first["output_tokens"] == 500
    assert first["prefix_block_hashes"] == list(range(14))
    assert first["block_tokens"] == 512
    assert first["session_id"] is None
    assert trace.metadata["source_format"] == "mooncake"
    assert trace.metadata["source_file"] == "mooncake_conversation.jsonl"
    # Measured at about 0.1 s on a 2-core machine. The bound leaves room for CI.
    assert elapsed_s < 5.0


def test_azure_real_file() -> None:
    path = _require(AZURE_FILE)

    trace = import_azure(path)

    first, second = trace.table.slice(0, 2).to_pylist()
    last = trace.table.slice(trace.rows - 1, 1).to_pylist()[0]
    assert trace.rows == 8819
    assert first["arrival_ms"] == 0.0
    assert first["input_tokens"] == 4808
    assert first["output_tokens"] == 10
    assert first["prefix_block_hashes"] == []
    assert first["block_tokens"] == 0
    # 18:17:04.0319600 - 18:17:03.9799600
    assert second["arrival_ms"] == 52.0
    # 19:14:19.9280160 - 18:17:03.9799600 = 57 min 15.9480560 s
    assert last["arrival_ms"] == pytest.approx(3435948.056, abs=1e-6)
    assert trace.metadata["trace_start"] == "2023-11-16T18:17:03.979960000Z"
    assert trace.metadata["source_format"] == "azure"


def test_imported_trace_round_trip(tmp_path: Path) -> None:
    source = _write(tmp_path, "trace.jsonl", GOOD_JSON)
    output = tmp_path / "trace.parquet"

    import_mooncake(source).write(output)

    table = read_trace(output)
    metadata = read_trace_metadata(output)
    assert table.to_pylist()[0]["prefix_block_hashes"] == [1, 2]
    assert metadata["source_format"] == "mooncake"
    assert metadata["schema_version"] == "1"


def test_mooncake_sorts_out_of_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [
        _json_line(timestamp=10, input_length=1, output_length=1, hash_ids=[]),
        _json_line(timestamp=5, input_length=2, output_length=1, hash_ids=[]),
        _json_line(timestamp=5, input_length=3, output_length=1, hash_ids=[]),
        _json_line(timestamp=20, input_length=4, output_length=1, hash_ids=[]),
    ]
    path = _write(tmp_path, "unsorted.jsonl", "".join(lines))

    with caplog.at_level(logging.WARNING, logger="traces.importers"):
        trace = import_mooncake(path)

    assert trace.table.column("arrival_ms").to_pylist() == [5.0, 5.0, 10.0, 20.0]
    assert trace.table.column("request_id").to_pylist() == ["1", "2", "0", "3"]
    assert trace.table.column("input_tokens").to_pylist() == [2, 3, 1, 4]
    assert "first at row 2" in caplog.text


def test_mooncake_accepts_crlf_and_integral_floats(tmp_path: Path) -> None:
    line = '{"timestamp": 1.5, "input_length": 6758.0, "output_length": 2, '
    line += '"hash_ids": []}\r\n'
    path = _write(tmp_path, "crlf.jsonl", line)

    trace = import_mooncake(path)

    assert trace.table.column("arrival_ms").to_pylist() == [1.5]
    assert trace.table.column("input_tokens").to_pylist() == [6758]


def test_mooncake_blank_lines_keep_numbers(tmp_path: Path) -> None:
    bad = _json_line(timestamp=1, input_length=0, output_length=1, hash_ids=[])
    path = _write(tmp_path, "blank.jsonl", GOOD_JSON + "\n" + bad)

    with pytest.raises(TraceFormatError) as raised:
        import_mooncake(path)

    assert raised.value.row == 3
    assert raised.value.field == "input_length"


def test_mooncake_skips_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "blank.jsonl", GOOD_JSON + "\n" + GOOD_JSON + "\n")

    trace = import_mooncake(path)

    assert trace.rows == 2
    assert trace.table.column("request_id").to_pylist() == ["0", "1"]


def test_azure_keeps_sub_millisecond_digits(tmp_path: Path) -> None:
    rows = "2023-11-16 18:17:03.9799600,10,1\n2023-11-16 18:17:03.9799601,10,1\n"
    path = _write(tmp_path, "fine.csv", AZURE_HEADER + rows)

    trace = import_azure(path)

    # 100 ns apart is 0.0001 ms.
    assert trace.table.column("arrival_ms").to_pylist() == [0.0, 0.0001]


def test_azure_honours_zones(tmp_path: Path) -> None:
    rows = (
        "2023-11-16 18:17:03,10,1\n"
        "2023-11-16T19:17:04+01:00,10,1\n"
        "2023-11-16T18:17:05Z,10,1\n"
    )
    path = _write(tmp_path, "zones.csv", AZURE_HEADER + rows)

    trace = import_azure(path)

    assert trace.table.column("arrival_ms").to_pylist() == [0.0, 1000.0, 2000.0]
    assert trace.metadata["trace_start"] == "2023-11-16T18:17:03.000000000Z"


def test_azure_sorts_out_of_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = (
        "2023-11-16 18:17:01.5,11,1\n"
        "2023-11-16 18:17:01.0,22,1\n"
        "2023-11-16 18:17:02.0,33,1\n"
    )
    path = _write(tmp_path, "unsorted.csv", AZURE_HEADER + rows)

    with caplog.at_level(logging.WARNING, logger="traces.importers"):
        trace = import_azure(path)

    assert trace.table.column("arrival_ms").to_pylist() == [0.0, 500.0, 1000.0]
    assert trace.table.column("request_id").to_pylist() == ["1", "0", "2"]
    assert trace.table.column("input_tokens").to_pylist() == [22, 11, 33]
    assert trace.metadata["trace_start"] == "2023-11-16T18:17:01.000000000Z"
    assert "first at row 2" in caplog.text


def test_azure_ignores_extra_columns(tmp_path: Path) -> None:
    content = "GeneratedTokens,Other,TIMESTAMP,ContextTokens\n"
    content += "7,x,2023-11-16 18:17:03,9\n"
    path = _write(tmp_path, "reordered.csv", content)

    trace = import_azure(path)

    assert trace.table.column("input_tokens").to_pylist() == [9]
    assert trace.table.column("output_tokens").to_pylist() == [7]


MOONCAKE_BAD_ROWS = [
    # (case, second line, field, fragment of the message)
    (
        "missing field",
        '{"timestamp": 5, "output_length": 10, "hash_ids": []}\n',
        "input_length",
        "missing field",
    ),
    (
        "string count",
        _json_line(timestamp=5, input_length='"abc"', output_length=1, hash_ids=[]),
        "input_length",
        "invalid token count 'abc': not a number",
    ),
    (
        "bool count",
        _json_line(timestamp=5, input_length="true", output_length=1, hash_ids=[]),
        "input_length",
        "not a number",
    ),
    (
        "fractional count",
        _json_line(timestamp=5, input_length=10, output_length=10.5, hash_ids=[]),
        "output_length",
        "invalid token count 10.5: not an integer",
    ),
    (
        "zero count",
        _json_line(timestamp=5, input_length=0, output_length=1, hash_ids=[]),
        "input_length",
        "invalid token count 0: expected an integer >= 1",
    ),
    (
        "negative count",
        _json_line(timestamp=5, input_length=1, output_length=-3, hash_ids=[]),
        "output_length",
        "invalid token count -3",
    ),
    (
        "infinite count",
        _json_line(timestamp=5, input_length="Infinity", output_length=1, hash_ids=[]),
        "input_length",
        "not finite",
    ),
    (
        "nan timestamp",
        _json_line(timestamp="NaN", input_length=1, output_length=1, hash_ids=[]),
        "timestamp",
        "invalid timestamp nan",
    ),
    (
        "negative timestamp",
        _json_line(timestamp=-1, input_length=1, output_length=1, hash_ids=[]),
        "timestamp",
        "invalid timestamp -1",
    ),
    (
        "huge timestamp",
        _json_line(timestamp=10**400, input_length=1, output_length=1, hash_ids=[]),
        "timestamp",
        "invalid timestamp 1000",
    ),
    (
        "string timestamp",
        _json_line(timestamp='"0"', input_length=1, output_length=1, hash_ids=[]),
        "timestamp",
        "invalid timestamp '0'",
    ),
    (
        "too many hashes",
        _json_line(
            timestamp=5, input_length=6758, output_length=1, hash_ids=list(range(15))
        ),
        "hash_ids",
        "hash_ids has 15 blocks of 512 tokens but input_length 6758 fills only 14",
    ),
    (
        "negative hash",
        _json_line(timestamp=5, input_length=600, output_length=1, hash_ids=[3, -1]),
        "hash_ids",
        "invalid hash_ids[1] -1",
    ),
    (
        "fractional hash",
        _json_line(timestamp=5, input_length=600, output_length=1, hash_ids=[1.5]),
        "hash_ids",
        "invalid hash_ids[0] 1.5",
    ),
    (
        "hash too large",
        _json_line(timestamp=5, input_length=600, output_length=1, hash_ids=[2**64]),
        "hash_ids",
        "expected an integer in [0, 2**64)",
    ),
    (
        "hashes not a list",
        _json_line(timestamp=5, input_length=600, output_length=1, hash_ids=7),
        "hash_ids",
        "invalid hash_ids 7: expected a list",
    ),
]


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [case[1:] for case in MOONCAKE_BAD_ROWS],
    ids=[case[0] for case in MOONCAKE_BAD_ROWS],
)
def test_mooncake_bad_row(tmp_path: Path, line: str, field: str, fragment: str) -> None:
    path = _write(tmp_path, "bad.jsonl", GOOD_JSON + line + GOOD_JSON)

    with pytest.raises(TraceFormatError) as raised:
        import_mooncake(path)

    message = str(raised.value)
    assert str(path) in message
    assert "row 2" in message
    assert f"field '{field}'" in message
    assert fragment in message
    assert raised.value.row == 2
    assert raised.value.field == field


MOONCAKE_BAD_LINES = [
    # (case, file content, row, fragment of the message)
    ("malformed JSON", GOOD_JSON + '{"timestamp": 0,\n' + GOOD_JSON, 2, "malformed"),
    (
        "truncated last line",
        GOOD_JSON + '{"timestamp": 5, "input_le',
        2,
        "truncated last line",
    ),
    ("not an object", GOOD_JSON + "[1, 2]\n", 2, "expected a JSON object, got list"),
    ("bad first line", "nonsense\n" + GOOD_JSON, 1, "malformed JSON"),
]


@pytest.mark.parametrize(
    ("content", "row", "fragment"),
    [case[1:] for case in MOONCAKE_BAD_LINES],
    ids=[case[0] for case in MOONCAKE_BAD_LINES],
)
def test_mooncake_bad_line(
    tmp_path: Path, content: str, row: int, fragment: str
) -> None:
    path = _write(tmp_path, "bad.jsonl", content)

    with pytest.raises(TraceFormatError) as raised:
        import_mooncake(path)

    message = str(raised.value)
    assert str(path) in message
    assert f", row {row}:" in message
    assert fragment in message
    assert raised.value.row == row


AZURE_BAD_ROWS = [
    # (case, second data row, field, fragment of the message)
    ("missing value", "2023-11-16 18:17:04.0,31\n", "GeneratedTokens", "missing value"),
    ("empty value", "2023-11-16 18:17:04.0,,5\n", "ContextTokens", "missing value"),
    (
        "text count",
        "2023-11-16 18:17:04.0,abc,5\n",
        "ContextTokens",
        "invalid token count 'abc': not a number",
    ),
    (
        "fractional count",
        "2023-11-16 18:17:04.0,12.5,5\n",
        "ContextTokens",
        "not an integer",
    ),
    (
        "zero count",
        "2023-11-16 18:17:04.0,12,0\n",
        "GeneratedTokens",
        "expected an integer >= 1",
    ),
    (
        "negative count",
        "2023-11-16 18:17:04.0,-4,5\n",
        "ContextTokens",
        "invalid token count -4",
    ),
    ("nan count", "2023-11-16 18:17:04.0,nan,5\n", "ContextTokens", "not finite"),
    (
        "infinite count",
        "2023-11-16 18:17:04.0,12,inf\n",
        "GeneratedTokens",
        "not finite",
    ),
    (
        "text timestamp",
        "yesterday,12,5\n",
        "TIMESTAMP",
        "invalid timestamp 'yesterday'",
    ),
    (
        "impossible date",
        "2023-02-30 10:00:00,12,5\n",
        "TIMESTAMP",
        "day is out of range for month",
    ),
    (
        "truncated last line",
        "2023-11-16 18:17:04.0,31",
        "GeneratedTokens",
        "truncated last line",
    ),
]


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [case[1:] for case in AZURE_BAD_ROWS],
    ids=[case[0] for case in AZURE_BAD_ROWS],
)
def test_azure_bad_row(tmp_path: Path, line: str, field: str, fragment: str) -> None:
    path = _write(tmp_path, "bad.csv", AZURE_HEADER + GOOD_CSV + line)

    with pytest.raises(TraceFormatError) as raised:
        import_azure(path)

    message = str(raised.value)
    assert str(path) in message
    assert "row 2" in message
    assert f"field '{field}'" in message
    assert fragment in message
    assert raised.value.row == 2
    assert raised.value.field == field


def test_azure_missing_column(tmp_path: Path) -> None:
    content = "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,5\n"
    path = _write(tmp_path, "bad.csv", content)

    with pytest.raises(TraceFormatError) as raised:
        import_azure(path)

    message = str(raised.value)
    assert str(path) in message
    assert "field 'GeneratedTokens'" in message
    assert "expected TIMESTAMP,ContextTokens,GeneratedTokens" in message


@pytest.mark.parametrize(
    ("importer", "content", "fragment"),
    [
        (import_mooncake, "", "empty file"),
        (import_mooncake, "\n  \n", "empty file"),
        (import_azure, "", "empty file"),
        (import_azure, AZURE_HEADER, "no requests after the header"),
    ],
    ids=["mooncake empty", "mooncake blank", "azure empty", "azure header only"],
)
def test_empty_file(
    tmp_path: Path,
    importer: Callable[[Path], ImportedTrace],
    content: str,
    fragment: str,
) -> None:
    path = _write(tmp_path, "empty.txt", content)

    with pytest.raises(TraceFormatError) as raised:
        importer(path)

    assert str(path) in str(raised.value)
    assert fragment in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"

    with pytest.raises(TraceFormatError) as raised:
        import_mooncake(path)

    assert str(raised.value) == f"{path}: file not found"


def test_invalid_utf8_names_row(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD_JSON.encode() + b'{"timestamp": "\xe9"}\n')

    with pytest.raises(TraceFormatError) as raised:
        import_mooncake(path)

    assert raised.value.row == 2
    assert "invalid UTF-8" in str(raised.value)


BURSTGPT_HEADER = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
)
GOOD_BURSTGPT = "5,ChatGPT,100,20,120,Conversation log\n"
GENERIC_HEADER = "request_id,arrival_ms,input_tokens,output_tokens\n"
GOOD_GENERIC = "a,0,10,1\n"


def _import(
    path: Path, source_format: SourceFormat, **options: object
) -> ImportedTrace:
    return import_trace(path, source_format, ImportOptions(**options))  # type: ignore[arg-type]


# (kind, format, file name, content, row, field, fragment of the message)
BAD_INPUTS = [
    (
        "missing field",
        SourceFormat.MOONCAKE,
        "a.jsonl",
        GOOD_JSON + '{"timestamp": 5, "output_length": 10, "hash_ids": []}\n',
        2,
        "input_length",
        "missing field; each line needs timestamp",
    ),
    (
        "non-numeric count",
        SourceFormat.AZURE,
        "a.csv",
        AZURE_HEADER + GOOD_CSV + "2023-11-16 18:17:04.0,many,5\n",
        2,
        "ContextTokens",
        "invalid token count 'many': not a number",
    ),
    (
        "negative count",
        SourceFormat.BURSTGPT,
        "a.csv",
        BURSTGPT_HEADER + GOOD_BURSTGPT + "6,ChatGPT,-4,5,1,API log\n",
        2,
        "Request tokens",
        "invalid token count -4: expected an integer >= 1",
    ),
    (
        "infinite count",
        SourceFormat.CSV,
        "a.csv",
        GENERIC_HEADER + GOOD_GENERIC + "b,1,inf,1\n",
        2,
        "input_tokens",
        "not finite",
    ),
    (
        "negative time",
        SourceFormat.BURSTGPT,
        "a.csv",
        BURSTGPT_HEADER + GOOD_BURSTGPT + "-1,ChatGPT,1,1,2,API log\n",
        2,
        "Timestamp",
        "invalid timestamp",
    ),
    (
        "non-finite time",
        SourceFormat.JSONL,
        "a.jsonl",
        '{"arrival_ms": 0, "input_tokens": 1, "output_tokens": 1}\n'
        '{"arrival_ms": NaN, "input_tokens": 1, "output_tokens": 1}\n',
        2,
        "arrival_ms",
        "invalid timestamp",
    ),
    (
        "impossible datetime",
        SourceFormat.AZURE,
        "a.csv",
        AZURE_HEADER + GOOD_CSV + "2023-02-30 10:00:00,12,5\n",
        2,
        "TIMESTAMP",
        "day is out of range for month",
    ),
    (
        "failed request",
        SourceFormat.BURSTGPT,
        "a.csv",
        BURSTGPT_HEADER + GOOD_BURSTGPT + "6,GPT-4,10,0,10,API log\n",
        2,
        "Response tokens",
        "0 response tokens, which BurstGPT records for a failed request",
    ),
    (
        "total mismatch",
        SourceFormat.BURSTGPT,
        "a.csv",
        BURSTGPT_HEADER + GOOD_BURSTGPT + "6,GPT-4,10,5,16,API log\n",
        2,
        "Total tokens",
        "Total tokens 16 is not Request tokens plus Response tokens (10 + 5)",
    ),
    (
        "hashes beyond prompt",
        SourceFormat.MOONCAKE,
        "a.jsonl",
        GOOD_JSON
        + _json_line(timestamp=1, input_length=512, output_length=1, hash_ids=[1, 2]),
        2,
        "hash_ids",
        "hash_ids has 2 blocks of 512 tokens but input_length 512 fills only 1",
    ),
    (
        "hashes without block size",
        SourceFormat.JSONL,
        "a.jsonl",
        '{"arrival_ms": 0, "input_tokens": 9, "output_tokens": 1}\n'
        '{"arrival_ms": 1, "input_tokens": 9, "output_tokens": 1, '
        '"prefix_block_hashes": [3]}\n',
        2,
        "prefix_block_hashes",
        "has 1 blocks of 0 tokens but input_tokens 9 fills only 0",
    ),
    (
        "duplicate id",
        SourceFormat.CSV,
        "a.csv",
        GENERIC_HEADER + GOOD_GENERIC + "b,1,10,1\na,2,10,1\n",
        3,
        "request_id",
        "duplicate request id 'a', first at row 1",
    ),
    (
        "truncated JSON line",
        SourceFormat.MOONCAKE,
        "a.jsonl",
        GOOD_JSON + '{"timestamp": 5, "input_le',
        2,
        None,
        "truncated last line",
    ),
    (
        "truncated CSV line",
        SourceFormat.BURSTGPT,
        "a.csv",
        BURSTGPT_HEADER + GOOD_BURSTGPT + "6,ChatGPT,10",
        2,
        "Response tokens",
        "truncated last line",
    ),
    (
        "extra CSV fields",
        SourceFormat.AZURE,
        "a.csv",
        AZURE_HEADER + GOOD_CSV + "2023-11-16 18:17:04.0,1,2,3\n",
        2,
        None,
        "4 fields but the header has 3",
    ),
    (
        "malformed JSON",
        SourceFormat.JSONL,
        "a.jsonl",
        '{"arrival_ms": 0, "input_tokens": 1, "output_tokens": 1}\n{oops}\n',
        2,
        None,
        "malformed JSON",
    ),
    (
        "time beyond int64 ns",
        SourceFormat.MOONCAKE,
        "a.jsonl",
        GOOD_JSON + '{"timestamp": 1e300, "input_length": 1, "output_length": 1, '
        '"hash_ids": []}\n',
        2,
        "timestamp",
        "expected a finite number of milliseconds in [0, 9.223e+12)",
    ),
    (
        "datetime beyond int64 ns",
        SourceFormat.AZURE,
        "a.csv",
        AZURE_HEADER + GOOD_CSV + "1492-10-12 06:00:00,12,5\n",
        2,
        "TIMESTAMP",
        "expected a time from 1677-09-22 to 2262-04-11",
    ),
    (
        "ambiguous local time",
        SourceFormat.AZURE,
        "a.csv",
        AZURE_HEADER + "2023-11-05 01:30:00,5,5\n",
        1,
        "TIMESTAMP",
        "ambiguous or skipped in America/New_York",
    ),
    (
        "invalid ISO time",
        SourceFormat.CSV,
        "a.csv",
        "t,input_tokens,output_tokens\n2024-01-01T00:00:00Z,1,1\nnoon,1,1\n",
        2,
        "t",
        "invalid timestamp 'noon'",
    ),
]


@pytest.mark.parametrize(
    ("source_format", "name", "content", "row", "field", "fragment"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_table(
    tmp_path: Path,
    source_format: SourceFormat,
    name: str,
    content: str,
    row: int,
    field: str | None,
    fragment: str,
) -> None:
    path = _write(tmp_path, name, content)
    options: dict[str, object] = {}
    if fragment.startswith("ambiguous"):
        options["time_zone"] = "America/New_York"
    if source_format is SourceFormat.CSV and name == "a.csv" and "noon" in content:
        options["columns"] = ColumnMap.from_pairs(
            {"arrival": "t"}, time_unit=TimeUnit.ISO
        )

    with pytest.raises(TraceFormatError) as raised:
        _import(path, source_format, **options)

    message = str(raised.value)
    assert message.startswith(f"{path}, row {row}")
    assert fragment in message
    assert raised.value.row == row
    assert raised.value.field == field


def test_bad_input_table_has_fifteen_kinds() -> None:
    assert len({case[0] for case in BAD_INPUTS}) >= 15


def test_skip_bad_rows_counts_reasons(tmp_path: Path) -> None:
    content = BURSTGPT_HEADER + "".join(
        [
            "1,ChatGPT,10,0,10,API log\n",
            "2,ChatGPT,10,5,15,API log\n",
            "3,GPT-4,10,0,10,API log\n",
            "4,GPT-4,x,5,15,API log\n",
            "5,GPT-4,7,5,12,API log\n",
        ]
    )
    path = _write(tmp_path, "burst.csv", content)

    trace = _import(path, SourceFormat.BURSTGPT, skip_bad_rows=True)

    assert trace.report is not None
    skipped = {
        (entry.field, entry.rows, entry.first_row) for entry in trace.report.skipped
    }
    assert trace.rows == 2
    assert trace.report.records == 5
    assert trace.report.skipped_rows == 3
    assert skipped == {("Response tokens", 2, 1), ("Request tokens", 1, 4)}
    assert trace.metadata["skipped_rows"] == "3"
    assert (
        json.loads(trace.metadata["skipped_reasons"])[0]["problem"] == "failed request"
    )
    assert trace.table.column("request_id").to_pylist() == ["1", "4"]


def test_all_rows_bad_is_an_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "burst.csv", BURSTGPT_HEADER + "1,ChatGPT,10,0,10,API log\n"
    )

    with pytest.raises(TraceFormatError) as raised:
        _import(path, SourceFormat.BURSTGPT, skip_bad_rows=True)

    assert "no valid rows: all 1 were skipped (1 row: failed request" in str(
        raised.value
    )


def test_strict_rejects_backwards_time(tmp_path: Path) -> None:
    lines = [
        _json_line(timestamp=10, input_length=1, output_length=1, hash_ids=[]),
        _json_line(timestamp=5, input_length=2, output_length=1, hash_ids=[]),
    ]
    path = _write(tmp_path, "unsorted.jsonl", "".join(lines))

    with pytest.raises(TraceFormatError) as raised:
        _import(path, SourceFormat.MOONCAKE, strict=True)
    skipped = _import(path, SourceFormat.MOONCAKE, strict=True, skip_bad_rows=True)

    assert raised.value.row == 2
    assert "timestamp 5.0 ms is earlier than 10.0 ms at row 1" in str(raised.value)
    assert skipped.table.column("input_tokens").to_pylist() == [1]


def test_burstgpt_keeps_seconds(tmp_path: Path) -> None:
    content = BURSTGPT_HEADER + GOOD_BURSTGPT + "7.0005,GPT-4,3,4,7,API log\n"
    path = _write(tmp_path, "burst.csv", content)

    trace = import_burstgpt(path)

    rows = trace.table.to_pylist()
    assert [row["arrival_ms"] for row in rows] == [5000.0, 7000.5]
    assert [row["input_tokens"] for row in rows] == [100, 3]
    assert [row["output_tokens"] for row in rows] == [20, 4]
    assert trace.metadata["source_format"] == "burstgpt"
    assert "trace_start" not in trace.metadata


def test_burstgpt_without_total_column(tmp_path: Path) -> None:
    content = "Timestamp,Request tokens,Response tokens\n0,3,4\n"
    path = _write(tmp_path, "burst.csv", content)

    trace = import_burstgpt(path)

    assert trace.table.column("output_tokens").to_pylist() == [4]


def test_azure_2024_offsets(tmp_path: Path) -> None:
    rows = (
        "2024-05-10 00:00:00.009930+00:00,2162,5\n"
        "2024-05-10 00:00:00+00:00,76,15\n"
        "2024-05-10 02:00:01.5+02:00,1,1\n"
    )
    path = _write(tmp_path, "azure2024.csv", AZURE_HEADER + rows)

    trace = import_azure(path)

    assert trace.table.column("arrival_ms").to_pylist() == [0.0, 9.93, 1500.0]
    assert trace.table.column("input_tokens").to_pylist() == [76, 2162, 1]
    assert trace.metadata["trace_start"] == "2024-05-10T00:00:00.000000000Z"


def test_time_zone_rule_applies_to_naive(tmp_path: Path) -> None:
    rows = "2023-11-16 18:17:03,10,1\n2023-11-16 10:17:04Z,10,1\n"
    path = _write(tmp_path, "zones.csv", AZURE_HEADER + rows)

    shifted = _import(path, SourceFormat.AZURE, time_zone="+08:00")
    named = _import(path, SourceFormat.AZURE, time_zone="Asia/Shanghai")

    # 18:17:03 at +08:00 is 10:17:03Z, one second before the second row.
    assert shifted.table.column("arrival_ms").to_pylist() == [0.0, 1000.0]
    assert shifted.metadata["trace_start"] == "2023-11-16T10:17:03.000000000Z"
    assert shifted.metadata["time_zone"] == "+08:00"
    assert named.table.column("arrival_ms").to_pylist() == [0.0, 1000.0]


def test_invalid_time_zone(tmp_path: Path) -> None:
    path = _write(tmp_path, "zones.csv", AZURE_HEADER + GOOD_CSV)

    with pytest.raises(TraceError) as raised:
        _import(path, SourceFormat.AZURE, time_zone="Mars/Olympus")

    assert "invalid time zone 'Mars/Olympus'" in str(raised.value)


def test_generic_csv_with_map(tmp_path: Path) -> None:
    content = (
        "id,ts,prompt,completion,conv,blocks\n"
        'x,1700000000.000000250,100,5,c1,"[7, 8]"\n'
        "y,1700000000.5,100,5,,9\n"
    )
    path = _write(tmp_path, "logs.csv", content)
    columns = ColumnMap.from_pairs(
        {
            "request_id": "id",
            "arrival": "ts",
            "input_tokens": "prompt",
            "output_tokens": "completion",
            "session_id": "conv",
            "prefix_block_hashes": "blocks",
        },
        time_unit=TimeUnit.UNIX_S,
        default_block_tokens=64,
    )

    trace = import_trace(path, SourceFormat.CSV, ImportOptions(columns=columns))

    rows = trace.table.to_pylist()
    assert [row["request_id"] for row in rows] == ["x", "y"]
    assert [row["arrival_ms"] for row in rows] == [0.0, 499.99975]
    assert [row["prefix_block_hashes"] for row in rows] == [[7, 8], [9]]
    assert [row["block_tokens"] for row in rows] == [64, 64]
    assert [row["session_id"] for row in rows] == ["c1", None]
    assert trace.metadata["trace_start"] == "2023-11-14T22:13:20.000000250Z"
    assert json.loads(trace.metadata["column_map"])["arrival"] == "ts"


def test_generic_jsonl_relative_seconds(tmp_path: Path) -> None:
    content = (
        '{"t": 0.25, "in": 5, "out": 1, "sid": 42}\n'
        '{"t": 1, "in": 6, "out": 2, "sid": 42}\n'
    )
    path = _write(tmp_path, "logs.jsonl", content)
    columns = ColumnMap.from_pairs(
        {
            "arrival": "t",
            "input_tokens": "in",
            "output_tokens": "out",
            "session_id": "sid",
        },
        time_unit=TimeUnit.S,
    )

    trace = import_trace(path, SourceFormat.JSONL, ImportOptions(columns=columns))

    assert trace.table.column("arrival_ms").to_pylist() == [250.0, 1000.0]
    assert trace.table.column("session_id").to_pylist() == ["42", "42"]
    assert trace.table.column("request_id").to_pylist() == ["0", "1"]
    assert "trace_start" not in trace.metadata


def test_unknown_map_field() -> None:
    with pytest.raises(TraceError) as raised:
        ColumnMap.from_pairs({"prompt": "p"})

    assert "invalid column map field 'prompt'" in str(raised.value)


def test_file_import_matches_memory(tmp_path: Path) -> None:
    lines = [
        _json_line(timestamp=t, input_length=600, output_length=1, hash_ids=[t, t + 1])
        for t in (3, 1, 2, 2, 0)
    ]
    path = _write(tmp_path, "unsorted.jsonl", "".join(lines))
    output = tmp_path / "out.parquet"

    report = import_trace_file(path, SourceFormat.MOONCAKE, output)
    in_memory = import_mooncake(path)

    assert read_trace(output).equals(in_memory.table)
    # Every row after the first is earlier than the first row's 3 ms.
    assert report.rows_written == 5
    assert report.reordered_rows == 4
    assert read_trace_metadata(output)["reordered_rows"] == "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.parquet",
        "unsorted.jsonl",
    ]


def test_file_import_of_real_traces(tmp_path: Path) -> None:
    cases = [
        (MOONCAKE_FILE, SourceFormat.MOONCAKE, 12031),
        (AZURE_FILE, SourceFormat.AZURE, 8819),
    ]
    for source, source_format, rows in cases:
        output = tmp_path / f"{source_format.value}.parquet"

        report = import_trace_file(_require(source), source_format, output)

        assert report.records == rows
        assert report.rows_written == rows
        assert report.skipped == ()
        assert read_trace(output).num_rows == rows


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_JSON.encode())

    trace = import_mooncake(path)

    assert trace.rows == 1
