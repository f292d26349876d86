"""Request traces: canonical Parquet schema, importers, generator and analysis.

This package depends on nothing else in the project.
"""

from traces.errors import TraceError, TraceFormatError
from traces.schema import (
    SCHEMA_VERSION,
    TRACE_SCHEMA,
    iter_trace_batches,
    read_trace,
    read_trace_metadata,
    write_trace,
)

__all__ = [
    "SCHEMA_VERSION",
    "TRACE_SCHEMA",
    "TraceError",
    "TraceFormatError",
    "iter_trace_batches",
    "read_trace",
    "read_trace_metadata",
    "write_trace",
]
