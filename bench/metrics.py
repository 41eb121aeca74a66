"""Metrics derived from raw RequestRecords, with llama-benchy's definitions (see docs/METRICS.md).

Pure functions, no I/O. Times in the records are perf_counter seconds; rates are tokens per second;
anything named *_ms is milliseconds. A quantity that cannot be computed (no successful request, a zero
interval) is NaN, never an exception: a run whose requests all failed still yields a row with failed=c.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.records import CELL_COLUMNS, OPEN_COLUMNS, RequestRecord
from bench.stats import INTERVAL_METRICS, bound_columns, request_bounds, within_run_bounds

NAN = float("nan")


#  -- per request -----------------------------------------------------------------------------------------

def ttfr(record: RequestRecord) -> float:
    """Time to first response (first SSE chunk with `choices`), seconds."""
    return record.first_response - record.start if record.first_response is not None else NAN


def e2e_ttft(record: RequestRecord) -> float:
    """End-to-end time to first token (first chunk with content), seconds: what TTFT reports."""
    return record.first_token - record.start if record.first_token is not None else NAN


def est_ppt(record: RequestRecord) -> float:
    """Estimated prompt-processing time: ttfr minus the measured network/API latency, floored at 0."""
    value = ttfr(record)
    return NAN if math.isnan(value) else max(0.0, value - record.latency_offset)


def prompt_tokens(record: RequestRecord) -> int:
    """The server's count when it gave one, else the client's."""
    return record.prompt_tokens if record.prompt_tokens is not None else record.prompt_tokens_sent


def generated_tokens(record: RequestRecord) -> int:
    return len(record.token_times)


def decode_tokens(record: RequestRecord) -> int:
    """Tokens after the first: the ones decode t/s counts."""
    return max(0, generated_tokens(record) - 1)


def last_token(record: RequestRecord) -> float:
    return record.token_times[-1] if record.token_times else NAN


def prefill_tps_request(record: RequestRecord) -> float:
    """prompt_tokens / est_ppt."""
    ppt = est_ppt(record)
    return prompt_tokens(record) / ppt if ppt > 0 else NAN


def decode_tps_request(record: RequestRecord) -> float:
    """(tokens after the first) / (last_token - first_token)."""
    if record.first_token is None or decode_tokens(record) == 0:
        return NAN
    span = last_token(record) - record.first_token
    return decode_tokens(record) / span if span > 0 else NAN


def request_metrics(record: RequestRecord) -> dict[str, float]:
    return {
        "ttfr_ms": ttfr(record) * 1000,
        "e2e_ttft_ms": e2e_ttft(record) * 1000,
        "est_ppt_ms": est_ppt(record) * 1000,
        "prefill_tps_req": prefill_tps_request(record),
        "decode_tps_req": decode_tps_request(record),
        "send_lag_ms": record.send_lag * 1000,
    }


#  -- per run ---------------------------------------------------------------------------------------------

def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else NAN


def peak_tps(token_times: Sequence[float], window: float = 1.0) -> float:
    """Most tokens seen in any `window`-second interval [t, t + window) (a sliding window over all tokens)."""
    times = np.sort(np.asarray(token_times, dtype=float))
    if times.size == 0:
        return NAN
    if np.isnan(times).any():
        return _peak_tps_walk(sorted(token_times), window)
    # for each token (the window's right end), the first token less than `window` before it; the test is
    # the subtraction itself (as the walk below does it), located by a search and settled by stepping
    left = np.searchsorted(times, times - window, side="left")
    while True:  # too far left: that token is a whole window or more before
        behind = (left < np.arange(times.size)) & (times - times[np.minimum(left, times.size - 1)] >= window)
        if not behind.any():
            break
        left += behind
    while True:  # not far enough left: the token before it is also inside the window
        ahead = (left > 0) & (times - times[np.maximum(left - 1, 0)] < window)
        if not ahead.any():
            break
        left -= ahead
    return int((np.arange(times.size) - left + 1).max()) / window


def _peak_tps_walk(times: Sequence[float], window: float) -> float:
    """peak_tps' definition as a two-pointer walk over sorted times (the reference it is tested against)."""
    best = 0
    left = 0
    for right, t in enumerate(times):
        while t - times[left] >= window:
            left += 1
        best = max(best, right - left + 1)
    return best / window if times else NAN


