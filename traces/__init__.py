"""Request traces: canonical Parquet schema, importers, generator and analysis.

This package depends on nothing else in the project.
"""

from traces.errors import TraceError, TraceFormatError
from traces.generator import GeneratorParamError, GeneratorParams, generate_trace
from traces.importers import ImportedTrace, import_azure, import_mooncake
from traces.schema import (
    SCHEMA_VERSION,
    TRACE_SCHEMA,
    iter_trace_batches,
    read_trace,
    read_trace_metadata,
    write_trace,
)
from traces.stats import TokenQuantiles, TraceStats, describe_trace

__all__ = [
    "SCHEMA_VERSION",
    "TRACE_SCHEMA",
    "GeneratorParamError",
    "GeneratorParams",
    "ImportedTrace",
    "TokenQuantiles",
    "TraceError",
    "TraceFormatError",
    "TraceStats",
    "describe_trace",
    "generate_trace",
    "import_azure",
    "import_mooncake",
    "iter_trace_batches",
    "read_trace",
    "read_trace_metadata",
    "write_trace",
]
