"""Tests of the Mooncake and Azure importers, on real and hand-written files."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from traces.errors import TraceFormatError
from traces.importers import ImportedTrace, import_azure, import_mooncake
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
