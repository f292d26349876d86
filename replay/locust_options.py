"""Command-line options of the emulator's Locust user, and their checked form.

The options are added to Locust's own parser (`--cmx-*`, each also settable by
an environment variable and shown in the web UI's custom parameters), so
`locust --help` lists them and a Locust master passes them on to its workers.
This module does not import Locust, so that it can be used and tested without
gevent's monkey-patching.

Values arrive as typed values from the command line, but as strings when they
were edited in the web UI, and as an empty string for an optional field left
blank there. `LocustRunConfig.from_options` accepts all three.
"""

from __future__ import annotations

import argparse
import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replay.errors import ReplayError
from replay.runner import parse_target

__all__ = [
    "DEFAULT_RESULTS_DIR",
    "LoadMode",
    "LocustRunConfig",
    "add_arguments",
]

DEFAULT_RESULTS_DIR = "locust-results"


class LoadMode(enum.Enum):
    """Load model of the Locust users."""

    # Every trace request is sent once, at its trace time divided by the
    # speed-up, whatever the number of users (open loop).
    TRACE = "trace"
    # Each of Locust's users sends requests drawn at random from the trace, one
    # after the other (closed loop), so the user count sets the concurrency.
    USERS = "users"


def add_arguments(parser: Any) -> None:
    """Add the `--cmx-*` options to Locust's argument parser `parser`.

    `parser` is a `locust.argument_parser.LocustArgumentParser`, whose
    `add_argument` also takes `env_var` and `include_in_web_ui`.
    """
    parser.add_argument(
        "--cmx-trace",
        default="",
        env_var="CMX_TRACE",
        metavar="TRACE.parquet",
        help="canonical trace file (from 'cmx trace import' or 'cmx trace gen'); "
        "every worker needs it at this path",
    )
    parser.add_argument(
        "--cmx-mode",
        default=LoadMode.TRACE.value,
        choices=[mode.value for mode in LoadMode],
        env_var="CMX_MODE",
        help="trace: send each trace request once at its trace time divided by "
        "the speed-up, split across workers; users: each Locust user sends "
        "requests drawn at random from the trace, one after another "
        "(default: trace)",
    )
    parser.add_argument(
        "--cmx-speedup",
        type=float,
        default=1.0,
        env_var="CMX_SPEEDUP",
        help="trace mode: divide trace time by this factor (default: 1)",
    )
    parser.add_argument(
        "--cmx-limit",
        type=int,
        default=None,
        env_var="CMX_LIMIT",
        metavar="N",
        help="use only the first N requests of the trace",
    )
    parser.add_argument(
        "--cmx-duration-s",
        type=float,
        default=None,
        env_var="CMX_DURATION_S",
        metavar="S",
        help="use only the requests in the first S seconds of trace time",
    )
    parser.add_argument(
        "--cmx-results",
        default=DEFAULT_RESULTS_DIR,
        env_var="CMX_RESULTS",
        metavar="DIR",
        help="folder of the per-request Parquet results; each worker writes "
        f"DIR/run_id=RUN/worker_index=I/results.parquet (default: "
        f"{DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument(
        "--cmx-timeout-s",
        type=float,
        default=600.0,
        env_var="CMX_TIMEOUT_S",
        metavar="T",
        help="deadline of each Generate call in seconds (default: 600)",
    )
    parser.add_argument(
        "--cmx-seed",
        type=int,
        default=0,
        env_var="CMX_SEED",
        help="users mode: seed of the random draws from the trace (default: 0)",
    )


@dataclass(frozen=True)
class LocustRunConfig:
    """Checked settings of one Locust run against the emulator.

    `target` is the emulator's HOST:PORT (Locust's `--host`). `speedup`
    divides trace time in trace mode. `limit` keeps the first N trace rows and
    `duration_s` the rows within that many seconds of trace time from the
    first. `timeout_s` is each call's deadline. Raises ReplayError on an
    invalid value.
    """

    target: str
    trace_path: Path
    results_dir: Path
    mode: LoadMode = LoadMode.TRACE
    speedup: float = 1.0
    limit: int | None = None
    duration_s: float | None = None
    timeout_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        parse_target(self.target)
        _check_positive("--cmx-speedup", self.speedup)
        _check_positive("--cmx-timeout-s", self.timeout_s)
        if self.duration_s is not None:
            _check_positive("--cmx-duration-s", self.duration_s)
        if self.limit is not None and self.limit < 1:
            raise ReplayError(
                f"--cmx-limit must be at least 1 request, not {self.limit}"
            )

    @classmethod
    def from_options(
        cls, options: argparse.Namespace, host: str | None
    ) -> LocustRunConfig:
        """Build the config from Locust's parsed options and `host`.

        Raises ReplayError when the host is missing or a value is invalid.
        """
        if not host:
            raise ReplayError(
                "no target given; set Locust's --host to the emulator's "
                "HOST:PORT, for example --host 127.0.0.1:50051"
            )
        if not options.cmx_trace:
            raise ReplayError(
                "no trace given; set --cmx-trace (or CMX_TRACE) to a canonical "
                "trace file"
            )
        mode_text = str(options.cmx_mode)
        try:
            mode = LoadMode(mode_text)
        except ValueError:
            accepted = ", ".join(mode.value for mode in LoadMode)
            raise ReplayError(
                f"--cmx-mode {mode_text!r} is not one of: {accepted}"
            ) from None

        limit = _optional_number("--cmx-limit", options.cmx_limit, int)
        return cls(
            target=host,
            trace_path=Path(str(options.cmx_trace)),
            results_dir=Path(str(options.cmx_results or DEFAULT_RESULTS_DIR)),
            mode=mode,
            speedup=_number("--cmx-speedup", options.cmx_speedup, float),
            limit=None if limit is None else int(limit),
            duration_s=_optional_number(
                "--cmx-duration-s", options.cmx_duration_s, float
            ),
            timeout_s=_number("--cmx-timeout-s", options.cmx_timeout_s, float),
            seed=int(_number("--cmx-seed", options.cmx_seed, int)),
        )

    def to_metadata(self) -> dict[str, object]:
        """Return the settings as JSON-ready values for the results metadata."""
        return {
            "target": self.target,
            "trace_path": str(self.trace_path),
            "mode": self.mode.value,
            # Read by `cmx analyze` to convert rates to trace time. A users-mode
            # run has no trace time, so its rates are per wall second.
            "speedup": self.speedup if self.mode is LoadMode.TRACE else 1.0,
            "limit": self.limit,
            "duration_s": self.duration_s,
            "timeout_s": self.timeout_s,
            "seed": self.seed,
        }


def _number(option: str, value: object, kind: type[int] | type[float]) -> float:
    number = _optional_number(option, value, kind)
    if number is None:
        raise ReplayError(f"{option} needs a value")
    return number


def _optional_number(
    option: str, value: object, kind: type[int] | type[float]
) -> float | None:
    """Convert a number given on the command line or in the web UI."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return kind(value)
    try:
        return kind(str(value).strip())
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ReplayError(f"{option} must be {expected}, not {value!r}") from None


def _check_positive(option: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ReplayError(f"{option} must be a number > 0, not {value}")
