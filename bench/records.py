"""What a benchmark stores: raw per-request timestamps, and the per-run cell rows derived from them.

This module is the contract between bench/ (writes), reports/ (reads) and the sweep (appends). Raw
timestamps are `time.perf_counter()` seconds of the client process; only differences between them mean
anything. Metrics are never stored in a request row: they are derived (see bench/metrics.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.workload import DEFAULT_WORKLOAD, closed_label

# 2: the `workload` and `load` key columns (bench/workload.py). Version 1 files are migrated on reading
# (bench/results_folder.py): workload `default`, load `c{concurrency}`.
# 3: open-loop columns (OPEN_COLUMNS in cells, `scheduled_at` in requests); older files read them as nulls.
SCHEMA_VERSION = 3


@dataclass
class RequestRecord:
    """One request of one run, as the client saw it."""

    topology: str
    concurrency: int
    run: int  # 0-based; the discarded warm-up batch is not stored
    index: int  # position of the request in its batch
    batch_start: float  # when the batch fired (perf_counter)
    start: float  # when this request's bytes were handed to the socket
    prompt_tokens_sent: int  # what the client built the prompt to be (its own token count)
    first_response: float | None = None  # first SSE chunk that has `choices`
    first_token: float | None = None  # first chunk with content / reasoning_content / reasoning
    token_times: list[float] = field(default_factory=list)  # one per generated token, chunks spread evenly
    end: float | None = None  # last byte of the response
    prompt_tokens: int | None = None  # server's usage.prompt_tokens
    completion_tokens: int | None = None  # server's usage.completion_tokens
    status_code: int | None = None
    error: str | None = None  # None = success; otherwise what went wrong and where
    served_by: str | None = None  # which backend served it (x-litellm-model-id), when a router says
    latency_offset: float = 0.0  # the run's measured network/API latency (docs/METRICS.md `latency`)
    response_id: str | None = None  # the stream's `id` (e.g. chatcmpl-...): joins a row with server-side logs
    workload: str = DEFAULT_WORKLOAD  # the request shape's name (bench/workload.py)
    load: str = ""  # the load's label (bench/workload.py); empty = the closed load of `concurrency`
    # Open loop only: when the arrival schedule said the request was due (same clock as `start`). Then
    # `batch_start` is when the client was free to send it (due, and a slot free under the cap), so
    # `send_lag` stays the client's own lateness and `start - scheduled_at` is the user's queueing.
    scheduled_at: float | None = None

    def __post_init__(self) -> None:
        if not self.load and self.concurrency >= 1:  # an open-loop record is labelled by its point
            self.load = closed_label(self.concurrency)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def send_lag(self) -> float:
        """The client's own queueing before the request hit the wire; not the server's time."""
        return self.start - self.batch_start

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


# Columns of cells.parquet: one row per (topology, workload, load) cell and run. reports/ and the regression
# gate read these names; bench/metrics.py produces them.
CELL_COLUMNS: tuple[str, ...] = (
    "topology",
    "workload",  # the request shape's name (bench/workload.py; `default` = the sweep's pp/tg)
    "load",  # the load's label, e.g. c4 (bench/workload.py)
    "concurrency",  # the closed load's c (kept for the reports' x axis)
    "run",
    "decode_tps",  # decode t/s (total) of the run, docs/METRICS.md
    "prefill_tps",  # prefill t/s (total) of the run
    "ttft_ms",  # mean e2e TTFT of the run's successful requests, ms
    "peak_tps",  # most tokens seen in any 1-second window
    "decode_tps_req",  # mean per-request decode t/s
    "prefill_tps_req",  # mean per-request prefill t/s
    "requests",  # how many requests the run sent (= concurrency for a closed load)
    "failed",  # how many of them failed
    "max_send_lag_ms",  # the client's worst scheduling lag in the run
    "client_cpu_frac",  # client process CPU seconds / run wall seconds (near 1: the client was the bottleneck)
    # 95% bounds of the run's headline metrics from the noise inside the batch (bench/stats.py): what a
    # single-run cell's interval rests on; cells with several runs take their interval over runs
    "decode_tps_lo",
    "decode_tps_hi",
    "prefill_tps_lo",
    "prefill_tps_hi",
    "ttft_ms_lo",
    "ttft_ms_hi",
)

# Columns every run row gains for open loop and workload reports (bench/metrics.py, open loop computes them; for a
# closed batch the user's wait starts when the batch fired, so the `_user` figures equal the others).
OPEN_COLUMNS: tuple[str, ...] = (
    "rate",  # offered request rate (req/s); NaN for a closed batch
    "achieved_rate",  # completed requests / run span (first due time to last byte)
    "output_tps",  # generated tokens / run span
    "total_tps",  # (prompt + generated tokens) / run span
    "peak_in_flight",
    "ttft_p50_ms", "ttft_p90_ms", "ttft_p95_ms", "ttft_p99_ms",  # from send (vllm bench serve's TTFT)
    "ttft_user_ms", "ttft_user_p50_ms", "ttft_user_p90_ms", "ttft_user_p95_ms", "ttft_user_p99_ms",  # from due
    "queue_p99_ms",
    "tpot_p50_ms", "tpot_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "e2e_user_p50_ms", "e2e_user_p99_ms",
    "goodput",  # share of the run's requests that met the test's SLO (NaN: no SLO)
    # 95% bounds of the figures that decide workload tests, from the run's requests (bench/stats.py,
    # request_bounds): an open-loop point is a single run
    "decode_tps_req_lo", "decode_tps_req_hi", "ttft_user_ms_lo", "ttft_user_ms_hi",
    "ttft_user_p95_ms_lo", "ttft_user_p95_ms_hi", "ttft_user_p99_ms_lo", "ttft_user_p99_ms_hi",
    "goodput_lo", "goodput_hi",
)
CELL_COLUMNS = CELL_COLUMNS + OPEN_COLUMNS

# What identifies a cell (its runs are numbered under it) and a request row.
CELL_KEY: tuple[str, ...] = ("topology", "workload", "load")
RUN_KEY: tuple[str, ...] = (*CELL_KEY, "run")
REQUEST_KEY: tuple[str, ...] = (*RUN_KEY, "index")
# What a cells table must hold to be reported at all; the other CELL_COLUMNS are used when present.
REQUIRED_CELL_COLUMNS: tuple[str, ...] = ("topology", "concurrency", "run", "decode_tps", "prefill_tps", "ttft_ms")


# When a run measured the client more than the server. bench/ warns per run, reports/ flags cells: one rule.
CLIENT_BOUND_LAG_SHARE = 0.10  # the worst send lag is over this share of the mean TTFT ...
CLIENT_BOUND_LAG_FLOOR_MS = 5.0  # ... and over this floor (below it, it is scheduling jitter)
CLIENT_BOUND_CPU_SHARE = 0.80  # or the client process used more than this share of a CPU
# The word a per-run warning carries (meta.json warnings, the progress line); reports sum such runs up per cell.
CLIENT_BOUND_MARK = "client-bound?"


def send_lag_bound(max_send_lag_ms: float, mean_ttft_ms: float) -> bool:
    """The client's own queueing was a large part of the TTFT it measured (NaN in, False out)."""
    return (mean_ttft_ms > 0 and max_send_lag_ms > CLIENT_BOUND_LAG_FLOOR_MS
            and max_send_lag_ms > CLIENT_BOUND_LAG_SHARE * mean_ttft_ms)


def client_cpu_bound(client_cpu_frac: float) -> bool:
    """The client process was busy for most of the run's wall time (NaN in, False out)."""
    return client_cpu_frac > CLIENT_BOUND_CPU_SHARE


CLIENT_BOUND_SCHEDULE_SHARE = 0.10  # open loop: a send later than this share of the mean gap between arrivals


def schedule_lag_bound(max_send_lag_ms: float, rate: float) -> bool:
    """Open loop: the client fell behind its arrival schedule by over a tenth of the mean gap (NaN in, False out)."""
    return rate > 0 and max_send_lag_ms > CLIENT_BOUND_SCHEDULE_SHARE * 1000.0 / rate
