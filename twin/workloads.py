"""Predict a workload suite: every test's load points through each topology, in virtual time.

Closed points are llama-benchy batches (one warm-up, then `runs`), each request shaped by the test's shape;
open points (and each rate-sweep step) are one schedule of gamma arrivals under the test's cap, through
twin/openloop.py. Rows come from bench.points.workload_row, as a measured point's do, so predictions and
measurements report the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bench.points import workload_row
from bench.suite import LoadPoint, Suite
from twin.engine import EngineConfig
from twin.openloop import simulate_open
from topology.registry import Topology
from twin.predict import VirtualDeployment


def predict_point(topology: str | Topology, config: EngineConfig, point: LoadPoint, *, runs: int = 3,
                  seed: int = 0) -> list[dict[str, Any]]:
    deployment = VirtualDeployment(topology, config, seed=seed)
    if point.open is not None:
        load = point.open
        schedule = load.schedule()
        specs = point.shape.requests(len(schedule), seed=load.seed)
        records = simulate_open(deployment, specs, schedule, max_concurrency=load.max_concurrency)
        return [workload_row(point, records)]
    c = point.load.concurrency
    rows = []
    for run in range(-1, point.runs or runs):  # run -1: the discarded warm-up batch
        specs = point.shape.requests(c, seed=seed, run=max(run, 0))
        records = deployment.run_batch(c, [s.prompt_tokens for s in specs], [s.output for s in specs], run=run)
        if run >= 0:
            rows.append(workload_row(point, records))
    return rows


def predict_suite(topologies: Iterable[str | Topology], config: EngineConfig, suite: Suite, *, runs: int = 3,
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
