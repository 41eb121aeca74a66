"""Predict a workload suite: every test's load points through each topology, in virtual time.

Closed points are llama-benchy batches (one warm-up, then `runs`), each request shaped by the test's shape;
open points (and each rate-sweep step) are one schedule of gamma arrivals under the test's cap, through
twin/openloop.py. Rows have the columns of a measured workload cell (`workload_row`), so predictions and
measurements report the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bench.metrics import run_metrics
from bench.openmetrics import SLOLimits, open_run_metrics
from bench.records import RequestRecord
from bench.suite import LoadPoint, Suite
from twin.engine import EngineConfig
from twin.openloop import simulate_open
from twin.predict import TopologyModel, VirtualDeployment

NAN = float("nan")


def slo_of(point: LoadPoint) -> SLOLimits | None:
    slo = point.test.slo
    return SLOLimits(slo.ttft_ms, slo.e2e_ms) if slo is not None else None


def workload_row(point: LoadPoint, records: list[RequestRecord], *, client_cpu_frac: float = NAN) -> dict[str, Any]:
    """One cells row of a workload point: CELL_COLUMNS, `workload`, `load`, and the open-loop columns."""
    rate = point.open.rate if point.open is not None else NAN
    row = run_metrics(records, client_cpu_frac=client_cpu_frac)
    row.update(open_run_metrics(records, rate=rate, slo=slo_of(point)))
    row["workload"] = point.workload
    row["load"] = point.label
    return row


def predict_point(topology: str | TopologyModel, config: EngineConfig, point: LoadPoint, *, runs: int = 3,
                  seed: int = 0) -> list[dict[str, Any]]:
    deployment = VirtualDeployment(topology, config, seed=seed)
    if point.open is not None:
        load = point.open
        schedule = load.schedule()
        specs = point.shape.requests(len(schedule), seed=load.seed)
        records = simulate_open(deployment, specs, schedule, max_concurrency=load.max_concurrency)
        return [workload_row(point, records)]
    assert point.concurrency is not None
    c = point.concurrency
    rows = []
    for run in range(-1, point.runs or runs):  # run -1: the discarded warm-up batch
        specs = point.shape.requests(c, seed=seed, run=max(run, 0))
        records = deployment.run_batch(c, [s.prompt_tokens for s in specs], [s.output for s in specs], run=run)
        if run >= 0:
            rows.append(workload_row(point, records))
    return rows


def predict_suite(topologies: Iterable[str | TopologyModel], config: EngineConfig, suite: Suite, *, runs: int = 3,
                  seed: int = 0, on_point: Callable[[str, LoadPoint], None] | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for topology in topologies:
        for point in suite.points():
            for row in predict_point(topology, config, point, runs=runs, seed=seed):
                row["topology"] = topology if isinstance(topology, str) else topology.name
                rows.append(row)
            if on_point is not None:
                on_point(str(topology), point)
    return rows
