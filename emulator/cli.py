"""`cmx serve`, `cmx health`, `cmx simulate` and `cmx bench`."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from emulator.admission import (
    DEFAULT_MAX_ACTIVE_REQUESTS,
    DEFAULT_MAX_QUEUED_PROMPT_TOKENS,
    AdmissionLimits,
)
from emulator.control import load_fault_schedule
from emulator.errors import ConfigError
from emulator.faults import FailedInstancePolicy, FaultError
from emulator.profiles import (
    Profiles,
    load_deployment,
    load_hardware,
    load_model,
)

__all__ = ["register", "seed_value"]

if TYPE_CHECKING:
    from emulator.server import BindError
    from emulator.simulate import SimulationSummary
    from emulator.tls import TlsFileError, TlsFiles
    from replay.client import TlsConfig

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_HEALTH_TIMEOUT_S = 5.0
# gRPC reports only "Socket closed" when a TLS server ends the connection
# during the handshake, as it does for a plaintext client or, under mutual
# TLS, for a client without a certificate.
_SOCKET_CLOSED_HINT = (
    "  the server closed the connection: if it serves TLS, connect with "
    "--tls-ca, and under mutual TLS also with --tls-cert and --tls-key"
)


def seed_value(text: str) -> int:
    """Parse a random seed option: an integer of 0 or more (numpy's rule)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: expected an integer >= 0"
        ) from None
    if seed < 0:
        raise argparse.ArgumentTypeError(
            f"invalid seed {seed}: expected an integer >= 0"
        )
    return seed


def _add_seed_option(parser: argparse.ArgumentParser) -> None:
    """Add `--seed`, shared by `serve` and `simulate` so that both draw alike."""
    parser.add_argument(
        "--seed",
        type=seed_value,
        default=0,
        help="seed of the model's random draws, such as MTP acceptance, an "
        "integer >= 0 (default: 0)",
    )


def register(subparsers: _Subparsers) -> None:
    """Add the `serve`, `health`, `simulate` and `bench` subcommands."""
    _register_health(subparsers)
    _register_serve(subparsers)
    _register_simulate(subparsers)
    _register_bench(subparsers)


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
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
        "--deployment",
        metavar="JSON",
        help="deployment file: DeploymentConfig fields to change "
        "(default: the CloudMatrix384 paper's deployment)",
    )


def _load_profiles(args: argparse.Namespace) -> Profiles:
    return Profiles(
        load_hardware(args.hardware),
        load_model(args.model),
        load_deployment(args.deployment),
    )


def _register_serve(subparsers: _Subparsers) -> None:
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
    _add_seed_option(parser)
    _add_profile_options(parser)
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
    from emulator.server import BindError, ServerOptions, run_server

    if not (args.time_scale > 0 and math.isfinite(args.time_scale)):
        raise ConfigError(
            f"--time-scale must be a positive finite number, got {args.time_scale}"
        )
    _check_serve_ports(args)
    if args.grace_s < 0:
        raise ConfigError(f"--grace-s must be 0 or more, got {args.grace_s}")

    profiles = _load_profiles(args)
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
    except BindError as error:
        raise ConfigError(f"{_listener_option(args, error)}: {error}") from None
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


def _listener_option(args: argparse.Namespace, error: BindError) -> str:
    """Return the option, with its value, that set the address that failed."""
    from emulator.server import Listener

    if error.listener is Listener.METRICS:
        if error.host_at_fault:
            return f"--metrics-host {args.metrics_host}"
        return f"--metrics-port {args.metrics_port}"
    if error.host_at_fault:
        return f"--host {args.host}"
    if error.listener is Listener.CONTROL:
        return f"--control-port {args.control_port}"
    return f"--port {args.port}"


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """Return the server's TLS files, checked; None for plaintext."""
    from emulator.tls import TlsFileError, TlsFiles, TlsRole

    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ConfigError("--tls-cert and --tls-key must be given together")
    files = TlsFiles(
        cert_chain=Path(args.tls_cert),
        private_key=Path(args.tls_key),
        client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
    )
    options = {
        TlsRole.CERT_CHAIN: "--tls-cert",
        TlsRole.PRIVATE_KEY: "--tls-key",
        TlsRole.CA: "--tls-client-ca",
    }
    try:
        files.check()
    except TlsFileError as error:
        raise _option_error(options[error.role], error) from None
    return files


