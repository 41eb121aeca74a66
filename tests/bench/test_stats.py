"""Intervals of bench/stats.py: coverage on synthetic data whose truth is known, and their edge cases.

Coverage = the share of many independent draws whose interval contains the true value; a 95% interval
should contain it about 95% of the time. Seeded draws, so the figures are the same on every run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.metrics import SLOLimits, run_metrics
from bench.records import CELL_COLUMNS, RequestRecord
from bench.stats import Interval, bootstrap_mean, cell_interval, t_interval


def lognormal_mean_one(rng: np.random.Generator, cv: float, size: int | tuple[int, ...]) -> np.ndarray:
    sigma = math.sqrt(math.log(1 + cv**2))
    return rng.lognormal(-sigma**2 / 2, sigma, size)


def test_t_interval_over_runs_covers_95_percent() -> None:
    rng = np.random.default_rng(1)
    truth, draws = 100.0, 1000
    hits = 0
    for _ in range(draws):
        lo_hi = t_interval(list(rng.normal(truth, 4.0, 3)))
        hits += lo_hi[1] <= truth <= lo_hi[2]
    assert 0.93 <= hits / draws <= 0.97


def test_percentile_bootstrap_over_three_runs_would_under_cover() -> None:
    # why runs use Student t: the same draws, bootstrapped, miss the truth about a quarter of the time
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(300):
        lo, hi = bootstrap_mean(list(rng.normal(100.0, 4.0, 3)), resamples=400)
        hits += lo <= 100.0 <= hi
    assert hits / 300 < 0.85


def request(index: int, ttft_s: float, token_times: list[float], prompt: int = 1024) -> RequestRecord:
    return RequestRecord(topology="solo", concurrency=1, run=0, index=index, batch_start=0.0, start=0.0,
                         prompt_tokens_sent=prompt, first_response=ttft_s, first_token=ttft_s,
                         token_times=token_times, end=token_times[-1], prompt_tokens=prompt,
                         completion_tokens=len(token_times), status_code=200)


def test_one_run_ttft_interval_over_requests_covers_95_percent() -> None:
    # 32 requests, TTFT i.i.d. with mean 0.2 s (lognormal, cv 0.3): the run's mean TTFT estimates 200 ms
    rng = np.random.default_rng(2)
    draws, hits = 300, 0
    for _ in range(draws):
        ttfts = 0.2 * lognormal_mean_one(rng, 0.3, 32)
        row = run_metrics([request(i, t, [t, t + 0.01]) for i, t in enumerate(ttfts)])
        hits += row["ttft_ms_lo"] <= 200.0 <= row["ttft_ms_hi"]
    assert 0.91 <= hits / draws <= 0.98


def test_one_run_decode_interval_over_steps_covers_95_percent() -> None:
    # 8 requests decode in lockstep through 63 steps whose times jitter (mean 10 ms, cv 0.3); each request
    # sees the step end a little later (client delivery, up to 0.2 ms). Truth: 8 tokens per 10 ms = 800 t/s.
    rng = np.random.default_rng(3)
    draws, hits, widths = 300, 0, []
    for _ in range(draws):
        steps = np.cumsum(0.010 * lognormal_mean_one(rng, 0.3, 64))
        records = [request(i, float(steps[0]), list(steps + rng.uniform(0, 2e-4, steps.size))) for i in range(8)]
        row = run_metrics(records)
        hits += row["decode_tps_lo"] <= 800.0 <= row["decode_tps_hi"]
        widths.append((row["decode_tps_hi"] - row["decode_tps_lo"]) / 2 / row["decode_tps"])
    assert 0.91 <= hits / draws <= 0.98
    # the half-width is what per-step noise allows: about 1.96 * 0.3 / sqrt(63) = 7.4% of the mean
    assert 0.05 < float(np.mean(widths)) < 0.10


def test_run_rows_carry_bounds_around_the_observed_value() -> None:
    rng = np.random.default_rng(4)
    records = [request(i, 0.1 + 0.01 * i, list(0.1 + 0.01 * i + np.cumsum(0.01 * lognormal_mean_one(rng, 0.2, 20))))
               for i in range(6)]
    row = run_metrics(records)
    assert tuple(row) == CELL_COLUMNS
    for metric in ("decode_tps", "prefill_tps", "ttft_ms"):
        assert row[f"{metric}_lo"] < row[metric] < row[f"{metric}_hi"], metric
    # deterministic: the same records give the same bounds
    assert run_metrics(records)["decode_tps_lo"] == row["decode_tps_lo"]


def test_one_request_has_no_ttft_or_prefill_interval_but_a_decode_one() -> None:
    times = list(0.5 + np.cumsum(np.full(16, 0.01) * (1 + 0.1 * np.sin(np.arange(16)))))
    row = run_metrics([request(0, 0.5, times)])
    assert math.isnan(row["ttft_ms_lo"]) and math.isnan(row["prefill_tps_hi"])
    assert row["decode_tps_lo"] < row["decode_tps"] < row["decode_tps_hi"]


def test_cell_interval_over_runs_or_within_the_one_run() -> None:
    # runs 98, 100, 102: mean 100, s = 2, t(2) = 4.303 -> 100 ± 4.303 * 2 / sqrt(3) = ± 4.97
    over_runs = cell_interval([98.0, 100.0, 102.0], [90, 90, 90], [110, 110, 110])
    assert over_runs.method == "runs" and over_runs.n == 3
    assert over_runs.mean == pytest.approx(100.0)
    assert over_runs.half_width == pytest.approx(4.303 * 2 / math.sqrt(3), rel=1e-3)
    assert over_runs.describe() == "over 3 runs (Student t)"
    one = cell_interval([100.0], [97.0], [103.0])
    assert one == Interval(100.0, 97.0, 103.0, 1, "within-run")
    assert one.relative_half_width == pytest.approx(0.03)
    # a folder from before the bounds existed: one run, no interval; a failed run is skipped
    assert cell_interval([100.0]).method == "none"
    assert cell_interval([math.nan, 50.0], [1, 49], [2, 51]).method == "within-run"
    assert cell_interval([]).n == 0


def test_step_bootstrap_of_a_span_made_of_zero_gaps_has_no_interval_and_no_warning() -> None:
    import warnings

    import numpy as np

    from bench.stats import bootstrap_step_gaps

    gaps = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # every token of the run arrived in one chunk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = bootstrap_step_gaps(100.0, 0.0, gaps)
    assert np.isnan(lo) and np.isnan(hi)
    mixed = np.array([[0.0, 0.01, 0.0], [0.0, 0.01, 0.0]])  # only some resamples are all zero
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = bootstrap_step_gaps(100.0, 0.01, mixed)
    assert 0 < lo <= 100.0 <= hi


def test_an_open_loop_run_bounds_its_users_ttft_tail_and_goodput_from_its_requests() -> None:
    # 300 requests with i.i.d. user TTFTs (lognormal, mean 1 s, cv 0.5): the run's p99 and its 95% bounds;
    # the truth of p99 for this distribution is known, the bounds must cover it in most draws
    sigma = math.sqrt(math.log(1 + 0.5**2))
    true_p99 = math.exp(-sigma**2 / 2 + sigma * 2.3263)  # the 99% quantile of the lognormal (mean 1)
    rng = np.random.default_rng(5)
    draws, hits = 100, 0
    slo = SLOLimits(ttft_ms=1500)
    for _ in range(draws):
        ttfts = lognormal_mean_one(rng, 0.5, 300)
        row = run_metrics([request(i, t, [t, t + 0.01, t + 0.02]) for i, t in enumerate(ttfts)], slo=slo)
        hits += row["ttft_user_p99_ms_lo"] <= true_p99 * 1000 <= row["ttft_user_p99_ms_hi"]
        for metric in ("ttft_user_ms", "ttft_user_p95_ms", "ttft_user_p99_ms", "goodput", "decode_tps_req"):
            assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"], metric
        assert row["goodput_lo"] < row["goodput"] < row["goodput_hi"]  # ~85% met the 1.5 s limit
    # order statistics: about 95% (a percentile bootstrap of the same runs covered 82 of 100)
    assert 0.90 <= hits / draws <= 0.99


def test_every_request_meeting_the_slo_gives_goodput_bounds_of_one() -> None:
    row = run_metrics([request(i, 0.1, [0.1, 0.11]) for i in range(5)], slo=SLOLimits(ttft_ms=1000))
    assert row["goodput"] == row["goodput_lo"] == row["goodput_hi"] == 1.0
    assert math.isnan(run_metrics([request(0, 0.1, [0.1, 0.11])])["ttft_user_p99_ms_lo"])  # one request
