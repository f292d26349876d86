"""`cmx serve` reuses cached prefixes and reports them in the summary."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from emulator.costs import CostModel
from emulator.profiles import default_profiles
from emulator.server import ServerOptions, build_server


async def generate_summary(
    stub: emulator_pb2_grpc.EmulatorStub, request: emulator_pb2.GenerateRequest
) -> emulator_pb2.GenerateSummary:
    summary = None
    async for response in stub.Generate(request):
        if response.HasField("summary"):
            summary = response.summary
    assert summary is not None
    return summary


def test_second_request_reuses_prefix() -> None:
    # HBM holds nothing, so the shared blocks come from the pool.
    profiles = default_profiles(hbm_cache_gb_per_die=0.0)
    summaries: list[emulator_pb2.GenerateSummary] = []

    async def main() -> None:
        options = ServerOptions(port=0, time_scale=50.0)
        server, port, runtime = await build_server(profiles, options)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = emulator_pb2_grpc.EmulatorStub(channel)
                for last_hash in (4, 9):
                    request = emulator_pb2.GenerateRequest(
                        input_tokens=2048,
                        output_tokens=2,
                        prefix_block_hashes=[1, 2, 3, last_hash],
                        block_tokens=512,
                    )
                    summary = await asyncio.wait_for(
                        generate_summary(stub, request), timeout=60
                    )
                    summaries.append(summary)
        finally:
            await server.stop(0)
            await runtime.stop()

    asyncio.run(main())

    first, second = summaries
    assert first.cached_tokens == 0
    assert second.cached_tokens == 1536
    assert second.cached_tokens_hbm == 0
    assert second.cached_tokens_pool == 1536
    load_ms = CostModel(profiles).pool_load_s(1536) * 1e3
    assert second.emulated_cache_load_ms == pytest.approx(load_ms, rel=1e-9)
    assert second.emulated_prefill_ms > second.emulated_cache_load_ms
