import math

import numpy as np
import pytest

from bench.arrivals import ArrivalProcess
from common.errors import ConfigError


@pytest.mark.parametrize("rate,k", [(0.3, 0.7), (1.5, 1.0), (4.0, 4.0), (2.0, 0.25)])
def test_gaps_have_mean_one_over_rate_and_cv_one_over_sqrt_k(rate: float, k: float) -> None:
    gaps = ArrivalProcess(rate, k).gaps(200_000, seed=7)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(k), rel=0.03)


def test_schedule_by_count_starts_at_zero_and_is_seeded() -> None:
    process = ArrivalProcess(2.0, 0.7)
    times = process.schedule(count=300, seed=42)
    assert len(times) == 300 and times[0] == 0.0
    assert all(b >= a for a, b in zip(times, times[1:]))
    assert times == process.schedule(count=300, seed=42)
    assert times != process.schedule(count=300, seed=43)
    # the first n due times do not depend on how many are asked for
    assert process.schedule(count=50, seed=42) == times[:50]
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(0.5, rel=0.15)


def test_schedule_by_duration_and_by_both() -> None:
    process = ArrivalProcess(1.0, 1.0)
    by_time = process.schedule(duration=100.0, seed=1)
    assert all(t < 100.0 for t in by_time) and 60 < len(by_time) < 140
    # a rate-sweep step: at least 150 requests AND at least 100 s of arrivals
    both = process.schedule(count=150, duration=100.0, seed=1)
    assert len(both) >= 150 and both[-1] >= 100.0 - 5
    short = process.schedule(count=20, duration=100.0, seed=1)
    assert len(short) > 20 and short[:len(by_time)] == by_time[:len(short)]


@pytest.mark.parametrize("rate,k", [(0, 1), (-1, 1), (1, 0), (float("inf"), 1)])
def test_bad_process_is_a_config_error(rate: float, k: float) -> None:
    with pytest.raises(ConfigError):
        ArrivalProcess(rate, k)


def test_schedule_needs_a_bound() -> None:
    with pytest.raises(ConfigError, match="number of requests or a duration"):
        ArrivalProcess(1.0).schedule()
