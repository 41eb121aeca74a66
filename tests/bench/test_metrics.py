"""Metric formulas on synthetic timestamps, with the arithmetic written out (docs/METRICS.md definitions)."""

from __future__ import annotations

import math

import pytest

from bench.metrics import (
    cell_summary,
    decode_tps_request,
    e2e_ttft,
    est_ppt,
    peak_tps,
    prefill_tps_request,
    run_metrics,
    ttfr,
)
from bench.records import CELL_COLUMNS, RequestRecord


def record(index: int, start: float, first_response: float | None, first_token: float | None,
           token_times: list[float], prompt_tokens: int | None = 100, error: str | None = None,
           batch_start: float = 9.99, latency: float = 0.05, run: int = 0, concurrency: int = 2) -> RequestRecord:
    return RequestRecord(topology="solo", concurrency=concurrency, run=run, index=index, batch_start=batch_start,
                         start=start, prompt_tokens_sent=90, first_response=first_response,
                         first_token=first_token, token_times=token_times,
                         end=token_times[-1] + 0.001 if token_times else start + 1, prompt_tokens=prompt_tokens,
                         completion_tokens=len(token_times), status_code=200 if error is None else 500,
                         error=error, latency_offset=latency)


R0 = record(0, 10.00, 10.10, 10.20, [10.2, 10.3, 10.4, 10.5, 10.6])
R1 = record(1, 10.01, 10.30, 10.40, [10.4, 10.6, 10.8])


def test_per_request_formulas():
    # r0: ttfr = 10.10 - 10.00 = 0.10; e2e_ttft = 10.20 - 10.00 = 0.20; est_ppt = 0.10 - 0.05 = 0.05
    assert ttfr(R0) == pytest.approx(0.10)
    assert e2e_ttft(R0) == pytest.approx(0.20)
    assert est_ppt(R0) == pytest.approx(0.05)
    # prefill (req) = 100 / 0.05 = 2000; decode (req) = (5 - 1) / (10.6 - 10.2) = 4 / 0.4 = 10
    assert prefill_tps_request(R0) == pytest.approx(2000)
    assert decode_tps_request(R0) == pytest.approx(10)
    # r1: est_ppt = (10.30 - 10.01) - 0.05 = 0.24 -> 100 / 0.24 = 416.67; decode = 2 / 0.4 = 5
    assert prefill_tps_request(R1) == pytest.approx(100 / 0.24)
    assert decode_tps_request(R1) == pytest.approx(5)


def test_est_ppt_floors_at_zero_and_prefill_is_then_undefined():
    # ttfr 0.03 < latency 0.05 -> est_ppt = max(0, -0.02) = 0 -> prefill t/s undefined (NaN), not infinite
    fast = record(0, 1.0, 1.03, 1.04, [1.04, 1.05])
    assert est_ppt(fast) == 0.0
    assert math.isnan(prefill_tps_request(fast))


def test_server_prompt_count_wins_over_the_clients():
    # prompt_tokens None (server sent no usage) -> the client's own 90: 90 / 0.05 = 1800
    no_usage = record(0, 10.00, 10.10, 10.20, [10.2, 10.3], prompt_tokens=None)
    assert prefill_tps_request(no_usage) == pytest.approx(1800)


def test_run_totals_of_a_batch_of_two():
    row = run_metrics([R0, R1])
    assert tuple(row) == CELL_COLUMNS
    # prefill (total) = (100 + 100) / (max first_token 10.40 - min start 10.00) = 200 / 0.4 = 500
    assert row["prefill_tps"] == pytest.approx(500)
    # decode (total) = (4 + 2) / (max last token 10.8 - min first_token 10.2) = 6 / 0.6 = 10
    assert row["decode_tps"] == pytest.approx(10)
    # TTFT = mean(200 ms, 390 ms) = 295 ms
    assert row["ttft_ms"] == pytest.approx(295)
    # per-request means: decode (10 + 5) / 2 = 7.5; prefill (2000 + 416.67) / 2 = 1208.33
    assert row["decode_tps_req"] == pytest.approx(7.5)
    assert row["prefill_tps_req"] == pytest.approx((2000 + 100 / 0.24) / 2)
    # all 8 tokens fall in [10.2, 11.2): peak = 8 tokens in one second
    assert row["peak_tps"] == 8
    # send lags: 10.00 - 9.99 = 10 ms, 10.01 - 9.99 = 20 ms
    assert row["max_send_lag_ms"] == pytest.approx(20)
    assert (row["requests"], row["failed"], row["concurrency"], row["run"]) == (2, 0, 2, 0)


