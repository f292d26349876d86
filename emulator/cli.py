"""`cmx serve`: run the emulator as a gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

from emulator.admission import (
    DEFAULT_MAX_ACTIVE_REQUESTS,
    DEFAULT_MAX_QUEUED_PROMPT_TOKENS,
    AdmissionLimits,
)
from emulator.control import load_fault_schedule
from emulator.errors import ConfigError
from emulator.faults import FailedInstancePolicy, FaultError
from emulator.profiles import DeploymentConfig, Profiles, load_hardware, load_model
from emulator.server import ServerOptions, TlsFiles, run_server

__all__ = ["register"]

_HEALTH_TIMEOUT_S = 5.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve` and `health` subcommands."""
    _register_health(subparsers)
    parser = subparsers.add_parser(
        "serve",
        help="run the CloudMatrix384 emulator as a gRPC server",
        description=(
            "Serve cmx.v1.Emulator/Generate, gRPC health checking and server "
            "reflection. Latencies come from the calibrated model of the chosen "
            "hardware, model and deployment; emulated time runs --time-scale "
            "times faster than the wall clock."
        ),
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, loopback only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=50051,
        help="TCP port to bind; 0 picks a free one (default: 50051)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="emulated seconds per wall second; set it to the replay's "
        "--speedup to keep the trace's load (default: 1.0)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the model's random draws, such as MTP acceptance (default: 0)",
    )
    parser.add_argument(
        "--hardware",
        metavar="JSON",
        help="hardware profile file (default: bundled CloudMatrix384)",
    )
    parser.add_argument(
        "--model",
        metavar="JSON",
        help="model profile file (default: bundled DeepSeek-R1)",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=5.0,
        help="seconds that open streams get to finish on shutdown; streams "
        "still open then end with UNAVAILABLE (default: 5)",
    )
    _add_serve_options(parser)
    parser.set_defaults(run=_run_serve)


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add the TLS, control, metrics, admission and fault options of `serve`."""
    tls = parser.add_argument_group("TLS (plaintext unless --tls-cert is given)")
    tls.add_argument("--tls-cert", metavar="PEM", help="server certificate chain")
    tls.add_argument("--tls-key", metavar="PEM", help="server private key")
    tls.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="CA certificates of accepted clients; turns on mutual TLS",
    )

    control = parser.add_argument_group("control service and metrics")
    control.add_argument(
        "--control-port",
        type=int,
        metavar="PORT",
        help="serve cmx.v1.Control on this port of --host instead of --port; "
        "0 picks a free one",
    )
    control.add_argument(
        "--no-control",
        action="store_true",
        help="do not serve cmx.v1.Control at all",
    )
    control.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP at /metrics on this port; "
        "0 picks a free one (default: no metrics endpoint)",
    )
    control.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics endpoint (default: 127.0.0.1)",
    )

    load = parser.add_argument_group("admission and faults")
    load.add_argument(
        "--max-active-requests",
        type=int,
        default=DEFAULT_MAX_ACTIVE_REQUESTS,
        metavar="N",
        help="requests in the model at once; more get RESOURCE_EXHAUSTED "
        f"(default: {DEFAULT_MAX_ACTIVE_REQUESTS})",
    )
    load.add_argument(
        "--max-queued-prompt-tokens",
        type=int,
        default=DEFAULT_MAX_QUEUED_PROMPT_TOKENS,
        metavar="N",
        help="prompt tokens waiting for or in prefill; more get "
        f"RESOURCE_EXHAUSTED (default: {DEFAULT_MAX_QUEUED_PROMPT_TOKENS})",
    )
    load.add_argument(
        "--failed-instance-policy",
        choices=[policy.value for policy in FailedInstancePolicy],
        default=FailedInstancePolicy.REROUTE.value,
        help="what a failed instance does to its requests: restart them on "
        "another instance, or end them with UNAVAILABLE (default: reroute)",
    )
    load.add_argument(
        "--fault-schedule",
        metavar="JSON",
        help="faults to inject at emulated times, as a cmx.v1.FaultSchedule in "
        "JSON; armed at start and again on every Reset",
    )


def _run_serve(args: argparse.Namespace) -> int:
    if not (args.time_scale > 0 and math.isfinite(args.time_scale)):
        raise ConfigError(
            f"--time-scale must be a positive finite number, got {args.time_scale}"
        )
    _check_serve_ports(args)
    if args.grace_s < 0:
        raise ConfigError(f"--grace-s must be 0 or more, got {args.grace_s}")

    profiles = Profiles(
        load_hardware(args.hardware), load_model(args.model), DeploymentConfig()
    )
    options = ServerOptions(
        host=args.host,
        port=args.port,
        time_scale=args.time_scale,
        grace_s=args.grace_s,
        tls=_tls_files(args),
        control_enabled=not args.no_control,
        control_port=args.control_port,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        admission=AdmissionLimits(
            max_active_requests=args.max_active_requests,
            max_queued_prompt_tokens=args.max_queued_prompt_tokens,
        ),
        failed_instance_policy=FailedInstancePolicy(args.failed_instance_policy),
        fault_schedule=(
            load_fault_schedule(args.fault_schedule) if args.fault_schedule else ()
        ),
    )
    try:
        asyncio.run(run_server(profiles, options, seed=args.seed))
    except OSError as error:
        raise ConfigError(f"cannot serve on {args.host}: {error}") from None
    except FaultError as error:
        raise ConfigError(f"fault schedule {args.fault_schedule}: {error}") from None
    return 0


def _check_serve_ports(args: argparse.Namespace) -> None:
    for option, port in (
        ("--port", args.port),
        ("--control-port", args.control_port),
        ("--metrics-port", args.metrics_port),
    ):
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{option} must be in 0..65535, got {port}")
    if args.no_control and args.control_port is not None:
        raise ConfigError("--control-port and --no-control cannot be combined")
    if args.control_port is not None and args.control_port == args.port != 0:
        raise ConfigError(
            f"--control-port {args.control_port} is the same as --port; leave "
            "--control-port out to serve both services on one port"
        )


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ConfigError("--tls-cert and --tls-key must be given together")
    return TlsFiles(
        cert_chain=Path(args.tls_cert),
        private_key=Path(args.tls_key),
        client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
    )


def _register_health(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "health",
        help="check a running emulator with the standard gRPC health service",
        description=(
            "Call grpc.health.v1.Health/Check on TARGET; exit 0 when the service "
            "is SERVING and 1 otherwise (for container health checks)."
        ),
    )
    parser.add_argument(
        "--target",
        default="127.0.0.1:50051",
        help="HOST:PORT of the emulator (default: 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--service",
        default="cmx.v1.Emulator",
        help="service name to check; empty for the whole server "
        "(default: cmx.v1.Emulator)",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="connect with TLS, trusting the CA certificates in this file "
        "(default: plaintext)",
    )
    parser.set_defaults(run=_run_health)


def _run_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.tls_ca is None:
        channel = grpc.insecure_channel(args.target)
    else:
        try:
            root_ca = Path(args.tls_ca).read_bytes()
        except OSError as error:
            raise ConfigError(
                f"cannot read --tls-ca {args.tls_ca}: {error.strerror}"
            ) from None
        credentials = grpc.ssl_channel_credentials(root_certificates=root_ca)
        channel = grpc.secure_channel(args.target, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=_HEALTH_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            print(f"{args.target}: health check failed: {error.code().name}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
