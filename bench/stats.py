"""95% intervals for the three headline metrics: the one home of how topo states its uncertainty.

Two sources, and every interval says which one it rests on (`Interval.method`):

- **over runs** (a cell with 2+ runs): each run is one closed batch and gives one value of the metric; the
  interval is Student's t over those values, mean ± t(n-1) · s / sqrt(n). Not a bootstrap: with the 2-5
  runs a cell usually has, a percentile bootstrap over runs covers far less than 95% (about 75% at n = 3,
  see tests/bench/test_stats.py), while t is exact for normal run values and honest about few runs.
- **within one run** (a cell with a single run): a seeded bootstrap inside the batch, with the unit that
  carries the noise of each metric:
  * TTFT (mean over requests): the requests; the interval of their mean.
  * prefill t/s (total) = sum(prompt tokens) / (last first token - first start): the requests. Resampling
    requests and recomputing that max/min span could only shrink the span (a one-sided, biased
    interval), so the observed total is scaled by the resampled ratio sum(prompt tokens) /
    sum(first_token - start) over the observed one. The requests' spread includes their place in the
    batch's queue, so this interval is wide (conservative): the sweep adds runs.
  * decode t/s (total): the engine's steps. Requests of one batch decode in lockstep, sharing every step,
    so resampling requests would see almost no spread; instead the steps are resampled: the j-th token
    gap, averaged over the requests, is the batch's j-th step, and the run's decode span has its steps'
    part replaced by the resampled steps' sum (the part of the span that is the requests' staggered start
    stays as measured).
  A single run cannot show run-to-run drift (a busier machine during the next batch); its interval is
  the noise inside the batch only. With one request (c1, one run) TTFT and prefill have no interval.

Pure numpy and deterministic (a fixed seed): the same records give the same interval on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench.records import RequestRecord

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20_261_130
NAN = float("nan")

# The metrics that carry an interval, as cells.parquet columns; each gets `<name>_lo` and `<name>_hi`.
INTERVAL_METRICS: tuple[str, ...] = ("decode_tps", "prefill_tps", "ttft_ms")
# The figures that decide workload tests (reports/workloads.py) and also get a run's own bounds: an open-loop
# point is one run (its arrivals are the sample), so without these it could never call a winner.
REQUEST_INTERVAL_METRICS: tuple[str, ...] = ("decode_tps_req", "ttft_user_ms", "ttft_user_p95_ms",
                                             "ttft_user_p99_ms", "goodput")

Method = Literal["runs", "within-run", "none"]


def bound_columns(metric: str) -> tuple[str, str]:
    return f"{metric}_lo", f"{metric}_hi"


@dataclass(frozen=True)
class Interval:
    """A metric's mean and 95% interval over `n` units of `method` (NaN bounds: no interval)."""

    mean: float
    lo: float
    hi: float
    n: int  # runs (method "runs") or runs of 1 ("within-run"); 0 when there is no value
    method: Method

    @property
    def known(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2 if self.known else NAN

    @property
    def relative_half_width(self) -> float:
        """Half-width as a share of the mean (0.05 = ±5%); NaN without an interval or a mean."""
        if not self.known or math.isnan(self.mean) or self.mean == 0:
            return NAN
        return self.half_width / abs(self.mean)

    def describe(self) -> str:
        if self.method == "runs":
            return f"over {self.n} runs (Student t)"
        if self.method == "within-run":
            return "within 1 run (bootstrap)"
        return "no interval"


# ---- over runs ---------------------------------------------------------------------------------------


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    from scipy.special import stdtrit  # here, not at import: scipy costs most of a second to load

    return float(stdtrit(df, 0.5 + confidence / 2))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, lo, hi) of Student's t over the finite values; NaN bounds with fewer than 2."""
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if finite.size == 0:
        return NAN, NAN, NAN
    mean = float(finite.mean())
    if finite.size < 2:
        return mean, NAN, NAN
    half = t_quantile(finite.size - 1, confidence) * float(finite.std(ddof=1)) / math.sqrt(finite.size)
    return mean, mean - half, mean + half


