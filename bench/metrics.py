"""Metrics derived from raw RequestRecords, with llama-benchy's definitions (see docs/METRICS.md).

Pure functions, no I/O. Times in the records are perf_counter seconds; rates are tokens per second;
anything named *_ms is milliseconds. A quantity that cannot be computed (no successful request, a zero
interval) is NaN, never an exception: a run whose requests all failed still yields a row with failed=c.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bench.records import CELL_COLUMNS, RequestRecord
from bench.stats import INTERVAL_METRICS, bound_columns, within_run_bounds

NAN = float("nan")


# -- per request -----------------------------------------------------------------------------------------

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


# -- per run ---------------------------------------------------------------------------------------------

def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else NAN


def peak_tps(token_times: Sequence[float], window: float = 1.0) -> float:
    """Most tokens seen in any `window`-second interval [t, t + window) (a sliding window over all tokens)."""
    times = sorted(token_times)
    best = 0
    left = 0
    for right, t in enumerate(times):
        while t - times[left] >= window:
            left += 1
        best = max(best, right - left + 1)
    return best / window if times else NAN


def run_metrics(records: Sequence[RequestRecord], client_cpu_frac: float = NAN) -> dict[str, Any]:
    """One row of cells.parquet (exactly CELL_COLUMNS) from the c records of one run."""
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
    assert tuple(row) == CELL_COLUMNS, "run_metrics must produce exactly CELL_COLUMNS"
    return row


# -- per cell --------------------------------------------------------------------------------------------

SUMMARIZED = ("decode_tps", "prefill_tps", "ttft_ms", "peak_tps", "decode_tps_req", "prefill_tps_req")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and POPULATION std (ddof=0, llama-benchy's) over the finite values; NaN when there are none."""
    finite = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if finite.size == 0:
        return NAN, NAN
    return float(finite.mean()), float(finite.std(ddof=0))


def percentile(values: Sequence[float], q: float) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.percentile(finite, q)) if finite else NAN


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
