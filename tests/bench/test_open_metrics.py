import math

import pytest

from bench.metrics import SLOLimits, capacity, open_run_metrics, peak_in_flight, ttft_user
from bench.records import RequestRecord


def record(index: int, due: float, start: float, first: float, last: float, tokens: int = 5) -> RequestRecord:
    step = (last - first) / (tokens - 1)
    return RequestRecord(topology="t", concurrency=0, run=0, index=index, batch_start=start, start=start,
                         prompt_tokens_sent=100, first_response=first, first_token=first,
                         token_times=[first + k * step for k in range(tokens)], end=last, prompt_tokens=100,
                         completion_tokens=tokens, scheduled_at=due)


def test_the_users_clock_starts_at_the_due_time() -> None:
    r = record(0, due=10.0, start=12.0, first=12.5, last=14.5)
    assert ttft_user(r) == pytest.approx(2.5)
    row = open_run_metrics([r], rate=1.0, slo=SLOLimits(ttft_ms=2000))
    assert row["ttft_p50_ms"] == pytest.approx(500)  # from send, as vllm bench serve
    assert row["ttft_user_p95_ms"] == pytest.approx(2500)
    assert row["goodput"] == 0.0  # 2.5 s as the user felt it, over the 2 s SLO
    assert open_run_metrics([r], slo=SLOLimits(ttft_ms=3000))["goodput"] == 1.0
    assert row["tpot_p50_ms"] == pytest.approx(500) and row["itl_p99_ms"] == pytest.approx(500)
    assert row["e2e_user_p50_ms"] == pytest.approx(4500)


def test_rates_and_peak_in_flight() -> None:
    records = [record(0, 0.0, 0.0, 0.1, 1.0), record(1, 0.5, 0.5, 0.6, 2.0), record(2, 3.0, 3.0, 3.1, 4.0)]
    row = open_run_metrics(records, rate=0.75)
    assert row["achieved_rate"] == pytest.approx(3 / 4.0)
    assert row["output_tps"] == pytest.approx(15 / 4.0)
    assert peak_in_flight(records) == 2 and row["peak_in_flight"] == 2
    assert math.isnan(row["goodput"])  # no SLO, no goodput


def test_capacity_interpolates_between_the_steps_around_the_limit() -> None:
    steps = [(0.1, 0.4), (0.2, 0.6), (0.3, 1.0), (0.5, 3.0), (0.7, 9.0), (1.0, 40.0)]
    assert capacity(steps, 2.0).rate == pytest.approx(0.3 + 0.2 * (2.0 - 1.0) / (3.0 - 1.0))  # 0.4
    assert capacity(steps, 5.0).rate == pytest.approx(0.5 + 0.2 * (5.0 - 3.0) / (9.0 - 3.0))
    assert capacity(steps, 10.0).rate == pytest.approx(0.7 + 0.3 * 1 / 31)
    assert capacity(steps, 0.3).rate is None and capacity(steps, 0.3).text() == "none"
    top = capacity(steps, 60.0)
    assert top.rate == 1.0 and not top.bounded and top.text() == "1.00 req/s+"
    # a step where everything failed counts as over the limit: capacity stops at the step before it
    assert capacity([(0.1, 0.5), (0.2, math.nan)], 2.0).rate == 0.1
    assert capacity(list(reversed(steps)), 2.0).rate == pytest.approx(0.4)