def test_at_concurrency_one_the_decode_total_is_the_per_request_rate():
    alone = record(0, 10.00, 10.10, 10.20, [10.2, 10.3, 10.4, 10.5, 10.6], concurrency=1)
    row = run_metrics([alone])
    assert row["decode_tps"] == pytest.approx(decode_tps_request(alone)) == pytest.approx(10)
    # prefill total uses first_token - start (0.2 s): 100 / 0.2 = 500; the per-request one uses est_ppt
    assert row["prefill_tps"] == pytest.approx(500)


def test_peak_counts_the_busiest_one_second_window():
    # window [0.5, 1.5) holds 0.5, 0.9, 1.0, 1.1, 1.2 = 5 tokens; [0, 1) holds only 3 (1.0 is outside)
    assert peak_tps([0.0, 0.5, 0.9, 1.0, 1.1, 1.2, 3.0]) == 5
    assert peak_tps([3.0, 0.0, 1.0]) == 1  # unsorted input; 1.0 - 0.0 is a full second: not one window
    assert math.isnan(peak_tps([]))


def test_peak_tps_counts_as_the_sliding_walk_does_on_window_edges() -> None:
    import random

    from bench.metrics import _peak_tps_walk

    rng = random.Random(4)
    for _ in range(200):
        # tokens on a grid of tenths, so many pairs are exactly (or in floats almost) one window apart
        times = [round(rng.randrange(0, 60) * 0.1 + rng.choice([0.0, 1e-16, -1e-16, 0.3]), 17)
                 for _ in range(rng.randrange(1, 40))]
        for window in (1.0, 0.3, 0.7):
            assert peak_tps(times, window) == _peak_tps_walk(sorted(times), window)


def test_a_failed_request_is_counted_and_left_out_of_the_rates():
    failed = record(2, 10.02, None, None, [], prompt_tokens=None, error="HTTP 500: boom")
    row = run_metrics([R0, R1, failed])
    assert (row["requests"], row["failed"]) == (3, 1)
    assert row["decode_tps"] == pytest.approx(10)  # same as without it
    assert row["max_send_lag_ms"] == pytest.approx(30)  # its send lag still counts: 10.02 - 9.99


def test_a_run_whose_requests_all_failed_has_nan_metrics_not_an_exception():
    rows = run_metrics([record(i, 10.0, None, None, [], error="timeout") for i in range(4)])
    assert (rows["requests"], rows["failed"]) == (4, 4)
    for name in ("decode_tps", "prefill_tps", "ttft_ms", "peak_tps", "decode_tps_req", "prefill_tps_req"):
        assert math.isnan(rows[name]), name


def test_cell_summary_population_std_and_percentiles_over_requests():
    runs = []
    records = []
    # three runs of one request each: TTFT 100, 200, 300 ms; decode 10, 20, 30 t/s (2 tokens each:
    # 1 decode token over 0.1, 0.05, 1/30 s)
    for run, (ttft, decode_span) in enumerate([(0.1, 0.1), (0.2, 0.05), (0.3, 1 / 30)]):
        r = record(0, 0.0, ttft, ttft, [ttft, ttft + decode_span], run=run, concurrency=1, batch_start=0.0)
        records.append(r)
        runs.append(run_metrics([r]))
    extra = record(1, 0.0, 0.4, 0.4, [0.4, 0.5], run=2, concurrency=1, batch_start=0.0)
    records.append(extra)  # a fourth request (TTFT 400 ms) only for the percentiles
    summary = cell_summary(runs, records)
    # decode mean = 20; population std = sqrt((10^2 + 0 + 10^2) / 3) = 8.165 (sample std would be 10)
    assert summary["decode_tps_mean"] == pytest.approx(20)
    assert summary["decode_tps_std"] == pytest.approx(math.sqrt(200 / 3))
    assert summary["ttft_ms_mean"] == pytest.approx(200)
    # TTFT over requests 100, 200, 300, 400 (linear interpolation): p50 = 250, p90 = 300 + 0.7 * 100 = 370,
    # p99 = 300 + 0.97 * 100 = 397
    assert summary["ttft_p50_ms"] == pytest.approx(250)
    assert summary["ttft_p90_ms"] == pytest.approx(370)
    assert summary["ttft_p99_ms"] == pytest.approx(397)
    assert (summary["runs"], summary["requests"], summary["failed"]) == (3, 3, 0)


def test_cell_summary_skips_all_failed_runs_in_means_but_counts_their_failures():
    good = run_metrics([R0, R1])
    bad = run_metrics([record(i, 10.0, None, None, [], error="cut", run=1) for i in range(2)])
    summary = cell_summary([good, bad], [R0, R1])
    assert summary["decode_tps_mean"] == pytest.approx(10)
    assert summary["decode_tps_std"] == 0
    assert (summary["requests"], summary["failed"]) == (4, 2)