def run_metrics(records: Sequence[RequestRecord], client_cpu_frac: float = NAN, *, rate: float = NAN,
                slo: SLOLimits | None = None) -> dict[str, Any]:
    """One row of cells.parquet (exactly CELL_COLUMNS) from the records of one run; `rate` (offered, open
    loop) and `slo` (for goodput) feed the open-loop columns (bench/metrics.py, open loop)."""

    if not records:
        raise ValueError("run_metrics needs the records of one run (got none)")
    first = records[0]
    ok = [r for r in records if r.ok and r.first_token is not None]
    row: dict[str, Any] = {
        "topology": first.topology,
        "workload": first.workload,
        "load": first.load,
        "concurrency": first.concurrency,
        "run": first.run,
        "decode_tps": NAN,
        "prefill_tps": NAN,
        "ttft_ms": NAN,
        "peak_tps": NAN,
        "decode_tps_req": NAN,
        "prefill_tps_req": NAN,
        "requests": len(records),
        "failed": len(records) - len(ok),
        "max_send_lag_ms": max(r.send_lag for r in records) * 1000,
        "client_cpu_frac": client_cpu_frac,
        **{column: NAN for metric in INTERVAL_METRICS for column in bound_columns(metric)},
    }
    if ok:
        min_start = min(r.start for r in ok)
        max_first_token = max(r.first_token for r in ok)  # type: ignore[type-var]
        prefill_span = max_first_token - min_start
        if prefill_span > 0:
            row["prefill_tps"] = sum(prompt_tokens(r) for r in ok) / prefill_span
        with_decode = [r for r in ok if decode_tokens(r) > 0]
        if with_decode:
            decode_span = max(last_token(r) for r in with_decode) - min(r.first_token for r in with_decode)
            if decode_span > 0:
                row["decode_tps"] = sum(decode_tokens(r) for r in with_decode) / decode_span
        row["ttft_ms"] = _mean(e2e_ttft(r) * 1000 for r in ok)
        row["peak_tps"] = peak_tps([t for r in ok for t in r.token_times])
        row["decode_tps_req"] = _mean(decode_tps_request(r) for r in ok)
        row["prefill_tps_req"] = _mean(prefill_tps_request(r) for r in ok)
        row.update(within_run_bounds(ok, row))
    row.update(open_run_metrics(records, rate=rate, slo=slo))
    assert tuple(row) == CELL_COLUMNS, "run_metrics must produce exactly CELL_COLUMNS"
    return row


#  -- per cell --------------------------------------------------------------------------------------------

