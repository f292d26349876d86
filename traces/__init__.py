"""Request traces: canonical Parquet schema, importers, generator, statistics,
transforms and analysis.

This package depends on nothing else in the project.
"""

from traces.arrivals import ArrivalProcess
from traces.errors import TraceError, TraceFormatError
from traces.export import ExportFormat, export_trace
from traces.generator import (
    GeneratorParamError,
    GeneratorParams,
    GeneratorSummary,
    generate_trace,
    generate_trace_file,
    iter_generated_batches,
)
from traces.generator_params import LengthDistribution
from traces.importers import (
    ColumnMap,
    ImportedTrace,
    ImportOptions,
    ImportReport,
    SourceFormat,
    TimeUnit,
    import_azure,
    import_burstgpt,
    import_mooncake,
    import_trace,
    import_trace_file,
)
from traces.schema import (
    SCHEMA_VERSION,
    TRACE_SCHEMA,
    TraceWriter,
    iter_trace_batches,
    read_trace,
    read_trace_metadata,
    write_trace,
)
from traces.stats import TokenQuantiles, TraceStats, describe_trace
from traces.transforms import (
    TransformError,
    merge_traces,
    sample_trace,
    scale_trace,
    slice_trace,
)

__all__ = [
    "SCHEMA_VERSION",
    "TRACE_SCHEMA",
    "ArrivalProcess",
    "ColumnMap",
    "ExportFormat",
    "GeneratorParamError",
    "GeneratorParams",
    "GeneratorSummary",
    "ImportOptions",
    "ImportReport",
    "ImportedTrace",
    "LengthDistribution",
    "SourceFormat",
    "TimeUnit",
    "TokenQuantiles",
    "TraceError",
    "TraceFormatError",
    "TraceStats",
    "TraceWriter",
    "TransformError",
    "describe_trace",
    "export_trace",
    "generate_trace",
    "generate_trace_file",
    "import_azure",
    "import_burstgpt",
    "import_mooncake",
    "import_trace",
    "import_trace_file",
    "iter_generated_batches",
    "iter_trace_batches",
    "merge_traces",
    "read_trace",
    "read_trace_metadata",
    "sample_trace",
    "scale_trace",
    "slice_trace",
    "write_trace",
]