def _option_error(option: str, error: TlsFileError) -> ConfigError:
    """Restate a TLS file error with the command-line option that named it."""
    return ConfigError(f"{option} {error.path}: {error.problem}")


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
    tls = parser.add_argument_group("TLS (plaintext unless one of these is given)")
    tls.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="connect with TLS, trusting the CA certificates in this file "
        "(default: the system's CA certificates)",
    )
    tls.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="client certificate chain for mutual TLS (with --tls-key)",
    )
    tls.add_argument(
        "--tls-key",
        type=Path,
        metavar="PEM",
        help="client private key for mutual TLS (with --tls-cert)",
    )
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name to check the server's certificate against, when it differs "
        "from the target's host",
    )
    parser.set_defaults(run=_run_health)


def _run_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from replay.client import open_sync_channel

    _, separator, port_text = args.target.rpartition(":")
    if not separator or not port_text.isdigit():
        # Without a port gRPC would silently use 443.
        raise ConfigError(
            f"--target {args.target!r} is not HOST:PORT; give the emulator's "
            "address with its port, for example 127.0.0.1:50051"
        )

    with open_sync_channel(args.target, _health_tls(args)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=_HEALTH_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            code = error.code().name
            details = error.details()
            print(f"{args.target}: health check failed: {code}: {details}")
            if details.endswith(": Socket closed"):
                print(_SOCKET_CLOSED_HINT)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _health_tls(args: argparse.Namespace) -> TlsConfig | None:
    """Return the client TLS settings of `cmx health`, checked; None for plaintext."""
    from emulator.tls import TlsFileError, TlsRole, check_ca_file, check_identity
    from replay.client import TlsConfig

    given = (args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    if all(value is None for value in given):
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError(
            "--tls-cert and --tls-key must be given together for mutual TLS"
        )
    options = {
        TlsRole.CERT_CHAIN: "--tls-cert",
        TlsRole.PRIVATE_KEY: "--tls-key",
        TlsRole.CA: "--tls-ca",
    }
    try:
        if args.tls_ca is not None:
            check_ca_file(args.tls_ca)
        if args.tls_cert is not None:
            check_identity(args.tls_cert, args.tls_key)
    except TlsFileError as error:
        raise _option_error(options[error.role], error) from None
    return TlsConfig(
        root_ca=args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
        server_name=args.tls_server_name,
    )


def _register_simulate(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a trace through the model in virtual time, without gRPC",
        description=(
            "Run TRACE through the same supernode model as `cmx serve`, in "
            "virtual time, and write one row per request in the results "
            "schema of `cmx replay`. Also writes RESULTS.profiles.json and "
            "RESULTS.timeseries.parquet beside the results."
        ),
    )
    parser.add_argument("trace", type=Path, help="canonical trace (Parquet)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="results file to write"
    )
    _add_seed_option(parser)
    parser.add_argument("--limit", type=int, help="simulate only the first N requests")
    parser.add_argument(
        "--duration-s",
        type=float,
        help="simulate only requests in the first S seconds of trace time",
    )
    parser.add_argument(
        "--timeseries-interval-s",
        type=float,
        default=1.0,
        help="interval of the per-instance time series, in emulated seconds; "
        "0 writes none (default: 1)",
    )
    _add_profile_options(parser)
    parser.set_defaults(run=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from emulator.simulate import SimulationConfig, simulate

    interval = args.timeseries_interval_s
    config = SimulationConfig(
        trace_path=args.trace,
        output_path=args.output,
        seed=args.seed,
        limit=args.limit,
        duration_s=args.duration_s,
        timeseries_interval_s=None if interval == 0 else interval,
    )
    summary = simulate(config, _load_profiles(args))
    print(
        f"simulated {summary.requests} requests ({summary.finished} finished, "
        f"{summary.rejected} rejected): {summary.emulated_s:,.1f} s emulated in "
        f"{summary.wall_s:.2f} s wall ({summary.speedup:,.0f}x)"
    )
    cache_line = _cache_summary_line(summary)
    if cache_line:
        print(cache_line)
    print(f"wrote {summary.output_path} and {summary.profiles_path}")
    if summary.timeseries_path is not None:
        print(f"wrote {summary.timeseries_path}")
    return 0


def _cache_summary_line(summary: SimulationSummary) -> str | None:
    """Describe the run's prefix cache hits in one line; None when it is off."""
    stats = summary.cache
    share = summary.cached_token_share
    if stats is None or share is None:
        return None
    prompt = summary.prompt_tokens
    hit_rate = stats.block_hit_rate
    blocks = (
        "no hashed blocks"
        if hit_rate is None
        else f"block hit rate {hit_rate:.1%} of {stats.blocks_looked_up:,} "
        f"blocks of {stats.block_tokens} tokens"
    )
    return (
        f"prefix cache: {share:.1%} of prompt tokens reused "
        f"(HBM {summary.cached_tokens_hbm / prompt:.1%}, "
        f"pool {summary.cached_tokens_pool / prompt:.1%}); {blocks}"
    )


def _register_bench(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="reproduce the paper's decode, prefill and caching figures without "
        "a trace",
        description=(
            "Steady-state throughput of the model for equal requests, as in "
            "the CloudMatrix384 serving paper's tables."
        ),
    )
    phases = parser.add_subparsers(title="phases", metavar="PHASE")
    phases.required = True

    decode = phases.add_parser(
        "decode",
        help="largest batch per NPU whose TPOT meets an SLO",
        description=(
            "Find the largest batch per NPU whose mean TPOT, with every "
            "sequence at input + output / 2 tokens of context, meets the SLO. "
            "Exits 1 when not even one sequence per die meets it."
        ),
    )
    decode.add_argument("--input-tokens", type=int, default=4096)
    decode.add_argument("--output-tokens", type=int, default=256)
    decode.add_argument(
        "--tpot-slo-ms", type=float, default=50.0, help="TPOT SLO (default: 50)"
    )
    decode.add_argument(
        "--search-limit-per-npu",
        type=int,
        default=1024,
        help="largest batch per NPU tried (default: 1024)",
    )
    decode.add_argument("--json", action="store_true", help="print JSON")
    _add_profile_options(decode)
    decode.set_defaults(run=_run_bench_decode)

    prefill = phases.add_parser(
        "prefill",
        help="prefill throughput per NPU for equal prompts",
        description="Prefill tokens/s per NPU for equal prompts in full batches.",
    )
    prefill.add_argument("--input-tokens", type=int, default=4096)
    prefill.add_argument(
        "--batch-tokens",
        type=int,
        default=16384,
        help="prompt tokens per prefill iteration (default: 16384)",
    )
    prefill.add_argument("--json", action="store_true", help="print JSON")
    _add_profile_options(prefill)
    prefill.set_defaults(run=_run_bench_prefill)
    _register_bench_cache(phases)


def _register_bench_cache(phases: _Subparsers) -> None:
    cache = phases.add_parser(
        "cache",
        help="prefill gain of context caching at a prefix reuse ratio",
        description=(
            "Prefill a burst of equal prompts whose leading REUSE share is "
            "cached in the DRAM pool, with caching on and off, and print the "
            "throughput ratio and the TTFT ratio of a lone request."
        ),
    )
    cache.add_argument(
        "--reuse",
        type=float,
        required=True,
        help="share of each prompt found in the cache, in [0, 1)",
    )
    cache.add_argument("--input-tokens", type=int, default=4096)
    cache.add_argument(
        "--requests",
        type=int,
        default=1200,
        help="prompts in the burst (default: 1200)",
    )
    cache.add_argument(
        "--block-tokens",
        type=int,
        default=128,
        help="tokens per cache block in this bench (default: 128)",
    )
    cache.add_argument("--json", action="store_true", help="print JSON")
    _add_profile_options(cache)
    cache.set_defaults(run=_run_bench_cache)


def _run_bench_decode(args: argparse.Namespace) -> int:
    from emulator.calibration import DecodeLimit, bench_decode

    profiles = _load_profiles(args)
    result = bench_decode(
        profiles,
        args.input_tokens,
        args.output_tokens,
        args.tpot_slo_ms,
        search_limit_per_npu=args.search_limit_per_npu,
    )
    report: dict[str, object] = {
        "input_tokens": args.input_tokens,
        "output_tokens": args.output_tokens,
        "tpot_slo_ms": args.tpot_slo_ms,
        "batch_per_npu": None if result is None else result.batch_per_npu,
        "tpot_ms": None if result is None else round(result.tpot_ms, 3),
        "tokens_per_s_per_npu": (
            None if result is None else round(result.tokens_per_s_per_npu, 1)
        ),
        "limited_by": DecodeLimit.TPOT_SLO if result is None else result.limited_by,
    }
    if args.json:
        print(json.dumps(report))
    elif result is None:
        print(f"no batch meets a TPOT of {args.tpot_slo_ms:g} ms")
    else:
        print(
            f"batch {result.batch_per_npu} per NPU, TPOT {result.tpot_ms:.1f} ms, "
            f"{result.tokens_per_s_per_npu:,.0f} tokens/s per NPU "
            f"(limited by {result.limited_by})"
        )
    return 1 if result is None else 0


def _run_bench_prefill(args: argparse.Namespace) -> int:
    from emulator.calibration import bench_prefill

    profiles = _load_profiles(args)
    throughput = bench_prefill(profiles, args.input_tokens, args.batch_tokens)
    if args.json:
        report = {
            "input_tokens": args.input_tokens,
            "batch_tokens": args.batch_tokens,
            "tokens_per_s_per_npu": round(throughput, 1),
        }
        print(json.dumps(report))
    else:
        print(f"{throughput:,.0f} prompt tokens/s per NPU")
    return 0


def _run_bench_cache(args: argparse.Namespace) -> int:
    from emulator.calibration import bench_cache

    profiles = _load_profiles(args)
    result = bench_cache(
        profiles, args.reuse, args.input_tokens, args.requests, args.block_tokens
    )
    if args.json:
        report = {
            "reuse": args.reuse,
            "cached_token_share": round(result.cached_token_share, 4),
            "input_tokens": result.input_tokens,
            "requests": result.requests,
            "block_tokens": result.block_tokens,
            "pool_read_gb_per_s_per_npu": (
                profiles.deployment.pool_read_gb_per_s_per_npu
            ),
            "tokens_per_s_per_npu": round(result.tokens_per_s_per_npu, 1),
            "tokens_per_s_per_npu_no_cache": round(
                result.tokens_per_s_per_npu_no_cache, 1
            ),
            "throughput_ratio": round(result.throughput_ratio, 4),
            "ttft_ms": round(result.ttft_ms, 3),
            "ttft_ms_no_cache": round(result.ttft_ms_no_cache, 3),
            "ttft_ratio": round(result.ttft_ratio, 4),
        }
        print(json.dumps(report))
    else:
        print(
            f"{result.cached_token_share:.1%} of prompt tokens cached: prefill "
            f"{result.tokens_per_s_per_npu:,.0f} vs "
            f"{result.tokens_per_s_per_npu_no_cache:,.0f} tokens/s per NPU "
            f"({result.throughput_ratio:.2f}x); TTFT {result.ttft_ms:.1f} vs "
            f"{result.ttft_ms_no_cache:.1f} ms ({result.ttft_ratio:.2f}x)"
        )
    return 0
