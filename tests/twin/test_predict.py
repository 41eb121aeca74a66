"""Predictions in virtual time: record shape, hand-checked timings, routers, topologies, calibration."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from bench.records import CELL_COLUMNS
from common.errors import ConfigError
from twin.costmodel import SeqWork
from twin.engine import EngineConfig
from twin.predict import (
    VirtualDeployment,
    predict_cells,
    simulate_batch,
    topologies_for_nodes,
    topology_model,
)

# the published solo column, kept in the repo so the calibration guard runs wherever the tests do
REFERENCE = Path(__file__).resolve().parents[2] / "configs" / "reference" / "gb10_solo_gemma4_26b_fp8.csv"


@pytest.fixture(scope="module")
def tiny_fast() -> EngineConfig:
    return EngineConfig.from_names("fast", "tiny")


@pytest.fixture(scope="module")
def gemma_gb10() -> EngineConfig:
    return EngineConfig.from_names("gb10", "gemma4-26b")


def test_single_request_timeline_by_hand(tiny_fast):
    (record,) = simulate_batch("solo", tiny_fast, concurrency=1, prompt_tokens=200, max_tokens=5)
    hw = tiny_fast.hardware
    cost = tiny_fast.cost_model()
    # frontend, then the idle engine's pickup, then one prefill step; the client sees it after the response latency
    prefill = cost.step([SeqWork(200, 0)]).seconds
    expected_ttft = (hw.frontend_ms_per_request + hw.engine_pickup_ms + hw.response_latency_ms) / 1000 + prefill
    assert record.first_token - record.start == pytest.approx(expected_ttft)
    assert record.first_response == record.first_token == record.token_times[0]
    assert record.end == record.token_times[-1]
    assert record.completion_tokens == 5 and record.prompt_tokens == 200 and record.ok
    # then one decode step per token, each at its own context length
    gaps = [b - a for a, b in zip(record.token_times, record.token_times[1:])]
    assert gaps == pytest.approx([cost.step([SeqWork(1, 200 + i)]).seconds for i in range(4)])


def test_batch_records_have_the_bench_shape(tiny_fast):
    records = simulate_batch("solo", tiny_fast, concurrency=4, prompt_tokens=100, max_tokens=8)
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert {r.batch_start for r in records} == {0.0}
    for r in records:
        assert len(r.token_times) == 8 and r.token_times == sorted(r.token_times)
        assert r.topology == "solo" and r.concurrency == 4 and r.served_by is None


def test_router_adds_its_latency_and_splits_at_random(tiny_fast):
    (solo,) = simulate_batch("solo", tiny_fast, 1, 100, 4)
    (routed,) = simulate_batch("2x-solo-shuffle", tiny_fast, 1, 100, 4)
    router = tiny_fast.hardware.router
    # one request: the way in (latency + its own accept and dispatch parts) and the first chunk's way back
    one_way_in = (router.request_latency_ms + router.accept_per_request_ms + router.dispatch_per_request_ms) / 1000
    assert routed.first_token - routed.start == pytest.approx(
        solo.first_token - solo.start + one_way_in + router.response_latency_ms / 1000
    )
    splits = []
    for seed in range(12):
        records = simulate_batch("2x-solo-shuffle", tiny_fast, 16, 64, 2, seed=seed)
        splits.append(Counter(r.served_by for r in records)["replica0"])
    assert len(set(splits)) > 2  # random, not round-robin (which would always give 8)
    assert any(s != 8 for s in splits)
    again = [r.served_by for r in simulate_batch("2x-solo-shuffle", tiny_fast, 16, 64, 2, seed=3)]
    assert again == [r.served_by for r in simulate_batch("2x-solo-shuffle", tiny_fast, 16, 64, 2, seed=3)]


def test_a_measured_split_can_be_replayed(tiny_fast):
    split = [0, 0, 0, 1]
    records = simulate_batch("2x-solo-shuffle", tiny_fast, 4, 64, 4, assignment=split)
    assert [r.served_by for r in records] == ["replica0", "replica0", "replica0", "replica1"]
    # the lone request on replica1 is served like a c1 request behind the router, but handed on later: the
    # proxy accepts all four first (3 more accept parts), and it is the 4th dispatched (3 more dispatch parts)
    (alone,) = simulate_batch("2x-solo-shuffle", tiny_fast, 1, 64, 4, assignment=[1])
    router = tiny_fast.hardware.router
    later = 3 * (router.accept_per_request_ms + router.dispatch_per_request_ms) / 1000
    assert later > 0
    assert records[3].token_times == pytest.approx([t + later for t in alone.token_times])
    with pytest.raises(ConfigError):
        simulate_batch("2x-solo-shuffle", tiny_fast, 2, 64, 4, assignment=[0, 2])


def test_tensor_parallel_comes_out_of_the_model(gemma_gb10):
    solo = predict_cells("solo", gemma_gb10, [1], runs=1)[0]
    mp = predict_cells("tp2-mp", gemma_gb10, [1], runs=1)[0]
    ray = predict_cells("tp2-ray", gemma_gb10, [1], runs=1)[0]
    assert mp["decode_tps"] > solo["decode_tps"]  # half the weights per node, read in parallel
    assert ray["decode_tps"] < mp["decode_tps"]  # same work plus Ray's larger per-step overhead
    assert mp["ttft_ms"] < solo["ttft_ms"]
    sockets = predict_cells("tp2-mp", gemma_gb10.with_(link="sockets"), [1], runs=1)[0]
    assert sockets["decode_tps"] < mp["decode_tps"]  # all-reduces over TCP cost more than over RoCE


def test_tp2_holds_more_kv_than_solo(gemma_gb10):
    solo = VirtualDeployment("solo", gemma_gb10).cores[0]
    tp2 = VirtualDeployment("tp2-mp", gemma_gb10).cores[0]
    assert tp2.kv_capacity_tokens > 2 * solo.kv_capacity_tokens


def test_predict_cells_rows(tiny_fast):
    rows = predict_cells("2x-solo-shuffle", tiny_fast, [1, 4], prompt_tokens=64, max_tokens=8, runs=3)
    assert len(rows) == 6
    for row in rows:
        assert tuple(row) == CELL_COLUMNS
        assert row["failed"] == 0 and row["decode_tps"] > 0 and row["prefill_tps"] > 0 and row["ttft_ms"] > 0
    assert [(r["concurrency"], r["run"]) for r in rows] == [(1, 0), (1, 1), (1, 2), (4, 0), (4, 1), (4, 2)]
    # the warm-up batch is not a row, and the same seed gives the same rows
    assert rows == predict_cells("2x-solo-shuffle", tiny_fast, [1, 4], prompt_tokens=64, max_tokens=8, runs=3)


def test_what_ifs_quantization_and_four_nodes(gemma_gb10):
    fp8 = predict_cells("solo", gemma_gb10, [1], runs=1)[0]
    nvfp4 = predict_cells("solo", gemma_gb10.with_(weight_bytes_per_param=0.5625), [1], runs=1)[0]
    assert nvfp4["decode_tps"] > 1.3 * fp8["decode_tps"]
    assert topologies_for_nodes(4) == ["solo", "tp2-mp", "tp4-mp", "tp4-ray", "2x-tp2-shuffle", "4x-solo-shuffle"]
    assert topology_model("2x-tp2-shuffle").nodes == 4 and topology_model("4x-solo-shuffle").nodes == 4
    tp4 = predict_cells("tp4-mp", gemma_gb10, [1], runs=1)[0]
    tp2 = predict_cells("tp2-mp", gemma_gb10, [1], runs=1)[0]
    assert tp4["decode_tps"] > tp2["decode_tps"]
    with pytest.raises(ConfigError):
        topology_model("tp1-mp")
    with pytest.raises(ConfigError):
        topologies_for_nodes(3)


def test_calibrated_solo_column_within_ten_percent(gemma_gb10):
    """Guards the calibration (computed in virtual time, deterministic): every published cell within 10%."""
    lines = [line for line in REFERENCE.read_text().splitlines() if line and not line.startswith("#")]
    published = {int(row["concurrency"]): row for row in csv.DictReader(lines)}
    rows = predict_cells("solo", gemma_gb10, sorted(published), runs=1)
    for row in rows:
        ref = published[row["concurrency"]]
        for key in ("decode_tps", "prefill_tps", "ttft_ms"):
            assert row[key] == pytest.approx(float(ref[key]), rel=0.10), (row["concurrency"], key)


def test_a_burst_reaches_the_engines_through_the_proxy_in_a_clump():
    from twin.profiles import RouterProfile

    def estimate(value: float) -> dict[str, object]:
        return {"value": value, "source": "estimate: test"}

    router = RouterProfile.model_validate({"request_latency_ms": estimate(3.0), "accept_per_request_ms": estimate(5.9),
                                           "dispatch_per_request_ms": estimate(3.7)})
    assert router.handover_s(1, 1) == pytest.approx(0.0126)  # 3 + 5.9 + 3.7 ms
    # 64 at once: nothing leaves before all 64 are accepted (377.6 ms), then one every 3.7 ms
    assert router.handover_s(64, 1) == pytest.approx(0.3843)
    assert router.handover_s(64, 64) == pytest.approx(0.6174)
    assert router.handover_s(64, 2) - router.handover_s(64, 1) == pytest.approx(0.0037)


def test_the_proxy_relays_chunks_one_at_a_time():
    from twin.profiles import RouterProfile

    def estimate(value: float) -> dict[str, object]:
        return {"value": value, "source": "estimate: test"}

    router = RouterProfile.model_validate({"request_latency_ms": estimate(0.0), "relay_per_chunk_ms": estimate(2.0)})
    # first come first served, 2 ms each: the two at 0 leave at 2 and 4 ms, the one at 1 ms waits until 6 ms,
    # the one at 10 ms finds the proxy free
    assert router.relayed([0.0, 0.001, 0.0, 0.010]) == pytest.approx([0.002, 0.006, 0.004, 0.012])
    assert router.model_copy(update={"relay_per_chunk_ms": 0.0}).relayed([0.003, 0.001]) == [0.003, 0.001]


def test_a_slow_proxy_relay_caps_routed_decode(tiny_fast):
    hw = tiny_fast.hardware
    (alone,) = simulate_batch("2x-solo-shuffle", tiny_fast, 1, 64, 8)
    # a relay faster than the decode steps delays every chunk of a lone stream by exactly its cost
    gap = min(b - a for a, b in zip(alone.token_times, alone.token_times[1:]))
    quick = tiny_fast.with_(hardware=hw.model_copy(update={"router": hw.router.model_copy(
        update={"relay_per_chunk_ms": 0.5 * gap * 1000})}))
    (relayed,) = simulate_batch("2x-solo-shuffle", quick, 1, 64, 8)
    assert relayed.token_times == pytest.approx([t + 0.5 * gap for t in alone.token_times])
    # one 10x slower than a decode step: 16 streams' chunks leave one every relay_per_chunk_ms at best
    slow_ms = 10 * gap * 1000
    slow = tiny_fast.with_(hardware=hw.model_copy(update={"router": hw.router.model_copy(
        update={"relay_per_chunk_ms": slow_ms})}))
    row = predict_cells("2x-solo-shuffle", slow, [16], prompt_tokens=64, max_tokens=8, runs=1)[0]
    # saturated: all 16 x 8 = 128 chunks leave back to back, the first one at the earliest first token, so
    # the 16 x 7 decode tokens span 127 relay slots
    assert row["decode_tps"] == pytest.approx(112 / 127 * 1000 / slow_ms, rel=1e-3)


def test_replayed_send_times_decide_whether_a_request_makes_the_first_step() -> None:
    """gb10: the frontend takes 8 ms per request, one at a time, and an idle engine starts its first step
    12 ms after the first request is through (at 20 ms). A second request sent at s is through at
    max(s, 8 ms) + 8 ms: it joins that step when sent up to 12 ms after the first, else waits a step."""
    config = EngineConfig.from_names("gb10", "gemma4-26b", link="roce1", noise_cv=0.0)

    def first_tokens(second_sent: float) -> list[float]:
        records = VirtualDeployment("solo", config).run_batch(2, 1024, 8, sends=[0.0, second_sent])
        assert [r.start for r in records] == [0.0, second_sent]
        return [r.first_token for r in records]  # type: ignore[misc]

    together = first_tokens(0.0)
    assert together[0] == together[1]
    assert first_tokens(0.0119) == together  # through at 19.9 ms: in the step starting at 20 ms
    alone, second = first_tokens(0.0121)  # through at 20.1 ms: the first step is the first request's alone
    assert alone < together[0] < second
    with pytest.raises(ConfigError):
        VirtualDeployment("solo", config).run_batch(2, 1024, 8, sends=[0.0])
