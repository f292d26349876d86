"""Writers of small results and trace files for the analysis tests."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from replay.results import RESULTS_SCHEMA
from traces.schema import write_trace

# Values of the columns a test row does not set.
RESULT_DEFAULTS: Mapping[str, Any] = {
    "arrival_ms": 0.0,
    "scheduled_send_ms": 0.0,
    "actual_send_ms": 0.0,
    "send_lag_ms": 0.0,
    "input_tokens": 100,
    "output_tokens": 10,
    "output_tokens_received": 10,
    "status": "ok",
    "error": None,
    "ttft_ms": None,
    "tpot_ms": None,
    "e2e_ms": None,
    "wall_ttft_ms": None,
    "wall_e2e_ms": 0.0,
    "queue_ms": None,
    "prefill_ms": None,
    "kv_transfer_ms": None,
    "cached_tokens": None,
    "prefill_instance": None,
    "decode_instance": None,
    "itl_ms_p50": None,
    "itl_ms_p99": None,
    "itl_ms_max": None,
    "normalized_latency_ms": None,
    "concurrency_wait_ms": None,
    "measured": None,
    "slo_met": None,
    "cached_tokens_hbm": None,
    "cached_tokens_pool": None,
    "cache_load_ms": None,
    "faults": [],
}


def results_metadata(speedup: float = 1.0, **run_config: object) -> dict[bytes, bytes]:
    """Return the metadata of a version 1 results file with this run config."""
    config = {"speedup": speedup, **run_config}
    return {
        b"cmx.results.schema_version": b"1",
        b"cmx.results.run_config": json.dumps(config).encode(),
    }


def results_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build a table of RESULTS_SCHEMA; unset columns take RESULT_DEFAULTS."""
    filled = []
    for index, row in enumerate(rows):
        values = {"request_id": f"r{index}", **RESULT_DEFAULTS, **row}
        filled.append(values)
    columns = {
        name: pa.array([row[name] for row in filled], RESULTS_SCHEMA.field(name).type)
        for name in RESULTS_SCHEMA.names
    }
    return pa.table(columns)


def write_results(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    speedup: float = 1.0,
    metadata: Mapping[bytes, bytes] | None = None,
    drop: Sequence[str] = (),
    extra: Mapping[str, pa.Array] | None = None,
    **run_config: object,
) -> Path:
    """Write `rows` as a results file at `path` and return the path.

    `drop` removes columns (as an older writer would have lacked them),
    `extra` adds columns (as a newer writer might) or replaces them, and
    `metadata` replaces the default version 1 metadata built from `speedup`
    and `run_config`.
    """
    table = results_table(rows).drop_columns(list(drop))
    for name, values in (extra or {}).items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, values)
    if metadata is None:
        metadata = results_metadata(speedup, **run_config)
    pq.write_table(table.replace_schema_metadata(dict(metadata)), path)
    return path


def write_trace_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write a canonical trace whose rows set request_id and arrival_ms.

    Unset columns: 10 output tokens, no hashes, block size 0, no session.
    """
    filled = [
        {
            "output_tokens": 10,
            "prefix_block_hashes": [],
            "block_tokens": 0,
            "session_id": None,
            **row,
        }
        for row in rows
    ]
    write_trace(pa.Table.from_pylist(filled), path)
    return path
