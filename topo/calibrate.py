"""`topo calibrate`: a hardware profile of the user's own nodes, from a handful of measured cells.

    cells = default_cells(recipe)
    measured = await measure(cluster, recipe, cells, runs, progress)      # solo and tp2-mp brought up once each
    fit = fit_profile(base, card_config, measured, link)                  # virtual-time twin vs the cells
    write_profile(path, base_data, fit, ...)                              # calibrated constants name their cells

Each cell is chosen to pin one constant of the twin's cost model (twin/costmodel.py), the others held at
the base profile's values:

- solo decode at c1 (one sequence: the per-step overhead and the weights read) and at c16 (more distinct
  experts read per step: the memory bandwidth, the overhead being the same per step);
- solo prefill of one full step (max_num_batched_tokens tokens: the compute efficiency);
- tp2-mp decode at c1 (2 x layers small all-reduces a step: the link's per-hop latency);
- tp2-mp prefill of one full step (all-reduces of MBs: the link's bandwidth).

The link fitted is the transport the TP=2 plan's env implies (topo/transport.py), the one the engines really
use; the other transports keep the base profile's figures. Executor and router constants are kept from the
base profile (the proxy's costs are measured by benchmarks/proxy_cost.py, not here). The fit is a least-squares
solve of log(predicted / measured) over the cells, the predictions coming from the same scheduler and cost
model `topo predict` runs, so a calibrated profile predicts what the nodes measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml

from bench.client import Endpoint
from bench.records import RequestRecord
from bench.session import BenchSession
from cluster.bringup import BringUpProgress, bring_up, open_cluster
from common.errors import ConfigError, TopoError
from topology.inventory import Cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.recipe import Recipe
from twin.engine import EngineConfig
from twin.predict import predict_cells
from twin.profiles import HardwareProfile, Transport, load_card

Metric = Literal["decode_tps", "prefill_tps"]


@dataclass(frozen=True)
class CalibrationCell:
    topology: Literal["solo", "tp2-mp"]
    concurrency: int
    pp: int
    tg: int
    metric: Metric
    pins: str  # the constant it pins, for printing

    @property
    def label(self) -> str:
        return f"{self.topology} c{self.concurrency} pp{self.pp} tg{self.tg} {self.metric}"


def default_cells(max_num_batched_tokens: int = 8192) -> tuple[CalibrationCell, ...]:
    """Five cells, one per fitted constant (see the module docstring)."""
    prefill_pp = max(64, max_num_batched_tokens // 4)  # 4 requests fill one step
    return (
        CalibrationCell("solo", 1, 64, 64, "decode_tps", "step_overhead_ms"),
        CalibrationCell("solo", 16, 64, 64, "decode_tps", "bandwidth_efficiency"),
        CalibrationCell("solo", 4, prefill_pp, 2, "prefill_tps", "compute_efficiency"),
        CalibrationCell("tp2-mp", 1, 64, 64, "decode_tps", "link latency_us"),
        CalibrationCell("tp2-mp", 4, prefill_pp, 2, "prefill_tps", "link efficiency"),
    )


@dataclass
class MeasuredCell:
    cell: CalibrationCell
    values: list[float]  # the metric of each measured run
    requests: int  # requests sent for the cell (warm-up included)

    @property
    def value(self) -> float:
        return sum(self.values) / len(self.values)


# ---------------------------------------------------------------------------------------------------------
# Measuring: the sweep's bring-up and the bench session, one bring-up per topology


async def measure(
    cluster: Cluster,
    recipe: Recipe,
    cells: Sequence[CalibrationCell],
    runs: int,
    progress: BringUpProgress,
    on_cell: Callable[[MeasuredCell], None] | None = None,
) -> list[MeasuredCell]:
    """Bring each topology the cells name up once, measure its cells (a warm-up + `runs` runs), tear it down."""
    if runs < 1:
        raise ConfigError(f"--runs must be >= 1 (got {runs})")
    secrets = PlanSecrets.generate()
    measured: list[MeasuredCell] = []
    topologies = list(dict.fromkeys(cell.topology for cell in cells))
    async with open_cluster(cluster) as nodes:
        for topology in topologies:
            launch = plan(parse_topology(topology), cluster, recipe, secrets=secrets)
            async with bring_up(launch, nodes, progress=progress) as running:
                api_key = running.endpoint_headers().get("Authorization", "").removeprefix("Bearer ") or None
                for cell in (c for c in cells if c.topology == topology):
                    await running.check_alive()
                    sent: list[RequestRecord] = []
                    session = BenchSession(Endpoint.from_url(running.endpoint, api_key), launch.served_model_name,
                                           pp=cell.pp, tg=cell.tg, seed=0)
                    try:
                        await session.open()
                        result = await session.cell(cell.concurrency, runs, topology=topology, on_request=sent.append)
                    finally:
                        await session.close()
                    values = [float(row[cell.metric]) for row in result.run_rows if row["failed"] == 0]
                    if not values or any(math.isnan(v) or v <= 0 for v in values):
                        raise TopoError(f"calibration cell {cell.label}: no usable measurement "
                                        f"({len(result.run_rows)} runs, values {values})")
                    done = MeasuredCell(cell, values, len(sent))
                    measured.append(done)
                    if on_cell:
                        on_cell(done)
    return measured


# ---------------------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class Knob:
    """A constant the fit moves: a top-level key of the profile or links.<transport>.<key>."""

    key: str
    low: float
    high: float
    link: bool = False  # a key of the fitted transport's link

    def name(self, transport: str) -> str:
        return f"links.{transport}.{self.key}" if self.link else self.key

    def get(self, hw: HardwareProfile, transport: str) -> float:
        return float(getattr(hw.links[transport], self.key) if self.link else getattr(hw, self.key))


KNOBS: dict[str, Knob] = {
    "step_overhead_ms": Knob("step_overhead_ms", 0.001, 100.0),
    "bandwidth_efficiency": Knob("bandwidth_efficiency", 0.02, 1.0),
    "compute_efficiency": Knob("compute_efficiency", 0.005, 1.0),
    "link latency_us": Knob("latency_us", 0.001, 10_000.0, link=True),
    "link efficiency": Knob("efficiency", 0.001, 1.0, link=True),
}


def with_values(hw: HardwareProfile, values: dict[str, float], transport: str) -> HardwareProfile:
    """`hw` with the knobs' values (by KNOBS name) replaced."""
    top = {KNOBS[name].key: value for name, value in values.items() if not KNOBS[name].link}
    link_update = {KNOBS[name].key: value for name, value in values.items() if KNOBS[name].link}
    links = dict(hw.links)
    if link_update:
        links[transport] = links[transport].model_copy(update=link_update)
    return hw.model_copy(update={**top, "links": links})


