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


def test_schedule_by_count_is_seeded_and_ends_at_n_over_rate() -> None:
    process = ArrivalProcess(2.0, 0.7)
    times = process.schedule(count=300, seed=42)
    assert len(times) == 300 and 0 < times[0] < times[-1]
    assert all(b >= a for a, b in zip(times, times[1:]))
    assert times[-1] == pytest.approx(300 / 2.0)  # vllm bench serve's normalisation
    assert times == process.schedule(count=300, seed=42)
    assert times != process.schedule(count=300, seed=43)
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(0.7), rel=0.15)


def test_schedule_by_duration_and_by_both() -> None:
    process = ArrivalProcess(0.5, 1.0)
    assert process.schedule(duration=100.0, seed=1)[-1] == pytest.approx(100.0)
    assert len(process.schedule(duration=100.0, seed=1)) == 50
    # a rate-sweep step: at least 100 requests AND at least 250 s of arrivals
    assert len(ArrivalProcess(0.1, 0.7).schedule(count=100, duration=250, seed=1)) == 100  # 1000 s anyway
    both = ArrivalProcess(1.0, 0.7).schedule(count=100, duration=250, seed=1)
    assert len(both) == 250 and both[-1] == pytest.approx(250.0)


@pytest.mark.parametrize("rate,k", [(0, 1), (-1, 1), (1, 0), (float("inf"), 1)])
def test_bad_process_is_a_config_error(rate: float, k: float) -> None:
    with pytest.raises(ConfigError):
        ArrivalProcess(rate, k)


def test_schedule_needs_a_bound() -> None:
    with pytest.raises(ConfigError, match="number of requests or a duration"):
        ArrivalProcess(1.0).schedule()
