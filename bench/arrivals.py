"""When open-loop requests are due: a seeded schedule of arrival times (METRICS.md "Open loop").

Gaps between arrivals are gamma-distributed with shape k (the burstiness) and mean 1/rate, so the gaps'
coefficient of variation is 1/sqrt(k): k = 1 is a Poisson process, k < 1 burstier, k > 1 more even. This
is `vllm bench serve`'s `--burstiness`, and so is the schedule's normalisation (see `schedule`).
A schedule is a plain tuple of seconds; the runner (bench/openloop.py) and the twin's predictor
(twin/predict.py) both consume it, so a measurement and a prediction see the same arrivals for one seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError


@dataclass(frozen=True)
class ArrivalProcess:
    """Gamma arrivals at `rate` requests per second with shape `burstiness`."""

    rate: float
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(f"request rate must be a positive number of requests per second (got {self.rate})")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise ConfigError(f"burstiness must be > 0 (1.0 = Poisson; got {self.burstiness})")

    @property
    def mean_gap(self) -> float:
        return 1.0 / self.rate

    @property
    def gap_cv(self) -> float:
        """Coefficient of variation of the gaps: 1/sqrt(k)."""
        return 1.0 / math.sqrt(self.burstiness)

    def gaps(self, count: int, seed: int) -> np.ndarray:
        """`count` inter-arrival gaps (seconds): gamma(shape=k, scale=1/(rate*k)), mean 1/rate."""
        rng = np.random.default_rng(seed)
        return rng.gamma(shape=self.burstiness, scale=self.mean_gap / self.burstiness, size=count)

    def schedule(self, *, count: int | None = None, duration: float | None = None,
                 seed: int = 0) -> tuple[float, ...]:
        """Due times, seconds after the run's start, of `count` requests, or of enough requests to span
        `duration` seconds, or both (at least `count` AND at least `duration`: a rate-sweep step's rule).

        As `vllm bench serve` does: the first request is due after one gap too, and the cumulative gaps are
        rescaled so that the last request is due at exactly n / rate (the sum of n gamma draws is 1-2% off,
        which would move the achieved rate from seed to seed).
        """
        if count is None and duration is None:
            raise ConfigError("an arrival schedule needs a number of requests or a duration")
        if count is not None and count < 1:
            raise ConfigError(f"number of requests must be >= 1 (got {count})")
        if duration is not None and not duration > 0:
            raise ConfigError(f"duration must be > 0 s (got {duration})")
        n = max(count or 1, math.ceil(duration * self.rate) if duration is not None else 1)
        times = np.cumsum(self.gaps(n, seed))
        times *= (n / self.rate) / times[-1]
        return tuple(float(t) for t in times)