def predict_cell(config: EngineConfig, cell: CalibrationCell) -> float:
    """The cell as `topo predict` sees it: a warm-up, then one run (solo and TP=2 are deterministic)."""
    (row,) = predict_cells(cell.topology, config, [cell.concurrency], prompt_tokens=cell.pp, max_tokens=cell.tg,
                           runs=1, seed=0)
    return float(row[cell.metric])


@dataclass
class Fit:
    values: dict[str, float]  # by KNOBS name
    before: dict[str, float]  # the base profile's values
    predicted: dict[str, float] = field(default_factory=dict)  # cell label -> predicted with the fit
    worst: float = 0.0  # largest |predicted / measured - 1| over the cells


def fit_constants(config: EngineConfig, measured: Sequence[MeasuredCell]) -> Fit:
    """Least squares over log(predicted / measured): each knob a cell pins, from the base profile's value."""
    from scipy.optimize import least_squares

    transport = config.link
    names = list(dict.fromkeys(m.cell.pins for m in measured if m.cell.pins in KNOBS))
    if not names:
        raise ConfigError("no calibration cell pins a constant the fit knows")
    before = {name: KNOBS[name].get(config.hardware, transport) for name in names}

    def configured(x: Sequence[float]) -> EngineConfig:
        values = {name: math.exp(v) for name, v in zip(names, x)}
        return config.with_(hardware=with_values(config.hardware, values, transport))

    def residuals(x: Sequence[float]) -> list[float]:
        trial = configured(x)
        return [math.log(predict_cell(trial, m.cell) / m.value) for m in measured]

    low = [math.log(KNOBS[n].low) for n in names]
    high = [math.log(KNOBS[n].high) for n in names]
    start = [min(max(math.log(before[n]), lo + 1e-9), hi - 1e-9) for n, lo, hi in zip(names, low, high)]
    # relative steps of 1%: the predictions are piecewise smooth (whole steps, whole experts)
    solved = least_squares(residuals, start, bounds=(low, high), diff_step=1e-3, x_scale="jac", xtol=1e-10, ftol=1e-12, gtol=1e-12)
    values = {name: math.exp(v) for name, v in zip(names, solved.x)}
    fitted = configured(solved.x)
    predicted = {m.cell.label: predict_cell(fitted, m.cell) for m in measured}
    worst = max(abs(predicted[m.cell.label] / m.value - 1) for m in measured)
    return Fit(values, before, predicted, worst)


