"""Capacity planning: rate sweeps and deployment searches in virtual time.

`run_sweep` simulates one deployment at several request rates. It finds the
largest rate that meets the SLOs and where the system saturates.
`run_search` simulates a grid of deployments under an NPU budget, ranks
them and flags the Pareto front of throughput per NPU against latency.
Points run in parallel and are cached on disk (`PointRunner`). The
commands are `cmx sweep` and `cmx search` (`emulator.planning.cli`).
"""

from emulator.planning.metrics import PointMetrics, SaturationTest, SloTargets
from emulator.planning.points import LoadPoint, PointResult, PointRunner, TraceSource
from emulator.planning.scaling import RateScaling, scale_trace
from emulator.planning.search import SearchConfig, SearchResult, run_search
from emulator.planning.sweep import SweepConfig, SweepResult, run_sweep

__all__ = [
    "LoadPoint",
    "PointMetrics",
    "PointResult",
    "PointRunner",
    "RateScaling",
    "SaturationTest",
    "SearchConfig",
    "SearchResult",
    "SloTargets",
    "SweepConfig",
    "SweepResult",
    "TraceSource",
    "run_search",
    "run_sweep",
    "scale_trace",
]
