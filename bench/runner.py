"""One cell: a discarded warm-up batch, then `runs` closed batches of exactly c requests (docs/METRICS.md).

`run_cell` hands every finished run to `on_run` as soon as it is measured, so a caller (the CLI, the
sweep) can store it at once: nothing measured is lost when a later run or the process dies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.client import BenchClient, Endpoint, LatencyMode
from bench.metrics import e2e_ttft, run_metrics
from bench.prompts import LocalTokenizer, PromptFactory, TokenCounter
from bench.records import CLIENT_BOUND_LAG_SHARE, RequestRecord, client_cpu_bound, send_lag_bound
from common.errors import ConfigError



@dataclass
class RunDone:
    """What on_run receives: one measured run (or the warm-up, with `warmup=True` and no row)."""

    concurrency: int
    run: int
    records: list[RequestRecord]
    row: dict[str, Any] | None
    warmup: bool = False


@dataclass
class CellResult:
    """The records and run rows of one cell; unpacks as `records, run_rows = await run_cell(...)`."""

    records: list[RequestRecord]
    run_rows: list[dict[str, Any]]
    latency: float
    client_bound: bool = False
    warnings: list[str] = field(default_factory=list)
    prompt_adapted_by: int = 0  # tokens the user message shrank by after the warm-up (chat template)

    def __iter__(self) -> Iterator[Any]:
        yield self.records
        yield self.run_rows


def client_bound_reasons(records: list[RequestRecord], client_cpu_frac: float) -> list[str]:
    reasons = []
    ttfts = [e2e_ttft(r) for r in records if r.ok and r.first_token is not None]
    max_lag = max((r.send_lag for r in records), default=0.0)
    if ttfts:
        mean_ttft = sum(ttfts) / len(ttfts)
        if send_lag_bound(max_lag * 1000, mean_ttft * 1000):
            reasons.append(f"max send lag {max_lag * 1000:.1f} ms is over {CLIENT_BOUND_LAG_SHARE:.0%} of the "
                           f"mean TTFT {mean_ttft * 1000:.1f} ms")
    if client_cpu_bound(client_cpu_frac):
        reasons.append(f"the client process used {client_cpu_frac:.0%} of a CPU during the run")
    return reasons


async def run_cell(
    endpoint: Endpoint | str,
    model: str | None,
    concurrency: int,
    runs: int,
    pp: int,
    tg: int,
    *,
    depth: int = 0,
    topology: str = "",
    latency_mode: LatencyMode = "api",
    latency: float | None = None,
    prompts: PromptFactory | None = None,
    counter: TokenCounter | None = None,
    client: BenchClient | None = None,
    on_run: Callable[[RunDone], None] | None = None,
    on_request: Callable[[RequestRecord], None] | None = None,
    request_timeout: float = 600.0,
    warmup: bool = True,
) -> CellResult:
    """Measure one cell. Pass a shared `prompts` factory (and `client`) across cells so that the prompt is
    adapted to the chat template once per session, not once per cell; `latency` skips the probes.
    `on_run` gets every finished run (store it at once); `on_request` every finished request (progress)."""
    if concurrency < 1 or runs < 1:
        raise ConfigError(f"concurrency and runs must be at least 1 (got c={concurrency}, runs={runs})")
    if tg < 1:
        raise ConfigError(f"--tg must be at least 1 (got {tg})")
    if isinstance(endpoint, str):
        endpoint = Endpoint.from_url(endpoint)
    factory = prompts or PromptFactory(counter or LocalTokenizer.builtin(), pp=pp, depth=depth)
    if factory.pp != pp or factory.depth != depth:
        raise ConfigError(f"the prompt factory builds pp={factory.pp} depth={factory.depth}, the cell asks "
                          f"pp={pp} depth={depth}")
    local = factory.counter if isinstance(factory.counter, LocalTokenizer) else None
    own_client = client is None
    bench = client or BenchClient(endpoint, model, request_timeout=request_timeout,
                                  count_tokens=local.count if local else None)
    try:
        if bench.model is None or own_client:
            await bench.preflight()
        measured_latency = latency if latency is not None else await bench.measure_latency(latency_mode)
        result = CellResult(records=[], run_rows=[], latency=measured_latency)
        if warmup:
            warm = await bench.run_batch([factory.build() for _ in range(concurrency)], tg, topology=topology,
                                         run=-1, latency=measured_latency, on_request=on_request)
            if not factory.adapted:
                counted = [r.prompt_tokens for r in warm if r.ok and r.prompt_tokens is not None]
                if counted:
                    result.prompt_adapted_by = factory.adapt(round(sum(counted) / len(counted)))
            if on_run:
                on_run(RunDone(concurrency, -1, warm, None, warmup=True))
        for run in range(runs):
            batch_prompts = [factory.build() for _ in range(concurrency)]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            records = await bench.run_batch(batch_prompts, tg, topology=topology, run=run,
                                            latency=measured_latency, on_request=on_request)
            wall = time.perf_counter() - wall0
            cpu_frac = (time.process_time() - cpu0) / wall if wall > 0 else math.nan
            row = run_metrics(records, client_cpu_frac=cpu_frac)
            result.records.extend(records)
            result.run_rows.append(row)
            for reason in client_bound_reasons(records, cpu_frac):
                result.client_bound = True
                result.warnings.append(f"c={concurrency} run {run}: client-bound? {reason}")
            if on_run:
                on_run(RunDone(concurrency, run, records, row))
        return result
    finally:
        if own_client:
            await bench.aclose()
