"""Per-cell telemetry on hand-made samples: alignment to run windows, counters across a reset, server TTFT
from the histogram, energy per token, warnings and the cost row."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from telemetry.sampler import RunWindow, align_to_runs
from telemetry.summary import cell_telemetry, cell_warnings, integrate_power, topology_costs


def sample(t: float, source: str, metric: str, value: float, *, topology: str = "solo", le: float = math.nan,
           node: str = "node1") -> dict:
    return {"topology": topology, "workload": "default", "load": None, "concurrency": None, "run": None,
            "source": source, "node": node, "t": t,
            "unix": 1e9 + t, "metric": metric, "le": le, "value": value}


def requests(topology: str, concurrency: int, run: int, start: float, end: float, tokens: list[int],
             errors: list[str | None] | None = None) -> list[dict]:
    errors = errors or [None] * len(tokens)
    return [{"topology": topology, "concurrency": concurrency, "run": run, "batch_start": start, "start": start,
             "end": end, "completion_tokens": n, "error": e} for n, e in zip(tokens, errors)]


def test_samples_take_the_keys_of_the_run_window_they_fall_in() -> None:
    rows = [sample(t, "node:node1", "gpu_power_w", 40) for t in (0.5, 1.5, 2.5, 3.5)]
    rows[0]["load"], rows[0]["concurrency"] = "c1", 1  # marked during c1's warm-up
    windows = [RunWindow("c1", 1, 0, 1.0, 2.0), RunWindow("c1", 1, 1, 2.2, 3.0)]
    aligned = align_to_runs(rows, windows)
    assert [(r["load"], r["run"]) for r in aligned] == [("c1", None), ("c1", 0), ("c1", 1), (None, None)]
    assert rows[1]["run"] is None  # the sampler's own rows are not changed


def test_power_is_interpolated_and_integrated_over_the_window() -> None:
    times = np.arange(0.0, 11.0)
    assert integrate_power(times, np.full(11, 40.0), 2.0, 6.0) == pytest.approx(160.0)
    # a ramp 0 -> 100 W over 10 s: its mean is 50 W
    assert integrate_power(times, times * 10.0, 0.0, 10.0) == pytest.approx(500.0)
    # a window between two samples uses the line between them
    assert integrate_power(np.array([0.0, 1.0]), np.array([10.0, 20.0]), 0.25, 0.75) == pytest.approx(7.5)
    # no sample anywhere near: not measured (rather than idle or zero)
    assert math.isnan(integrate_power(np.array([0.0, 1.0]), np.array([10.0, 20.0]), 50.0, 60.0))


def test_energy_per_token_sums_the_topologys_nodes() -> None:
    telemetry = [sample(t, "node:node1", "gpu_power_w", 40.0, topology="tp2-mp", node="node1")
                 for t in np.arange(0.0, 11.0)]
    telemetry += [sample(t + 0.3, "node:node2", "gpu_power_w", 20.0, topology="tp2-mp", node="node2")
                  for t in np.arange(0.0, 11.0)]
    reqs = requests("tp2-mp", 2, 0, 2.0, 6.0, [50, 50]) + requests("tp2-mp", 2, 1, 7.0, 9.0, [50, 50, 0],
                                                                       [None, None, "HTTP 500"])
    row = cell_telemetry(pd.DataFrame(telemetry), pd.DataFrame(reqs)).iloc[0]
    # run 0: 4 s x 60 W = 240 J; run 1: 2 s x 60 W = 120 J; 200 tokens (the failed request adds none)
    assert row["energy_j"] == pytest.approx(360.0)
    assert row["output_tokens"] == 200
    assert row["j_per_token"] == pytest.approx(1.8)
    assert row["tokens_per_s_per_w"] == pytest.approx(200 / 360)
    assert row["power_w"] == pytest.approx(60.0)
    assert row["power_nodes"] == 2 and row["runs"] == 2
    # each run's own J per token (2.4 and 1.2) gives the interval the energy winner must clear: Student-t, 1 df
    half_width = 12.706 * 0.6
    assert (row["j_per_token_lo"], row["j_per_token_hi"]) == pytest.approx((1.8 - half_width, 1.8 + half_width), rel=1e-3)


def test_server_figures_of_a_cell_with_a_counter_reset() -> None:
    engine = "engine:node1"
    telemetry = []
    # preemptions: the engine restarted between t=2 and t=3 (7 -> 1)
    for t, value in ((0, 5), (1, 5), (2, 7), (3, 1), (4, 3), (5, 3)):
        telemetry.append(sample(t, engine, "preemptions", value))
    for t, kv, running, waiting in ((1.5, 0.5, 8, 0), (2.5, 1.0, 6, 4), (3.5, 0.75, 4, 2)):
        telemetry += [sample(t, engine, "kv_cache_usage", kv), sample(t, engine, "requests_running", running),
                      sample(t, engine, "requests_waiting", waiting)]
    # prefix cache: 100 queried tokens, 25 hit inside the window
    telemetry += [sample(0.9, engine, "prefix_cache_queries", 1000), sample(4.1, engine, "prefix_cache_queries", 1100),
                  sample(0.9, engine, "prefix_cache_hits", 10), sample(4.1, engine, "prefix_cache_hits", 35)]
    # TTFT histogram: 4 first tokens in the window, 0.05+0.05+0.15+0.35 s
    for t, (b1, b2, inf, total, count) in ((0.9, (2, 3, 3, 0.2, 3)), (4.1, (4, 5, 7, 0.8, 7))):
        telemetry += [sample(t, engine, "ttft_seconds_bucket", b1, le=0.1),
                      sample(t, engine, "ttft_seconds_bucket", b2, le=0.2),
                      sample(t, engine, "ttft_seconds_bucket", inf, le=math.inf),
                      sample(t, engine, "ttft_seconds_sum", total), sample(t, engine, "ttft_seconds_count", count)]
    row = cell_telemetry(pd.DataFrame(telemetry), pd.DataFrame(requests("solo", 8, 0, 1.0, 4.0, [10] * 4))).iloc[0]
    assert row["preemptions"] == 0 + 2 + 1 + 2  # bracket 0..4: 5->5, 5->7, reset to 1, 1->3
    assert row["kv_cache_mean"] == pytest.approx(0.75) and row["kv_cache_max"] == 1.0
    assert row["running_mean"] == pytest.approx(6.0) and row["waiting_mean"] == pytest.approx(2.0)
    assert row["prefix_cache_hit_rate"] == pytest.approx(0.25)
    assert row["server_ttft_ms"] == pytest.approx(150.0)  # (0.8 - 0.2) / (7 - 3)
    # 2 of the 4 fell beyond the last finite bucket: p90 is that bound (Prometheus' convention)
    assert row["server_ttft_p90_ms"] == pytest.approx(200.0)
    assert math.isnan(row["energy_j"]) and row["power_nodes"] == 0  # no node sample: energy not measured
    warnings = cell_warnings(pd.DataFrame([row]))
    assert any("5 preemption" in w for w in warnings) and any("KV cache was full" in w for w in warnings)


def test_two_engines_add_their_queues_and_average_their_caches() -> None:
    telemetry = []
    for source, kv, running in (("engine:node1", 0.2, 3), ("engine:node2", 0.6, 5)):
        telemetry += [sample(1.5, source, "kv_cache_usage", kv, topology="2x"),
                      sample(1.5, source, "requests_running", running, topology="2x")]
    row = cell_telemetry(pd.DataFrame(telemetry), pd.DataFrame(requests("2x", 8, 0, 1.0, 2.0, [1]))).iloc[0]
    assert row["running_mean"] == 8 and row["kv_cache_mean"] == pytest.approx(0.4)
    assert cell_warnings(pd.DataFrame([row])) == []


def test_cost_row_from_prices_in_the_cluster_file() -> None:
    summary = pd.DataFrame([
        {"topology": "solo", "concurrency": 1, "j_per_token": 2.0, "power_nodes": 1, "output_tokens": 1000,
         "seconds": 10.0},
        {"topology": "solo", "concurrency": 64, "j_per_token": 0.5, "power_nodes": 1, "output_tokens": 64000,
         "seconds": 100.0},
    ])
    costs = topology_costs(summary, {"box_price": 4000, "kwh_price": 0.36, "currency": "EUR",
                                     "amortization_years": 3})
    row = costs.iloc[0]
    assert row["concurrency"] == 64 and row["boxes"] == 1 and row["currency"] == "EUR"
    assert row["energy_per_mtok"] == pytest.approx(0.5 * 1e6 / 3.6e6 * 0.36)  # 0.05 per million tokens
    per_second = 4000 / (3 * 365.25 * 86400)
    assert row["hardware_per_mtok"] == pytest.approx(per_second / 640 * 1e6)
    assert topology_costs(summary, None).empty
