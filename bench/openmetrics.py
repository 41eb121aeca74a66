"""Open-loop metrics (METRICS.md "Open loop", `vllm bench serve`'s semantics), pure functions of records.

Per request: `queue_ms = start - scheduled_at` (held back by the cap, or a late client), `ttft_ms` from
`start` (comparable with `vllm bench serve` and llama-benchy), and the user's `ttft_user_ms = queue_ms +
ttft_ms` (likewise e2e): SLOs, goodput and capacity use the user's figures (vLLM issue 54101). A closed
batch's request has no `scheduled_at`; its user's wait starts when the batch fired (`batch_start`).

Per run (`open_run_metrics`): achieved request rate and output t/s over the run's span (first due time to
last byte), peak requests in flight, TTFT mean/p50/p90/p95/p99 (from send and the user's), TPOT and ITL
p50/p99, end-to-end p50/p99 (the user's), goodput against an SLO, and the client's worst lateness.

Capacity over a rate sweep (`capacity`): the highest rate whose p95 TTFT stays under a limit,
interpolated linearly between the last step under it and the first step over it ("none" when even the
lowest step is over, the highest step when none is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.metrics import NAN, decode_tokens, e2e_ttft, generated_tokens, last_token, percentile, prompt_tokens
from bench.records import RequestRecord

# Columns an open-loop (or any workload) run adds to a cells.parquet row, besides CELL_COLUMNS.
OPEN_COLUMNS: tuple[str, ...] = (
    "rate",  # offered request rate (req/s); NaN for a closed batch
    "achieved_rate",  # completed requests / run span
    "output_tps",  # generated tokens / run span
    "total_tps",  # (prompt + generated tokens) / run span
    "peak_in_flight",
    "ttft_p50_ms", "ttft_p90_ms", "ttft_p95_ms", "ttft_p99_ms",  # from send
    "ttft_user_ms", "ttft_user_p50_ms", "ttft_user_p90_ms", "ttft_user_p95_ms", "ttft_user_p99_ms",
    "queue_p99_ms",
    "tpot_p50_ms", "tpot_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "e2e_user_p50_ms", "e2e_user_p99_ms",
    "goodput",  # share of the run's requests that met the test's SLO (NaN: no SLO)
)


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


def itls(record: RequestRecord) -> list[float]:
    times = record.token_times
    return [b - a for a, b in zip(times, times[1:])]


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
    if slo is not None and (slo.ttft_ms is not None or slo.e2e_ms is not None) and records:
        row["goodput"] = sum(1 for r in records if slo.met(r)) / len(records)
    if not ok:
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
    gaps = [g * 1000 for r in ok for g in itls(r)]
    e2es = [e2e_user(r) * 1000 for r in ok]
    for q in (50, 99):
        row[f"tpot_p{q}_ms"] = percentile(tpots, q)
        row[f"itl_p{q}_ms"] = percentile(gaps, q)
        row[f"e2e_user_p{q}_ms"] = percentile(e2es, q)
    return row


# -- capacity -------------------------------------------------------------------------------------------


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
