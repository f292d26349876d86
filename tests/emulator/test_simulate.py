"""`cmx simulate` and `cmx bench` end to end, and agreement with a replay."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmx.cli import main
from cmx.demo import start_server
from emulator.profiles import default_profiles
from emulator.simulate import SimulationConfig, companion_path, simulate
from traces.results_schema import RESULTS_SCHEMA, RUN_CONFIG_KEY
from traces.schema import TRACE_SCHEMA, write_trace


def generated_trace(tmp_path: Path, requests: int, rate: float, seed: int = 7) -> Path:
    trace = tmp_path / "trace.parquet"
    command = ["trace", "gen", "-o", str(trace), "--requests", str(requests)]
    assert main([*command, "--rate", str(rate), "--seed", str(seed)]) == 0
    return trace


def small_trace(tmp_path: Path, rows: list[tuple[str, float, int, int]]) -> Path:
    trace = tmp_path / "small.parquet"
    table = pa.table(
        {
            "request_id": [row[0] for row in rows],
            "arrival_ms": [row[1] for row in rows],
            "input_tokens": [row[2] for row in rows],
            "output_tokens": [row[3] for row in rows],
            "prefix_block_hashes": [[] for _ in rows],
            "block_tokens": [0 for _ in rows],
            "session_id": [None for _ in rows],
        },
        schema=TRACE_SCHEMA,
    )
    write_trace(table, trace)
    return trace


def test_simulate_writes_results_profiles_and_timeseries(tmp_path: Path) -> None:
    trace = generated_trace(tmp_path, requests=60, rate=4)
    output = tmp_path / "results.parquet"
    assert main(["simulate", str(trace), "-o", str(output)]) == 0

    results = pq.read_table(output)
    assert results.schema.remove_metadata() == RESULTS_SCHEMA
    assert results.num_rows == 60
    assert set(results.column("status").to_pylist()) == {"ok"}
    assert results.column("send_lag_ms").to_pylist() == [0.0] * 60
    received = results.column("output_tokens_received").to_pylist()
    assert received == results.column("output_tokens").to_pylist()

    run_config = json.loads(results.schema.metadata[RUN_CONFIG_KEY.encode()])
    assert run_config["mode"] == "simulate"
    assert run_config["profiles"]["deployment"]["decode_npus_per_instance"] == 160
    saved = json.loads(companion_path(output, "profiles").read_text())
    assert saved == run_config["profiles"]

    series = pq.read_table(companion_path(output, "timeseries")).to_pylist()
    decode_tokens = sum(r["tokens"] for r in series if r["pool"] == "decode")
    prefill_tokens = sum(r["tokens"] for r in series if r["pool"] == "prefill")
    # Prefill makes each request's first token; decode makes the rest.
    assert decode_tokens == sum(received) - 60
    # Prefill computes every prompt token that the prefix cache did not hold.
    prompt_tokens = sum(results.column("input_tokens").to_pylist())
    cached_tokens = sum(results.column("cached_tokens").to_pylist())
    assert cached_tokens > 0  # later turns of a session share earlier blocks
    assert prefill_tokens == prompt_tokens - cached_tokens
    assert all(
        r["kv_blocks_used"] <= r["kv_blocks_total"]
        for r in series
        if r["pool"] == "decode"
    )


def test_same_seed_gives_identical_results(tmp_path: Path) -> None:
    trace = generated_trace(tmp_path, requests=80, rate=8)
    outputs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        output = tmp_path / f"{name}.parquet"
        config = SimulationConfig(trace, output, seed=seed)
        simulate(config, default_profiles(), show_progress=False)
        outputs.append(output)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    # Prefill has no random draws; MTP acceptance in decode does.
    first, other_seed = (
        pq.read_table(path).sort_by("request_id") for path in (outputs[0], outputs[2])
    )
    assert first.column("ttft_ms").equals(other_seed.column("ttft_ms"))
    assert not first.column("tpot_ms").equals(other_seed.column("tpot_ms"))


def test_invalid_requests_become_rejected_rows(tmp_path: Path) -> None:
    trace = small_trace(
        tmp_path,
        [("ok", 0.0, 1000, 10), ("too-long", 5.0, 131_000, 100), ("one", 9.0, 50, 1)],
    )
    output = tmp_path / "results.parquet"
    simulate(SimulationConfig(trace, output), default_profiles(), show_progress=False)

    rows = {row["request_id"]: row for row in pq.read_table(output).to_pylist()}
    assert rows["too-long"]["status"] == "INVALID_ARGUMENT"
    assert "context window" in rows["too-long"]["error"]
    assert rows["too-long"]["ttft_ms"] is None
    assert rows["ok"]["status"] == "ok"
    assert rows["ok"]["decode_instance"] == 0
    # A one-token output is finished by prefill and never reaches decode.
    assert rows["one"]["decode_instance"] is None
    assert rows["one"]["tpot_ms"] is None
    assert rows["one"]["ttft_ms"] == rows["one"]["e2e_ms"]


def test_unsorted_trace_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = small_trace(tmp_path, [("a", 10.0, 100, 5), ("b", 5.0, 100, 5)])
    output = tmp_path / "results.parquet"
    assert main(["simulate", str(trace), "-o", str(output)]) == 2
    error = capsys.readouterr().err
    assert "row 2, field 'arrival_ms'" in error
    assert not output.exists()


def test_simulate_rejects_trace_as_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = small_trace(tmp_path, [("a", 0.0, 100, 5)])
    before = trace.read_bytes()
    assert main(["simulate", str(trace), "-o", str(trace)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"cmx: error: output path {trace} is the input trace; choose another "
        "output path\n"
    )
    assert trace.read_bytes() == before


def test_simulate_rejects_trace_through_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = small_trace(tmp_path, [("a", 0.0, 100, 5)])
    link = tmp_path / "link.parquet"
    link.symlink_to(trace)
    assert main(["simulate", str(trace), "-o", str(link)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"cmx: error: output path {link} is the input trace; choose another "
        "output path\n"
    )


def test_simulate_rejects_companion_over_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = small_trace(tmp_path, [("a", 0.0, 100, 5)])
    named = trace.rename(tmp_path / "run.timeseries.parquet")
    output = tmp_path / "run.parquet"
    assert main(["simulate", str(named), "-o", str(output)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"cmx: error: output path {output} would write {named}, which is the "
        "input trace; choose another output path\n"
    )
    assert not output.exists()
    # Without a time series the same output path leaves the trace alone.
    command = ["simulate", str(named), "-o", str(output)]
    assert main([*command, "--timeseries-interval-s", "0"]) == 0
    assert pq.read_table(named).num_rows == 1


def test_bench_prints_paper_rows_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    decode = ["bench", "decode", "--input-tokens", "4096", "--output-tokens", "256"]
    assert main([*decode, "--tpot-slo-ms", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch_per_npu"] == 96
    assert report["tpot_ms"] == pytest.approx(49.4, rel=0.05)
    assert report["tokens_per_s_per_npu"] == pytest.approx(1943, rel=0.05)

    assert main(["bench", "prefill", "--input-tokens", "4096", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens_per_s_per_npu"] == pytest.approx(5655, rel=0.05)

    assert main([*decode, "--tpot-slo-ms", "1", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["batch_per_npu"] is None


def test_bench_reads_deployment_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = tmp_path / "deployment.json"
    deployment.write_text(json.dumps({"mtp_draft_tokens": 0}))
    command = ["bench", "decode", "--json", "--deployment", str(deployment)]
    assert main(command) == 0
    without_mtp = json.loads(capsys.readouterr().out)
    assert main(["bench", "decode", "--json"]) == 0
    with_mtp = json.loads(capsys.readouterr().out)
    assert without_mtp["batch_per_npu"] != with_mtp["batch_per_npu"]

    deployment.write_text(json.dumps({"mtp_draft_token": 0}))
    assert main(command) == 2
    assert "unknown deployment fields ['mtp_draft_token']" in capsys.readouterr().err


MEANS = (
    "SELECT avg(ttft_ms), avg(tpot_ms), count(*) FILTER (WHERE status = 'ok') "
    "FROM read_parquet(?)"
)

# The replay sends each request a little late (send lag, times the time
# scale in emulated time), and the server takes a little longer still to see
# it. So the simulation runs the trace with the arrivals the replay actually
# produced, and the trace has no prefix hashes: cache-aware routing would turn
# a shift of a few emulated ms into a different instance and cache hit.
MEAN_TOLERANCE = 0.10
REPLAYED_ARRIVALS = """
SELECT t.* REPLACE (r.actual_send_ms * ? AS arrival_ms)
FROM read_parquet(?) AS t JOIN read_parquet(?) AS r USING (request_id)
ORDER BY arrival_ms, request_id
"""
WITHOUT_HASHES = """
SELECT * REPLACE ([]::UBIGINT[] AS prefix_block_hashes, 0 AS block_tokens)
FROM read_parquet(?)
"""


def test_simulate_agrees_with_replay(tmp_path: Path) -> None:
    speedup = 10.0
    generated = generated_trace(tmp_path, requests=40, rate=2, seed=11)
    connection = duckdb.connect()
    trace = tmp_path / "no_hashes.parquet"
    no_hashes = connection.sql(WITHOUT_HASHES, params=[str(generated)]).to_arrow_table()
    write_trace(no_hashes, trace)
    replayed = tmp_path / "replayed.parquet"
    with start_server(tmp_path / "server.log", time_scale=speedup) as target:
        replay = ["replay", str(trace), "--target", target, "--speedup", "10"]
        assert main([*replay, "-o", str(replayed)]) == 0

    as_sent = connection.sql(
        REPLAYED_ARRIVALS, params=[speedup, str(trace), str(replayed)]
    ).to_arrow_table()
    sent_trace = tmp_path / "as_sent.parquet"
    write_trace(as_sent, sent_trace)
    simulated = tmp_path / "simulated.parquet"
    assert main(["simulate", str(sent_trace), "-o", str(simulated)]) == 0

    sim = connection.execute(MEANS, [str(simulated)]).fetchone()
    rep = connection.execute(MEANS, [str(replayed)]).fetchone()
    assert sim is not None and rep is not None
    assert sim[2] == rep[2] == 40
    print(
        f"mean TTFT {sim[0]:.1f} / {rep[0]:.1f} ms, TPOT {sim[1]:.2f} / {rep[1]:.2f} ms"
    )
    assert rep[0] == pytest.approx(sim[0], rel=MEAN_TOLERANCE)
    assert rep[1] == pytest.approx(sim[1], rel=MEAN_TOLERANCE)
