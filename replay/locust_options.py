"""Command-line options of the emulator's Locust user, and their checked form.

The options are added to Locust's own parser (`--cmx-*`, each also settable by
an environment variable and shown in the web UI's custom parameters), so
Locust accepts them and a Locust master passes them on to its workers.
Locust's `--help` does not list them: Locust 2.47 prints its help before it
loads the locustfile.
This module does not import Locust, so that it can be used and tested without
gevent's monkey-patching.

Values arrive as typed values from the command line, but as strings when they
were edited in the web UI, and as an empty string for an optional field left
blank there. `LocustRunConfig.from_options` accepts all three.

The TLS options name PEM files. Every Locust process checks that they exist
before a run, and every process that sends requests reads them, at the same
path, when its part of the run starts.
"""

from __future__ import annotations

import argparse
import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replay.client import TlsConfig, check_tls_files, tls_from_options
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
    _add_tls_arguments(parser)


def _add_tls_arguments(parser: Any) -> None:
    # Path options stay strings, because Locust sends the options to its
    # workers with msgpack, which cannot encode Path objects.
    parser.add_argument(
        "--cmx-tls",
        action="store_true",
        default=False,
        env_var="CMX_TLS",
        help="connect with TLS, trusting the system's CA certificates (default: "
        "plaintext, unless another --cmx-tls-* option is given)",
    )
    parser.add_argument(
        "--cmx-tls-ca",
        default=None,
        env_var="CMX_TLS_CA",
        metavar="PEM",
        help="connect with TLS, trusting the CA certificates in this file",
    )
    parser.add_argument(
        "--cmx-tls-cert",
        default=None,
        env_var="CMX_TLS_CERT",
        metavar="PEM",
        help="client certificate chain for mutual TLS (with --cmx-tls-key)",
    )
    parser.add_argument(
        "--cmx-tls-key",
        default=None,
        env_var="CMX_TLS_KEY",
        metavar="PEM",
        help="client private key for mutual TLS (with --cmx-tls-cert)",
    )
    parser.add_argument(
        "--cmx-tls-server-name",
        default=None,
        env_var="CMX_TLS_SERVER_NAME",
        metavar="NAME",
        help="name to check against the server's certificate instead of the "
        "--host name",
    )


@dataclass(frozen=True)
class LocustRunConfig:
    """Checked settings of one Locust run against the emulator.

    `target` is the emulator's HOST:PORT (Locust's `--host`). `speedup`
    divides trace time in trace mode. `limit` keeps the first N trace rows and
    `duration_s` the rows within that many seconds of trace time from the
    first. `timeout_s` is each call's deadline. `tls` connects with TLS
    (None: plaintext). Raises ReplayError on an invalid value or a TLS file
    that does not exist.
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
    tls: TlsConfig | None = None

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
        if self.tls is not None:
            check_tls_files(self.tls, "--cmx-tls")

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
            tls=_tls_from_options(options),
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
            "tls": None if self.tls is None else self.tls.describe(),
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


def _tls_from_options(options: argparse.Namespace) -> TlsConfig | None:
    """Return the TLS settings of the `--cmx-tls*` options, None for plaintext."""
    return tls_from_options(
        enabled=_flag("--cmx-tls", options.cmx_tls),
        root_ca=_optional_path(options.cmx_tls_ca),
        client_cert=_optional_path(options.cmx_tls_cert),
        client_key=_optional_path(options.cmx_tls_key),
        server_name=_optional_text(options.cmx_tls_server_name),
        prefix="--cmx-tls",
    )


def _optional_text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _optional_path(value: object) -> Path | None:
    text = _optional_text(value)
    return None if text is None else Path(text)


def _flag(option: str, value: object) -> bool:
    """Convert an on/off option: a bool, or "true"/"false" (also 1/0, yes/no)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ReplayError(f"{option} must be true or false, not {value!r}")


def _check_positive(option: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ReplayError(f"{option} must be a number > 0, not {value}")
