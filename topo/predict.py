"""`topo predict`'s job: every topology and concurrency level through the twin's scheduler and cost model
in virtual time, as the cells and meta of a results folder, and their report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.records import CELL_COLUMNS
from bench.results_folder import FolderMeta
from bench.suite import LoadPoint, Suite, load_suites
from common.errors import ConfigError
from reports.report import Report, build_report
from reports.workloads import WorkloadReport
from reports.tables import DEFAULT_MARGIN_PCT
from topo.sweep import now_utc
from topo.transport import planned_transport
from twin.engine import EngineConfig
from twin.predict import predict_sweep, topologies_for_nodes, topology_model
from topology.nccl import TRANSPORTS
from twin.profiles import load_card
from twin.workloads import predict_suite


@dataclass(frozen=True)
class PredictSpec:
    model: str = "gemma4-26b"  # the twin's model card
    hardware: str = "gb10"
    topologies: tuple[str, ...] = ()  # empty: the layouts worth comparing on `nodes` nodes (the registry's)
    nodes: int = 2
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    runs: int = 3
    pp: int = 1024
    tg: int = 128
    quantization: str | None = None
    max_num_batched_tokens: int = 8192
    gpu_memory_utilization: float = 0.70
    seed: int = 0
    link: str | None = None  # a what-if transport; None: what the plan's env on `cluster` implies
    cluster: str | None = None
    margin_pct: float = DEFAULT_MARGIN_PCT  # the smallest difference that makes a winner


@dataclass(frozen=True)
class Prediction:
    cells: pd.DataFrame
    meta: FolderMeta
    report: Report
    elapsed_s: float
    link: str
    link_why: str  # what the link was read from, for printing


def _topology_names(spec: PredictSpec) -> list[str]:
    names = list(spec.topologies) or topologies_for_nodes(spec.nodes)
    for name in spec.topologies:
        needed = topology_model(name).nodes
        if needed > spec.nodes:
            raise ConfigError(f"--topologies {name} needs {needed} nodes; --nodes is {spec.nodes}")
    return names


def _engine_config(spec: PredictSpec) -> tuple[EngineConfig, str, str]:
    """The twin's engine config, its TP link and what the link was read from."""
    if spec.link is not None and spec.link not in TRANSPORTS:
        raise ConfigError(f"--link {spec.link!r}: one of {', '.join(TRANSPORTS)}")
    if spec.link is None:
        rendered = planned_transport(spec.model, spec.cluster)
        link, link_why = rendered.transport, rendered.why
    else:
        link, link_why = spec.link, "--link"
    config = EngineConfig.from_names(
        spec.hardware, spec.model, max_num_batched_tokens=spec.max_num_batched_tokens,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        weight_bytes_per_param=_bytes_per_weight(spec.quantization, spec.model) if spec.quantization else None,
        link=link,
    )
    return config, link, link_why


def run_predict(spec: PredictSpec) -> Prediction:
    names = _topology_names(spec)
    config, link, link_why = _engine_config(spec)
    began = time.perf_counter()
    levels = list(spec.concurrency)
    rows = predict_sweep(names, config, levels, prompt_tokens=spec.pp, max_tokens=spec.tg, runs=spec.runs,
                         seed=spec.seed)
    cells = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    meta = FolderMeta(
        kind="prediction", status="complete", started_at=now_utc(),
        spec={"model": spec.model, "hardware": spec.hardware, "topologies": names, "concurrency": levels,
              "runs": spec.runs, "pp": spec.pp, "tg": spec.tg, "quantization": spec.quantization, "nodes": spec.nodes,
              "seed": spec.seed, "link": link, "margin_pct": spec.margin_pct},
        title=f"Prediction: {spec.model} on {spec.hardware} (twin, virtual time)",
    )
    elapsed_s = time.perf_counter() - began
    return Prediction(cells, meta, build_report(cells, meta), elapsed_s, link, link_why)


@dataclass(frozen=True)
class WorkloadPrediction:
    cells: pd.DataFrame
    meta: FolderMeta
    report: WorkloadReport
    suite: Suite
    elapsed_s: float


def run_predict_workloads(spec: PredictSpec, workload: str, only: Sequence[str] = (), dataset: Path | None = None,
                          on_point: Callable[[str, LoadPoint], None] | None = None) -> WorkloadPrediction:
    """Every test of the workload suite(s) through the twin in virtual time, per topology."""
    names = _topology_names(spec)
    config, link, _ = _engine_config(spec)
    suite = load_suites(workload, list(only), dataset)
    began = time.perf_counter()
    rows = predict_suite(names, config, suite, runs=spec.runs, seed=spec.seed, on_point=on_point)
    cells = pd.DataFrame(rows)
    title = f"Prediction: {spec.model} on {config.hardware.name}, workload {suite.name} (twin, virtual time)"
    meta = FolderMeta(kind="prediction", status="complete", started_at=now_utc(), title=title,
                      spec={"model": spec.model, "hardware": spec.hardware, "topologies": names, "runs": spec.runs,
                            "quantization": spec.quantization, "nodes": spec.nodes, "seed": spec.seed, "link": link,
                            "workload": workload, "only": list(only)},
                      workloads=suite.model_dump(mode="json"))
    return WorkloadPrediction(cells, meta, WorkloadReport(suite, cells), suite, time.perf_counter() - began)


def _bytes_per_weight(quantization: str, card: str) -> float:
    try:
        value = float(quantization)
    except ValueError:
        known = load_card(card).quantization_bytes
        if quantization not in known:
            raise ConfigError(f"--quantization {quantization!r}: card {card} knows {', '.join(known)} "
                              "(or give bytes per weight as a number)") from None
        return known[quantization]
    if not 0.1 <= value <= 4:
        raise ConfigError(f"--quantization {quantization}: bytes per weight must be between 0.1 and 4")
    return value