def cell_interval(values: Sequence[float], run_lo: Sequence[float] = (), run_hi: Sequence[float] = ()) -> Interval:
    """A cell's interval from its runs' values: over runs with 2+ runs, else the one run's own bounds.

    `run_lo` / `run_hi` are the runs' within-run bounds (cells.parquet `<metric>_lo/_hi`; empty or NaN
    when the folder predates them)."""
    finite = [(v, lo, hi) for v, lo, hi in zip(values, _pad(run_lo, len(values)), _pad(run_hi, len(values)),
                                               strict=True) if not math.isnan(v)]
    if not finite:
        return Interval(NAN, NAN, NAN, 0, "none")
    if len(finite) >= 2:
        mean, lo, hi = t_interval([v for v, _, _ in finite])
        return Interval(mean, lo, hi, len(finite), "runs")
    value, lo, hi = finite[0]
    if math.isnan(lo) or math.isnan(hi):
        return Interval(value, NAN, NAN, 1, "none")
    return Interval(value, lo, hi, 1, "within-run")


def _pad(values: Sequence[float], size: int) -> list[float]:
    out = [float(v) if v is not None else NAN for v in values]
    return out + [NAN] * (size - len(out)) if len(out) < size else out[:size]


# ---- within one run ------------------------------------------------------------------------------------


def _rng() -> np.random.Generator:
    return np.random.default_rng(BOOTSTRAP_SEED)


