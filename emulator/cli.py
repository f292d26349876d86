"""`cmx serve`: run the emulator as a gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import math

from emulator.errors import ConfigError
from emulator.profiles import DeploymentConfig, Profiles, load_hardware, load_model
from emulator.server import ServerOptions, run_server

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
        help="seconds that open streams get to finish on shutdown (default: 5)",
    )
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    if not (args.time_scale > 0 and math.isfinite(args.time_scale)):
        raise ConfigError(
            f"--time-scale must be a positive finite number, got {args.time_scale}"
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.grace_s < 0:
        raise ConfigError(f"--grace-s must be 0 or more, got {args.grace_s}")

    profiles = Profiles(
        load_hardware(args.hardware), load_model(args.model), DeploymentConfig()
    )
    options = ServerOptions(
        host=args.host, port=args.port, time_scale=args.time_scale, grace_s=args.grace_s
    )
    try:
        asyncio.run(run_server(profiles, options, seed=args.seed))
    except OSError as error:
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {error}") from None
    return 0


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
    parser.set_defaults(run=_run_health)


def _run_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.target) as channel:
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