SUMMARIZED = ("decode_tps", "prefill_tps", "ttft_ms", "peak_tps", "decode_tps_req", "prefill_tps_req")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and POPULATION std (ddof=0, llama-benchy's) over the finite values; NaN when there are none."""
    finite = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if finite.size == 0:
        return NAN, NAN
    return float(finite.mean()), float(finite.std(ddof=0))


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    array = np.asarray(values, dtype=float)
    finite = array[~np.isnan(array)]
    return float(np.percentile(finite, q)) if finite.size else NAN


def cell_summary(run_rows: Sequence[dict[str, Any]], records: Sequence[RequestRecord]) -> dict[str, Any]:
    """One cell (topology x concurrency): mean/std over runs, TTFT percentiles over requests, failures."""
    if not run_rows:
        raise ValueError("cell_summary needs at least one run row")
    summary: dict[str, Any] = {
        "topology": run_rows[0]["topology"],
        "concurrency": run_rows[0]["concurrency"],
        "runs": len(run_rows),
    }
    for name in SUMMARIZED:
        summary[f"{name}_mean"], summary[f"{name}_std"] = mean_std(row[name] for row in run_rows)
    ttfts = [e2e_ttft(r) * 1000 for r in records if r.ok and r.first_token is not None]
    for q in (50, 90, 99):
        summary[f"ttft_p{q}_ms"] = percentile(ttfts, q)
    summary["requests"] = int(sum(row["requests"] for row in run_rows))
    summary["failed"] = int(sum(row["failed"] for row in run_rows))
    summary["max_send_lag_ms"] = max(row["max_send_lag_ms"] for row in run_rows)
    return summary


# -- open loop (METRICS.md "Open loop") ------------------------------------------------------------------
# Per request: `queue_ms = start - scheduled_at` (held back by the cap, or a late client), `ttft_ms` from
# `start` (comparable with `vllm bench serve` and llama-benchy), and the user's `ttft_user_ms = queue_ms +
# ttft_ms` (likewise e2e): SLOs, goodput and capacity use the user's figures (vLLM issue 54101). A closed
# batch's request has no `scheduled_at`; its user's wait starts when the batch fired (`batch_start`).
#
# Per run (`open_run_metrics`): achieved request rate and output t/s over the run's span (first due time to
# last byte), peak requests in flight, TTFT mean/p50/p90/p95/p99 (from send and the user's), TPOT and ITL
# p50/p99, end-to-end p50/p99 (the user's), goodput against an SLO, and the client's worst lateness.
#
# Capacity over a rate sweep (`capacity`): the highest rate whose p95 TTFT stays under a limit,
# interpolated linearly between the last step under it and the first step over it ("none" when even the
# lowest step is over, the highest step when none is).


def user_origin(record: RequestRecord) -> float:
    """When the user started waiting: the scheduled arrival (open loop) or the batch's firing (closed)."""
    return record.scheduled_at if record.scheduled_at is not None else record.batch_start


def queue_s(record: RequestRecord) -> float:
    return record.start - user_origin(record)


def ttft_user(record: RequestRecord) -> float:
    """Seconds from when the request was due to its first token."""
    return record.first_token - user_origin(record) if record.first_token is not None else NAN


def e2e_user(record: RequestRecord) -> float:
    end = last_token(record) if record.token_times else (record.end if record.end is not None else NAN)
    return end - user_origin(record) if record.ok else NAN


def tpot(record: RequestRecord) -> float:
    """Time per output token after the first (vLLM's TPOT): (last - first token) / (tokens - 1)."""
    if record.first_token is None or decode_tokens(record) == 0:
        return NAN
    return (last_token(record) - record.first_token) / decode_tokens(record)


def itls(record: RequestRecord) -> np.ndarray:
    """Seconds between consecutive tokens."""
    return np.diff(np.asarray(record.token_times, dtype=float))


def peak_in_flight(records: Sequence[RequestRecord]) -> int:
    """Most requests between their send and their last byte at any moment."""
    events = sorted([(r.start, 1) for r in records] + [(r.end if r.end is not None else r.start, -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


@dataclass(frozen=True)
class SLOLimits:
    ttft_ms: float | None = None
    e2e_ms: float | None = None

    def met(self, record: RequestRecord) -> bool:
        if not record.ok or record.first_token is None:
            return False
        if self.ttft_ms is not None and not ttft_user(record) * 1000 <= self.ttft_ms:
            return False
        return self.e2e_ms is None or e2e_user(record) * 1000 <= self.e2e_ms


def open_run_metrics(records: Sequence[RequestRecord], *, rate: float = NAN,
                     slo: SLOLimits | None = None) -> dict[str, Any]:
    """The OPEN_COLUMNS of one run (add them to bench.metrics.run_metrics' row)."""
    ok = [r for r in records if r.ok and r.first_token is not None]
    row: dict[str, Any] = {name: NAN for name in OPEN_COLUMNS}
    row["rate"] = rate
    row["peak_in_flight"] = peak_in_flight(records) if records else 0
    met: list[float] = []
    if slo is not None and (slo.ttft_ms is not None or slo.e2e_ms is not None) and records:
        met = [1.0 if slo.met(r) else 0.0 for r in records]
        row["goodput"] = sum(met) / len(records)
    if not ok:
        row.update(request_bounds({"goodput": met}))
        return row
    origin = min(user_origin(r) for r in records)
    span = max((r.end if r.end is not None else r.start) for r in records) - origin
    if span > 0:
        row["achieved_rate"] = len(ok) / span
        generated = sum(generated_tokens(r) for r in ok)
        row["output_tps"] = generated / span
        row["total_tps"] = (generated + sum(prompt_tokens(r) for r in ok)) / span
    ttfts = [e2e_ttft(r) * 1000 for r in ok]
    users = [ttft_user(r) * 1000 for r in ok]
    for q in (50, 90, 95, 99):
        row[f"ttft_p{q}_ms"] = percentile(ttfts, q)
        row[f"ttft_user_p{q}_ms"] = percentile(users, q)
    row["ttft_user_ms"] = float(np.mean(users))
    row["queue_p99_ms"] = percentile([queue_s(r) * 1000 for r in ok], 99)
    tpots = [tpot(r) * 1000 for r in ok]
    gaps = np.concatenate([itls(r) for r in ok]) * 1000
    e2es = [e2e_user(r) * 1000 for r in ok]
    for q in (50, 99):
        row[f"tpot_p{q}_ms"] = percentile(tpots, q)
        row[f"itl_p{q}_ms"] = percentile(gaps, q)
        row[f"e2e_user_p{q}_ms"] = percentile(e2es, q)
    row.update(request_bounds({"decode_tps_req": [decode_tps_request(r) for r in ok], "ttft_user": users,
                               "goodput": met}))
    return row


#  -- capacity -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    limit_s: float
    rate: float | None  # None: not even the lowest step met the limit
    bounded: bool = True  # False: every step met it (the true capacity is above the highest rate measured)

    def text(self) -> str:
        if self.rate is None:
            return "none"
        return f"{self.rate:.2f} req/s" + ("" if self.bounded else "+")


def capacity(steps: Sequence[tuple[float, float]], limit_s: float) -> Capacity:
    """`steps`: (achieved or offered rate, p95 TTFT in seconds) per rate-sweep step.

    The p95 grows with the rate; capacity is where it crosses the limit, interpolated linearly between
    the highest step under the limit and the next step over it. A NaN p95 (a step whose requests all
    failed) counts as over the limit.
    """
    ordered = sorted((rate, p95 if not math.isnan(p95) else math.inf) for rate, p95 in steps)
    if not ordered:
        return Capacity(limit_s, None)
    last_ok: tuple[float, float] | None = None
    for rate, p95 in ordered:
        if p95 <= limit_s:
            last_ok = (rate, p95)
            continue
        if last_ok is None:
            return Capacity(limit_s, None)
        r0, p0 = last_ok
        if math.isinf(p95):
            return Capacity(limit_s, r0)
        return Capacity(limit_s, r0 + (rate - r0) * (limit_s - p0) / (p95 - p0))
    assert last_ok is not None
    return Capacity(limit_s, last_ok[0], bounded=False)
