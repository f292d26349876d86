"""Small traces and deployments shared by the sweep and search tests.

`uniform_trace` requests arrive every `spacing_ms` with equal lengths, so on
`SMALL_DEPLOYMENT` (one prefill NPU) each has the same TTFT until the
prefill instance saturates, near 1.38 requests/s for 4,096-token prompts.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from emulator.profiles import DeploymentConfig
from traces.schema import TRACE_SCHEMA, write_trace

SMALL_DEPLOYMENT = DeploymentConfig(
    prefill_instances=1,
    prefill_npus_per_instance=1,
    decode_instances=1,
    decode_npus_per_instance=16,
)


def uniform_trace(
    path: Path,
    requests: int = 120,
    spacing_ms: float = 2000.0,
    input_tokens: int = 4096,
    output_tokens: int = 32,
) -> Path:
    """Write a trace of equal requests `spacing_ms` apart; return its path."""
    table = pa.table(
        {
            "request_id": [f"r{i}" for i in range(requests)],
            "arrival_ms": [i * spacing_ms for i in range(requests)],
            "input_tokens": [input_tokens] * requests,
            "output_tokens": [output_tokens] * requests,
            "prefix_block_hashes": [[i, i + 1] for i in range(requests)],
            "block_tokens": [512] * requests,
            "session_id": [f"s{i % 3}" for i in range(requests)],
        },
        schema=TRACE_SCHEMA,
    )
    write_trace(table, path)
    return path
