"""Metrics of a running emulator: counters, a snapshot, and Prometheus export.

`ServerStats` counts the streams, statuses and tokens of the gRPC layer.
`collect_metrics` combines it with the model's state into a frozen
`MetricsSnapshot`, which the control service returns and `MetricsExporter`
serves in the Prometheus text format over HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from emulator.faults import Pool
from emulator.runtime import PacedRuntime

__all__ = [
    "InstanceSnapshot",
    "MetricsExporter",
    "MetricsSnapshot",
    "RateMeter",
    "ServerStats",
    "collect_metrics",
]

logger = logging.getLogger(__name__)

_RATE_WINDOW_S = 10
# Maximum wait of a scrape for the event loop to take the snapshot.
_SCRAPE_TIMEOUT_S = 5.0


class RateMeter:
    """Events per second over the last `window_s` whole wall seconds.

    Counts go into one-second buckets; the rate leaves out the current,
    unfinished second, so it lags by up to one second.
    """

    def __init__(
        self,
        window_s: int = _RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._buckets: collections.deque[tuple[int, int]] = collections.deque()

    def add(self, count: int) -> None:
        second = math.floor(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, self._buckets[-1][1] + count)
        else:
            self._buckets.append((second, count))
            self._trim(second)

    def per_s(self) -> float:
        current = math.floor(self._clock())
        self._trim(current)
        total = sum(count for second, count in self._buckets if second < current)
        return total / self._window_s

    def _trim(self, current: int) -> None:
        while self._buckets and self._buckets[0][0] < current - self._window_s:
            self._buckets.popleft()


class ServerStats:
    """Counters of the Generate streams, since the server started or was reset."""

    def __init__(self) -> None:
        self.open_streams = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters; `open_streams` is a gauge and keeps its value."""
        self.requests_by_status: collections.Counter[str] = collections.Counter()
        self.prompt_tokens_total = 0
        self.cached_prompt_tokens_total = 0
        self.output_tokens_total = 0
        self.output_rate = RateMeter()

    def add_output_tokens(self, count: int) -> None:
        self.output_tokens_total += count
        self.output_rate.add(count)

    def add_finished(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prompt_tokens_total += prompt_tokens
        self.cached_prompt_tokens_total += cached_tokens


@dataclass(frozen=True)
class InstanceSnapshot:
    """Load of one instance; fields that do not apply to its pool are 0."""

    pool: Pool
    instance: int
    queued_requests: int
    queued_tokens: int
    batch_size: int
    tokens_generated: int
    kv_cache_tokens: int
    slowdown: float
    available: bool


@dataclass(frozen=True)
class MetricsSnapshot:
    """The emulator's load at one instant; token rates are per wall second."""

    emulated_now_s: float
    time_scale: float
    active_requests: int
    open_streams: int
    instances: tuple[InstanceSnapshot, ...]
    kv_cache_tokens: int
    kv_cache_bytes: int
    prefix_cache_hit_rate: float
    output_tokens_per_s: float
    emulated_output_tokens_per_s: float
    requests_by_status: tuple[tuple[str, int], ...]
    prompt_tokens_total: int
    cached_prompt_tokens_total: int
    output_tokens_total: int
    active_faults: int


def collect_metrics(runtime: PacedRuntime, stats: ServerStats) -> MetricsSnapshot:
    """Take a snapshot of the model and the stream counters, at the current time."""
    runtime.advance()
    supernode = runtime.supernode
    model = supernode.metrics()
    prefill_kv, decode_kv = _kv_tokens_by_instance(runtime)

    instances = [
        InstanceSnapshot(
            pool=Pool.PREFILL,
            instance=p.index,
            queued_requests=model.prefill_queued_requests[p.index],
            queued_tokens=model.prefill_queued_tokens[p.index],
            batch_size=0,
            tokens_generated=0,
            kv_cache_tokens=prefill_kv[p.index],
            slowdown=p.slowdown,
            available=p.available,
        )
        for p in supernode.prefill
    ]
    waiting = _decode_waiting(runtime)
    instances += [
        InstanceSnapshot(
            pool=Pool.DECODE,
            instance=d.index,
            queued_requests=waiting[d.index],
            queued_tokens=0,
            batch_size=model.decode_batch_sizes[d.index],
            tokens_generated=model.decode_tokens_generated[d.index],
            kv_cache_tokens=decode_kv[d.index],
            slowdown=d.slowdown,
            available=d.available,
        )
        for d in supernode.decode
    ]

    kv_tokens = sum(prefill_kv) + sum(decode_kv)
    profiles = runtime.profiles
    kv_bytes_per_token = profiles.model.kv_bytes_per_token(
        profiles.deployment.precision
    )
    rate_per_s = stats.output_rate.per_s()
    hit_rate = (
        stats.cached_prompt_tokens_total / stats.prompt_tokens_total
        if stats.prompt_tokens_total
        else 0.0
    )
    return MetricsSnapshot(
        emulated_now_s=model.emulated_now_s,
        time_scale=runtime.clock.time_scale,
        active_requests=model.active_requests,
        open_streams=stats.open_streams,
        instances=tuple(instances),
        kv_cache_tokens=kv_tokens,
        kv_cache_bytes=kv_tokens * kv_bytes_per_token,
        prefix_cache_hit_rate=hit_rate,
        output_tokens_per_s=rate_per_s,
        emulated_output_tokens_per_s=rate_per_s / runtime.clock.time_scale,
        requests_by_status=tuple(sorted(stats.requests_by_status.items())),
        prompt_tokens_total=stats.prompt_tokens_total,
        cached_prompt_tokens_total=stats.cached_prompt_tokens_total,
        output_tokens_total=stats.output_tokens_total,
        active_faults=len(runtime.faults.active()),
    )


def _kv_tokens_by_instance(runtime: PacedRuntime) -> tuple[list[int], list[int]]:
    """KV cache tokens held for active requests, per prefill and decode instance.

    Until a request reaches a decode instance (so also during the KV
    transfer), its cached and prefilled prompt tokens count on its prefill
    instance. After that, its prompt and output so far count on the decode
    instance.
    """
    prefill = [0] * len(runtime.supernode.prefill)
    decode = [0] * len(runtime.supernode.decode)
    for session in runtime.sessions:
        record = session.record
        if record is None or not session.in_model:
            continue
        if record.decode_instance >= 0:
            decode[record.decode_instance] += (
                record.spec.input_tokens + record.tokens_out
            )
        elif record.prefill_instance >= 0:
            prefill[record.prefill_instance] += (
                record.cached_tokens + record.prefilled_tokens
            )
    return prefill, decode


def _decode_waiting(runtime: PacedRuntime) -> list[int]:
    waiting = [0] * len(runtime.supernode.decode)
    for session in runtime.sessions:
        record = session.record
        if (
            record is not None
            and session.in_model
            and record.decode_instance >= 0
            and record.decode_admitted_s is None
        ):
            waiting[record.decode_instance] += 1
    return waiting


class _SnapshotCollector(Collector):
    """Prometheus collector that takes a snapshot on the event loop per scrape."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, take: Callable[[], MetricsSnapshot]
    ) -> None:
        self._loop = loop
        self._take = take

    def collect(self) -> Iterator[Metric]:
        async def take_on_loop() -> MetricsSnapshot:
            return self._take()

        future = asyncio.run_coroutine_threadsafe(take_on_loop(), self._loop)
        try:
            snapshot = future.result(timeout=_SCRAPE_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - a scrape must not crash
            future.cancel()
            logger.warning("metrics scrape failed: %r", error)
            return
        yield from prometheus_metrics(snapshot)


def prometheus_metrics(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """Yield the snapshot as Prometheus metric families named `cmx_*`."""
    gauges = (
        (
            "cmx_emulated_time_seconds",
            "Emulated time since start or reset",
            snapshot.emulated_now_s,
        ),
        ("cmx_time_scale", "Emulated seconds per wall second", snapshot.time_scale),
        ("cmx_active_requests", "Requests in the model", snapshot.active_requests),
        (
            "cmx_open_streams",
            "Generate streams open on the server",
            snapshot.open_streams,
        ),
        (
            "cmx_kv_cache_bytes",
            "KV cache held by active requests",
            snapshot.kv_cache_bytes,
        ),
        (
            "cmx_prefix_cache_hit_ratio",
            "Cached over prompt tokens of finished requests",
            snapshot.prefix_cache_hit_rate,
        ),
        (
            "cmx_output_tokens_per_second",
            "Output tokens per wall second over 10 s",
            snapshot.output_tokens_per_s,
        ),
        ("cmx_active_faults", "Injected faults active now", snapshot.active_faults),
    )
    for name, documentation, value in gauges:
        yield GaugeMetricFamily(name, documentation, value=float(value))

    yield from _instance_metrics(snapshot.instances)

    by_status = CounterMetricFamily(
        "cmx_requests", "Generate calls ended, by gRPC status", labels=["status"]
    )
    for status, count in snapshot.requests_by_status:
        by_status.add_metric([status], float(count))
    yield by_status
    for name, documentation, total in (
        (
            "cmx_prompt_tokens",
            "Prompt tokens of finished requests",
            snapshot.prompt_tokens_total,
        ),
        (
            "cmx_cached_prompt_tokens",
            "Prompt tokens served from the prefix cache",
            snapshot.cached_prompt_tokens_total,
        ),
        ("cmx_output_tokens", "Output tokens produced", snapshot.output_tokens_total),
    ):
        yield CounterMetricFamily(name, documentation, value=float(total))


def _instance_metrics(instances: tuple[InstanceSnapshot, ...]) -> Iterator[Metric]:
    labels = ["pool", "instance"]
    families = {
        "queued_requests": GaugeMetricFamily(
            "cmx_instance_queued_requests",
            "Requests queued for prefill, or waiting for a decode batch slot",
            labels=labels,
        ),
        "queued_tokens": GaugeMetricFamily(
            "cmx_instance_queued_tokens",
            "Prompt tokens still to prefill",
            labels=labels,
        ),
        "batch_size": GaugeMetricFamily(
            "cmx_instance_batch_size", "Sequences in the decode batch", labels=labels
        ),
        "kv_cache_tokens": GaugeMetricFamily(
            "cmx_instance_kv_cache_tokens", "KV cache tokens held", labels=labels
        ),
        "slowdown": GaugeMetricFamily(
            "cmx_instance_slowdown", "Step time multiplier from faults", labels=labels
        ),
        "available": GaugeMetricFamily(
            "cmx_instance_available", "1 unless failed by a fault", labels=labels
        ),
    }
    generated = CounterMetricFamily(
        "cmx_instance_generated_tokens", "Output tokens made by decode", labels=labels
    )
    for instance in instances:
        label_values = [instance.pool.value, str(instance.instance)]
        for field_name, family in families.items():
            family.add_metric(label_values, float(getattr(instance, field_name)))
        if instance.pool is Pool.DECODE:
            generated.add_metric(label_values, float(instance.tokens_generated))
    yield from families.values()
    yield generated


class MetricsExporter:
    """Prometheus text format over HTTP at `/metrics`, from a thread.

    Each scrape requests a fresh snapshot from the event loop, so the figures
    are exact at scrape time and the model is only read on its own thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop,
        take: Callable[[], MetricsSnapshot],
    ) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(loop, take))
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(
            port, addr=host, registry=registry
        )
        self.port: int = self._server.server_port
        logger.info("serving Prometheus metrics on %s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
