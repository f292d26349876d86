"""Print every published figure beside the model's value and its error.

The output is the Markdown of the tables in docs/calibration.md. Fitted rows
are marked; every other row is a prediction. --ep-operator-overhead-us adds a
what-if run with a fixed cost per EP dispatch or combine operator (the decode
efficiency is refitted to the published 50 ms row first). The context caching
tables refit the pool's read rate first and print it, which takes a few
seconds.

Run: .venv/bin/python benchmarks/calibration_table.py [--ep-operator-overhead-us N]
"""

from __future__ import annotations

import argparse
import dataclasses

from emulator.calibration import (
    PREDICTED_CACHE,
    PREDICTED_DECODE,
    PUBLISHED_CACHE,
    PUBLISHED_DECODE,
    PUBLISHED_PREFILL,
    PUBLISHED_PREFILL_BALANCED,
    PublishedCache,
    PublishedDecode,
    bench_cache,
    bench_decode,
    bench_prefill,
    decode_tpot_ms,
    fit_calibration,
    fit_pool_read_rate,
)
from emulator.costs import CostModel
from emulator.profiles import Profiles, default_profiles


def error(model: float, published: float) -> str:
    return f"{(model - published) / published * 100:+.1f}%"


def decode_rows(profiles: Profiles, rows: list[tuple[PublishedDecode, str]]) -> None:
    print(
        "| input/output | SLO (ms) | | batch/NPU | TPOT (ms) | tokens/s/NPU "
        "| TPOT at published batch (ms) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row, kind in rows:
        found = bench_decode(
            profiles, row.input_tokens, row.output_tokens, row.tpot_slo_ms
        )
        at_batch = decode_tpot_ms(
            profiles, row.batch_per_npu, row.input_tokens, row.output_tokens
        )
        name = f"{row.input_tokens}/{row.output_tokens}"
        print(
            f"| {name} | {row.tpot_slo_ms:g} | published ({kind}) | "
            f"{row.batch_per_npu} | {row.tpot_ms} | {row.tokens_per_s_per_npu:,.0f} "
            f"| {row.tpot_ms} |"
        )
        if found is None:
            print(
                f"| {name} | {row.tpot_slo_ms:g} | model | none | | | "
                f"{at_batch:.1f} ({error(at_batch, row.tpot_ms)}) |"
            )
            continue
        print(
            f"| {name} | {row.tpot_slo_ms:g} | model | {found.batch_per_npu} "
            f"({error(found.batch_per_npu, row.batch_per_npu)}) | "
            f"{found.tpot_ms:.1f} | {found.tokens_per_s_per_npu:,.0f} "
            f"({error(found.tokens_per_s_per_npu, row.tokens_per_s_per_npu)}) | "
            f"{at_batch:.1f} ({error(at_batch, row.tpot_ms)}) |"
        )


def ablations(profiles: Profiles) -> None:
    print("| figure | published | model |")
    print("| --- | --- | --- |")
    no_overlap = replace(profiles, micro_batches=1)
    gains = []
    for batch in (64, 96, 128):
        serial = decode_tpot_ms(no_overlap, batch, 4096, 256)
        overlapped = decode_tpot_ms(profiles, batch, 4096, 256)
        gains.append(f"{(serial / overlapped - 1) * 100:.1f}%")
    print(
        f"| decode gain of two micro-batches at batch 64/96/128 "
        f"| 5.8% / 9.4% / 6.9% | {' / '.join(gains)} |"
    )

    no_mtp = replace(profiles, mtp_draft_tokens=0)
    mtp_gains = []
    for batch in (8, 32, 64, 96, 128):
        without = decode_tpot_ms(no_mtp, batch, 4096, 256)
        with_mtp = decode_tpot_ms(profiles, batch, 4096, 256)
        mtp_gains.append(f"{(without / with_mtp - 1) * 100:.0f}%")
    print(
        f"| decode throughput gain of MTP at batch 8/32/64/96/128 "
        f"| 6% to 49%, larger at small batch | {' / '.join(mtp_gains)} |"
    )

    costs, costs_no_mtp = CostModel(profiles), CostModel(no_mtp)
    per_layer = [
        c.decode_step_for(48, 48 * 4224.0).total_s / 62 * 1e6
        for c in (costs_no_mtp, costs)
    ]
    print(
        f"| mean time per layer without / with MTP, batch 96 "
        f"| 874 / 1,260 us (batch not stated) "
        f"| {per_layer[0]:.0f} / {per_layer[1]:.0f} us |"
    )

    hardware = profiles.hardware
    latency_s = hardware.ub_latency_inter_node_us / 1e6
    hidden, tokens = profiles.model.hidden_size, 128
    ub = hardware.ub_bandwidth_gb_per_s * 1e9
    dispatch = (latency_s + tokens * 8 * hidden * 1 / ub) * 1e6
    combine = (latency_s + tokens * 8 * hidden * 2 / ub) * 1e6
    print(
        f"| EP256 dispatch / combine latency, 128 tokens per die "
        f"| 152 / 149 us | {dispatch:.0f} / {combine:.0f} us |"
    )
    cached = bench_cache(profiles, PUBLISHED_CACHE.reuse)
    print(
        "| prefill throughput at 90% prefix reuse over none (fitted) | 2.28x "
        f"| {cached.throughput_ratio:.2f}x |"
    )


def cache_rows(profiles: Profiles) -> None:
    published: dict[float, tuple[PublishedCache, str]] = {
        PUBLISHED_CACHE.reuse: (PUBLISHED_CACHE, "fitted")
    }
    published.update((row.reuse, (row, "predicted")) for row in PREDICTED_CACHE)
    print(
        "| reuse | cached share | throughput ratio: published | model "
        "| TTFT ratio: published | model | TTFT (ms): cached / no cache |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for reuse in (0.25, 0.5, 0.75, 0.9, 0.95):
        result = bench_cache(profiles, reuse)
        row, kind = published.get(reuse, (None, ""))
        throughput = "" if row is None else f"{row.throughput_ratio}x ({kind})"
        model = f"{result.throughput_ratio:.2f}x"
        if row is not None:
            model += f" ({error(result.throughput_ratio, row.throughput_ratio)})"
        ttft = ""
        if row is not None and row.ttft_ratio is not None:
            ttft = f"{row.ttft_ratio} (predicted)"
        print(
            f"| {reuse:.0%} | {result.cached_token_share:.1%} | {throughput} "
            f"| {model} | {ttft} | {result.ttft_ratio:.2f} "
            f"| {result.ttft_ms:.1f} / {result.ttft_ms_no_cache:.1f} |"
        )


def load_or_recompute_rows(profiles: Profiles) -> None:
    costs = CostModel(profiles)
    rate = profiles.deployment.pool_read_gb_per_s_per_npu
    print(
        f"| prompt positions | recompute (ms) | load at {rate:.2f} GB/s/NPU (ms) "
        "| cheaper | break-even read rate (GB/s per NPU) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for start, end in (
        (0, 512),
        (0, 4096),
        (0, 32768),
        (0, 131072),
        (32768, 33280),
        (131072 - 512, 131072),
    ):
        recompute_ms = costs.recompute_s(start, end) * 1e3
        load_ms = costs.pool_load_s(end - start) * 1e3
        cheaper = "load" if costs.pool_load_is_cheaper(start, end) else "recompute"
        breakeven = costs.pool_breakeven_gb_per_s_per_npu(start, end)
        print(
            f"| {start:,} to {end:,} | {recompute_ms:.2f} | {load_ms:.2f} "
            f"| {cheaper} | {breakeven:.2f} |"
        )


def replace(profiles: Profiles, **changes: object) -> Profiles:
    deployment = dataclasses.replace(profiles.deployment, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(profiles, deployment=deployment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ep-operator-overhead-us", type=float)
    args = parser.parse_args()
    profiles = default_profiles()

    print("## Prefill (4K prompts, 16K-token batches)\n")
    print("| row | published | model | error |")
    print("| --- | --- | --- | --- |")
    for row, name in (
        (PUBLISHED_PREFILL, "default load balancer (fitted)"),
        (PUBLISHED_PREFILL_BALANCED, "perfect load balance (fitted)"),
    ):
        changes = {"expert_imbalance": 1.0} if row.perfect_expert_balance else {}
        model = bench_prefill(
            replace(profiles, **changes), row.input_tokens, row.batch_tokens
        )
        print(
            f"| {name} | {row.tokens_per_s_per_npu:,.0f} | {model:,.0f} | "
            f"{error(model, row.tokens_per_s_per_npu)} |"
        )

    print("\n## Decode\n")
    rows = [(PUBLISHED_DECODE, "fitted")] + [(r, "predicted") for r in PREDICTED_DECODE]
    decode_rows(profiles, rows)
    print("\n## Other published figures\n")
    ablations(profiles)

    rate = fit_pool_read_rate(profiles)
    print(
        f"\n## Context caching (pool read rate refitted: {rate:.5f} GB/s per NPU; "
        f"default {profiles.deployment.pool_read_gb_per_s_per_npu:g})\n"
    )
    cached_profiles = replace(profiles, pool_read_gb_per_s_per_npu=rate)
    cache_rows(cached_profiles)
    print("\n## Loading from the pool versus recomputing\n")
    load_or_recompute_rows(cached_profiles)
    line_rate = 2 * profiles.hardware.ub_bandwidth_gb_per_s
    ub = bench_cache(
        replace(profiles, pool_read_gb_per_s_per_npu=line_rate), PUBLISHED_CACHE.reuse
    )
    print(
        f"\nWhat if the pool were read at the UB line rate ({line_rate:g} GB/s "
        f"per NPU): {ub.throughput_ratio:.2f}x at 90% reuse, TTFT ratio "
        f"{ub.ttft_ratio:.2f}."
    )

    if args.ep_operator_overhead_us is not None:
        what_if = replace(
            profiles, ep_operator_overhead_us=args.ep_operator_overhead_us
        )
        fit = fit_calibration(what_if)
        what_if = replace(what_if, decode_efficiency=fit.decode_efficiency)
        print(
            f"\n## What if: {args.ep_operator_overhead_us:g} us per EP operator "
            f"(decode efficiency refitted to {fit.decode_efficiency:.4f})\n"
        )
        decode_rows(what_if, rows)


if __name__ == "__main__":
    main()