# ---------------------------------------------------------------------------------------------------------
# The profile written


def calibrated_data(
    base: dict[str, Any],
    fit: Fit,
    measured: Sequence[MeasuredCell],
    *,
    transport: Transport,
    cluster: str,
    name: str,
    when: datetime | None = None,
) -> dict[str, Any]:
    """The base profile's data with every fitted constant replaced by `{value, source: "calibrated: ..."}`
    naming the cluster, the date and the cells it came from."""
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    data = yaml.safe_load(yaml.safe_dump(base))  # a deep copy of plain data
    for knob_name, value in fit.values.items():
        knob = KNOBS[knob_name]
        cells = [m for m in measured if m.cell.pins == knob_name]
        others = [m for m in measured if m.cell.pins != knob_name]
        said = "; ".join(f"{m.cell.label} measured {m.value:.4g}" for m in cells)
        source = (f"calibrated: topo calibrate on cluster {cluster}, {stamp}, pinned by {said} "
                  f"(jointly with {len(others)} other cells: "
                  + ", ".join(m.cell.label for m in others) + f"); base value {fit.before[knob_name]:.4g}")
        entry = {"value": round(value, 6), "source": source}
        if knob.link:
            data["links"][transport][knob.key] = entry
        else:
            data[knob.key] = entry
    data["name"] = name
    data["description"] = (f"{base.get('name', 'base')} calibrated on cluster {cluster} ({stamp}; TP link "
                           f"{transport}): {', '.join(KNOBS[k].name(transport) for k in fit.values)}")
    return data


def write_profile(path: Path, data: dict[str, Any], header: str) -> None:
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(comment + yaml.safe_dump(data, sort_keys=False, width=140), encoding="utf-8")
    tmp.replace(path)


def engine_config(recipe: Recipe, hardware: HardwareProfile, link: Transport) -> EngineConfig:
    """The twin's engine as the recipe serves the model: its solo serve flags through the twin's own flag
    parser (batch budget, memory share, weight and KV formats), on `hardware`, with the TP link `link`."""
    from twin.cli import engine_config_kwargs, parse_serve_args

    args = parse_serve_args([recipe.weights, *recipe.serve_flags(1), "--card", recipe.twin_card, "--link", link])
    card = load_card(args.card)
    return EngineConfig(hardware=hardware, card=card, **engine_config_kwargs(args, card.quantization_bytes))


__all__ = [
    "CalibrationCell",
    "MeasuredCell",
    "Fit",
    "KNOBS",
    "default_cells",
    "measure",
    "fit_constants",
    "calibrated_data",
    "write_profile",
    "engine_config",
    "with_values",
]
