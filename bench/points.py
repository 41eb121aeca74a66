"""Measure one workload load point against an endpoint, and turn its records into cells rows.

A closed point (`c10` of a test) is llama-benchy's: one discarded warm-up batch, then `runs` batches of
exactly c requests, each request shaped by the test's shape. An open point (`0.3rps`, a rate-sweep step)
is one run of the schedule (bench/openloop.py) under the test's cap. Either way every finished run goes
to `on_run` at once (store it: nothing measured is lost when a later run dies). `workload_row` is the one
place a point's records become a row, for measurements and the twin's predictions alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.client import BenchClient
from bench.metrics import run_metrics
from bench.openloop import run_open
from bench.openmetrics import SLOLimits, open_run_metrics
from bench.prompts import PromptFactory
from bench.records import RequestRecord
from bench.runner import client_bound_reasons
from bench.suite import LoadPoint

NAN = float("nan")


def slo_of(point: LoadPoint) -> SLOLimits | None:
    slo = point.test.slo
    return SLOLimits(slo.ttft_ms, slo.e2e_ms) if slo is not None else None


def workload_row(point: LoadPoint, records: list[RequestRecord], *, rate: float | None = None,
                 client_cpu_frac: float = NAN) -> dict[str, Any]:
    """One cells row of a workload point: CELL_COLUMNS, `workload`, `load`, and the open-loop columns."""
    offered = rate if rate is not None else (point.open.rate if point.open is not None else NAN)
    row = run_metrics(records, client_cpu_frac=client_cpu_frac)
    row.update(open_run_metrics(records, rate=offered, slo=slo_of(point)))
    row["workload"] = point.workload
    row["load"] = point.label
    return row


@dataclass
class PointRun:
    """What on_run receives: one measured run of a point (run -1: the closed warm-up, no row)."""

    point: LoadPoint
    run: int
    records: list[RequestRecord]
    row: dict[str, Any] | None


@dataclass
class PointResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


async def measure_point(client: BenchClient, factory: PromptFactory, point: LoadPoint, *, topology: str,
                        runs: int, latency: float, seed: int = 0, rate_scale: float = 1.0,
                        on_run: Callable[[PointRun], None] | None = None,
                        on_request: Callable[[RequestRecord], None] | None = None) -> PointResult:
    result = PointResult()

    def done(run: int, records: list[RequestRecord], cpu_frac: float, rate: float | None) -> None:
        row = workload_row(point, records, rate=rate, client_cpu_frac=cpu_frac) if run >= 0 else None
        if row is not None:
            row["topology"] = topology
            result.rows.append(row)
            for reason in client_bound_reasons(records, cpu_frac):
                result.warnings.append(f"{point.workload} {point.label} run {run}: client-bound? {reason}")
            if point.open is not None and row["max_send_lag_ms"] > 0.1 * _mean_gap_ms(point, rate_scale):
                result.warnings.append(f"{point.workload} {point.label}: the client fell behind the schedule by up "
                                       f"to {row['max_send_lag_ms']:.0f} ms (over 10% of the mean gap)")
        if on_run is not None:
            on_run(PointRun(point, run, records, row))

    if point.open is not None:
        load = point.open.scaled(rate_scale) if rate_scale != 1.0 else point.open
        schedule = load.schedule()
        specs = point.shape.requests(len(schedule), seed=load.seed)
        prompts = [factory.build(pp=s.prompt, depth=s.depth) for s in specs]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        records = await run_open(client, prompts, [s.output for s in specs], schedule,
                                 max_concurrency=load.max_concurrency, topology=topology, latency=latency,
                                 on_request=on_request)
        done(0, records, _cpu_frac(cpu0, wall0), load.rate)
        return result
    assert point.concurrency is not None
    c = point.concurrency
    for run in range(-1, point.runs or runs):
        specs = point.shape.requests(c, seed=seed, run=max(run, 0))
        prompts = [factory.build(pp=s.prompt, depth=s.depth) for s in specs]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        records = await client.run_batch(prompts, [s.output for s in specs], topology=topology, run=run,
                                         latency=latency, on_request=on_request)
        done(run, records, _cpu_frac(cpu0, wall0), None)
    return result


def _cpu_frac(cpu0: float, wall0: float) -> float:
    wall = time.perf_counter() - wall0
    return (time.process_time() - cpu0) / wall if wall > 0 else math.nan


def _mean_gap_ms(point: LoadPoint, rate_scale: float) -> float:
    assert point.open is not None
    return 1000.0 / (point.open.rate * rate_scale)