def _quantiles(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return NAN, NAN
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_mean(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile interval of the mean of the values; NaN with fewer than 2."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if data.size < 2:
        return NAN, NAN
    picks = _rng().integers(0, data.size, size=(resamples, data.size))
    return _quantiles(data[picks].mean(axis=1))


def percentile_interval(values: Sequence[float], q: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free interval of the q-th percentile: the order statistics X(r) and X(s) with r and s
    the binomial(n, q/100) quantiles around it (the count of values under the true percentile is that
    binomial). Not a bootstrap: resampling a tail percentile of a few hundred values covers ~80%, not 95%
    (tests/bench/test_stats.py). When s would pass the largest value the upper bound is the largest value,
    which then covers less than stated: a p99 needs a few hundred values to be bounded from above."""
    from scipy.stats import binom  # here, not at import: scipy costs most of a second to load

    data = np.sort(np.asarray([v for v in values if not math.isnan(v)], dtype=float))
    if data.size < 2:
        return NAN, NAN
    tail = (1 - confidence) / 2
    r = int(binom.ppf(tail, data.size, q / 100))  # 1-based order statistics
    s_ = int(binom.ppf(1 - tail, data.size, q / 100)) + 1
    return float(data[max(r, 1) - 1]), float(data[min(s_, data.size) - 1])


def bootstrap_scaled_ratio(observed: float, numerators: Sequence[float], denominators: Sequence[float],
                           resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Interval of `observed` scaled by the resampled sum(num)/sum(den) over the observed ratio (pairs resampled)."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    keep = np.isfinite(num) & np.isfinite(den) & (den > 0)
    num, den = num[keep], den[keep]
    if num.size < 2 or math.isnan(observed):
        return NAN, NAN
    ratio = num.sum() / den.sum()
    picks = _rng().integers(0, num.size, size=(resamples, num.size))
    return _quantiles(observed * (num[picks].sum(axis=1) / den[picks].sum(axis=1)) / ratio)


def _gathered_row_sums(values: np.ndarray, picks: np.ndarray, rows_at_once: int = 64) -> np.ndarray:
    """values[picks].sum(axis=1), a block of rows at a time: the same sums (each row is summed on its own),
    without a gathered copy of the whole pick matrix (thousands of steps x 2000 resamples)."""
    return np.concatenate([values[picks[row:row + rows_at_once]].sum(axis=1)
                           for row in range(0, picks.shape[0], rows_at_once)])


def bootstrap_step_gaps(observed: float, span: float, gaps: np.ndarray,
                        resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Interval of a throughput `observed` over `span` seconds, part of which is a run of steps: `gaps` is
    requests x steps (each row one request's token gaps). Steps (columns, averaged over the requests) are
    resampled; the span keeps its other part and the throughput is rescaled."""
    if gaps.ndim != 2 or gaps.shape[1] < 2 or math.isnan(observed) or not span > 0:
        return NAN, NAN
    per_step = gaps.mean(axis=0)  # a column moves as one: every request waited through that step
    steps = per_step.sum()
    picks = _rng().integers(0, per_step.size, size=(resamples, per_step.size))
    resampled_span = span - steps + _gathered_row_sums(per_step, picks)
    # a resample of only zero gaps (tokens that arrived in one chunk, the whole span in steps) has no time
    # to divide by: it says nothing about the throughput
    resampled_span = resampled_span[resampled_span > 0]
    if resampled_span.size == 0:
        return NAN, NAN
    return _quantiles(observed * span / resampled_span)


def decode_gap_matrix(records: Sequence[RequestRecord]) -> np.ndarray:
    """requests x steps: each successful request's gaps between consecutive tokens, cut to the shortest."""
    rows = [np.diff(np.asarray(r.token_times, dtype=float)) for r in records
            if r.ok and len(r.token_times) >= 3]
    if not rows:
        return np.empty((0, 0))
    width = min(row.size for row in rows)
    return np.vstack([row[:width] for row in rows])


def request_bounds(per_request: dict[str, Sequence[float]]) -> dict[str, float]:
    """`<metric>_lo` / `<metric>_hi` of REQUEST_INTERVAL_METRICS from one run's per-request values: means by
    resampling the requests (`decode_tps_req`: per-request decode t/s; `ttft_user`: the user's TTFT in ms;
    `goodput`: 1.0 per request that met the SLO, else 0.0), the p95/p99 by their order statistics. A metric without values
    gets NaN bounds. In open loop the requests share queues, so neighbours are not independent: the
    interval is the spread of this sample of arrivals, narrower than a second run's draw could show."""
    users = per_request.get("ttft_user", ())
    bounds = {
        "decode_tps_req": bootstrap_mean(per_request.get("decode_tps_req", ())),
        "ttft_user_ms": bootstrap_mean(users),
        "ttft_user_p95_ms": percentile_interval(users, 95),
        "ttft_user_p99_ms": percentile_interval(users, 99),
        "goodput": bootstrap_mean(per_request.get("goodput", ())),
    }
    out: dict[str, float] = {}
    for metric in REQUEST_INTERVAL_METRICS:
        lo_key, hi_key = bound_columns(metric)
        out[lo_key], out[hi_key] = bounds[metric]
    return out


def within_run_bounds(records: Sequence[RequestRecord], observed: dict[str, float]) -> dict[str, float]:
    """`<metric>_lo` / `<metric>_hi` for one run's records, given the run's observed metrics (run_metrics')."""
    ok = [r for r in records if r.ok and r.first_token is not None]
    bounds: dict[str, tuple[float, float]] = {}
    bounds["ttft_ms"] = bootstrap_mean([(r.first_token - r.start) * 1000 for r in ok])  # type: ignore[operator]
    prompt = [float(r.prompt_tokens if r.prompt_tokens is not None else r.prompt_tokens_sent) for r in ok]
    waits = [r.first_token - r.start for r in ok]  # type: ignore[operator]
    bounds["prefill_tps"] = bootstrap_scaled_ratio(observed.get("prefill_tps", NAN), prompt, waits)
    decoding = [r for r in ok if len(r.token_times) >= 2]
    span = (max(r.token_times[-1] for r in decoding) - min(r.first_token for r in decoding)  # type: ignore[type-var]
            if decoding else NAN)
    bounds["decode_tps"] = bootstrap_step_gaps(observed.get("decode_tps", NAN), span, decode_gap_matrix(ok))
    out: dict[str, float] = {}
    for metric in INTERVAL_METRICS:
        lo_key, hi_key = bound_columns(metric)
        out[lo_key], out[hi_key] = bounds[metric]
    return out
