"""`topo calibrate`: a hardware profile of the user's own nodes, from a handful of measured cells.

    cells = default_cells(recipe)
    measured = await measure(cluster, recipe, cells, runs, progress)      # solo and tp2-mp brought up once each
    fit = fit_profile(base, card_config, measured, link)                  # virtual-time twin vs the cells
    write_profile(path, base_data, fit, ...)                              # calibrated constants name their cells

Each metric of a cell is chosen to pin one constant of the twin's model (twin/costmodel.py, twin/engine.py),
everything else held at the base profile's values:

- solo decode at c1 (one sequence: the per-step overhead on top of the weights read) and at c16 (more
  distinct experts read per step: the memory bandwidth); their TTFT: the engine's pickup (c1) and the
  serial per-request frontend (16 requests at once);
- solo prefill of one full step (max_num_batched_tokens tokens: the compute efficiency);
- tp2-mp decode at c1 (2 x layers small all-reduces a step: the link's per-hop latency);
- tp2-mp prefill of one full step (all-reduces of MBs: the link's bandwidth);
- 2x-solo-shuffle TTFT at c1 (the proxy's request latency) and c8 (its per-request burst cost; the
  accept and dispatch parts move together), and decode at c32 (how long the proxy takes to relay a chunk:
  a busy proxy caps the tokens per second of all streams; a proxy that keeps up shows no such cost, and the
  relay stays off), predicted with the split the router really made.

A cell's figure is its median run's, measured and predicted alike (each run replayed with the client's real
send times and, routed, the router's split). The cells of one request per run (c1) get more runs than
--runs asks for: on a host shared with other work one request's TTFT moves by tens of ms.

The link fitted is the transport the TP=2 plan's env implies (topo/transport.py), the one the engines really
use; the other transports and the executors keep the base profile's figures. The fit is a least-squares
solve of log(predicted / measured) over the cells' metrics, the predictions coming from the same scheduler
and cost model `topo predict` runs, so a calibrated profile predicts what the nodes measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any, Literal

import yaml

from bench.client import Endpoint
from bench.records import RequestRecord
from bench.session import BenchSession, BenchSettings
from bench.workload import ClosedLoad
from cluster.bringup import BringUpProgress, bring_up, open_cluster
from common.errors import ConfigError, TopoError
from reports.tables import METRICS
from topology.inventory import Cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.recipe import Recipe
from twin.engine import EngineConfig
from twin.predict import VirtualDeployment, cell_row, predict_cells, topology_model
from topology.nccl import Transport
from twin.profiles import HardwareProfile, load_card

Metric = Literal["decode_tps", "prefill_tps", "ttft_ms"]
CalibratedTopology = Literal["solo", "tp2-mp", "2x-solo-shuffle"]


@dataclass(frozen=True)
class CalibrationCell:
    topology: CalibratedTopology
    concurrency: int
    pp: int
    tg: int
    targets: tuple[tuple[Metric, str], ...]  # (metric, the KNOBS constant it pins)
    # at least this many measured runs, whatever --runs says: a proxy's cost seen through one request per run
    # moves by tens of ms from one request to the next on a busy host, and such runs take under a second
    min_runs: int = 1

    @property
    def label(self) -> str:
        return f"{self.topology} c{self.concurrency} pp{self.pp} tg{self.tg}"


def default_cells(max_num_batched_tokens: int = 8192, *, router: bool = True) -> tuple[CalibrationCell, ...]:
    """The cells and what each of their metrics pins (see the module docstring)."""
    prefill_pp = max(64, max_num_batched_tokens // 4)  # 4 requests fill one step
    cells = [
        CalibrationCell("solo", 1, 64, 64, (("decode_tps", "step_overhead_ms"), ("ttft_ms", "engine_pickup_ms")),
                        min_runs=5),
        CalibrationCell("solo", 16, 64, 64, (("decode_tps", "bandwidth_efficiency"),
                                             ("ttft_ms", "frontend_ms_per_request"))),
        CalibrationCell("solo", 4, prefill_pp, 2, (("prefill_tps", "compute_efficiency"),)),
        CalibrationCell("tp2-mp", 1, 64, 64, (("decode_tps", "link latency_us"),)),
        CalibrationCell("tp2-mp", 4, prefill_pp, 2, (("prefill_tps", "link efficiency"),)),
    ]
    if router:
        cells += [
            CalibrationCell("2x-solo-shuffle", 1, 64, 8, (("ttft_ms", "router request_latency_ms"),), min_runs=9),
            CalibrationCell("2x-solo-shuffle", 8, 64, 8, (("ttft_ms", "router per_request_ms"),), min_runs=5),
            # streams as long as a sweep's. At each stream's end LiteLLM rebuilds the whole response for its
            # logging in a worker thread that holds the GIL (streaming_handler._finalize_completed_stream),
            # a cost the twin does not model and that weighs more on short streams: on a quiet host this cell
            # at tg32 read 6% under the prediction without a relay limit, while the sweep's c64 tg128 met it
            CalibrationCell("2x-solo-shuffle", 32, 64, 128, (("decode_tps", "router relay_per_chunk_ms"),)),
        ]
    return tuple(cells)


@dataclass
class MeasuredCell:
    cell: CalibrationCell
    rows: list[dict[str, Any]]  # the cells.parquet row of each measured run
    assignments: list[list[int]]  # routed: the replica each request of each run went to, in request order
    requests: int  # requests sent for the cell (warm-up included)
    # per measured run, when the client really sent each request (seconds after the run's start, request order)
    sends: list[list[float]] = field(default_factory=list)

    def value(self, metric: str) -> float:
        """The median run's: one run stalled by the host (a garbage collection in the proxy, another process
        on the core) cannot move it, as it moves a mean of a few runs."""
        return median(float(row[metric]) for row in self.rows)

    def shown(self) -> str:
        return ", ".join(f"{metric} {self.value(metric):.4g}" for metric, _ in self.cell.targets)


def send_offsets(records: Sequence[RequestRecord]) -> list[list[float]]:
    """Per measured run (by run number), each request's send time after the run's start, in request order."""
    runs: dict[int, list[RequestRecord]] = {}
    for record in records:
        runs.setdefault(record.run, []).append(record)
    return [[max(0.0, r.start - r.batch_start) for r in sorted(batch, key=lambda r: r.index)]
            for _, batch in sorted(runs.items())]


def replica_assignments(records: Sequence[RequestRecord], replicas: int) -> list[list[int]]:
    """Per measured run, the replica (0-based, by the backend names' order) of each request, as the router
    reported it. Empty when some request does not say which backend served it."""
    runs: dict[int, list[RequestRecord]] = {}
    for record in records:
        runs.setdefault(record.run, []).append(record)
    names = sorted({r.served_by for r in records if r.served_by})
    if len(names) > replicas or any(r.served_by is None for r in records):
        return []
    index = {name: i for i, name in enumerate(names)}
    return [[index[r.served_by] for r in sorted(batch, key=lambda r: r.index)]  # type: ignore[index]
            for _, batch in sorted(runs.items())]


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
                    settings = BenchSettings(pp=cell.pp, tg=cell.tg, seed=0, workload="calibration")
                    async with BenchSession(Endpoint.from_url(running.endpoint, api_key), launch.served_model_name,
                                            settings) as session:
                        result = await session.run(ClosedLoad(cell.concurrency), max(runs, cell.min_runs),
                                                   topology=topology,
                                                   on_request=sent.append)
                    rows = [row for row in result.run_rows if row["failed"] == 0]
                    unusable = [m for row in rows for m, _ in cell.targets if not float(row[m]) > 0]
                    if not rows or unusable:
                        raise TopoError(f"calibration cell {cell.label}: no usable measurement "
                                        f"({len(result.run_rows)} runs, {len(rows)} without failures)")
                    assignments: list[list[int]] = []
                    replicas = topology_model(topology).replicas
                    ok_runs = {row["run"] for row in rows}
                    sends = send_offsets([r for r in result.records if r.run in ok_runs])
                    if replicas > 1:
                        assignments = replica_assignments([r for r in result.records if r.run in ok_runs], replicas)
                        if not assignments:
                            raise TopoError(f"calibration cell {cell.label}: the router did not say which engine "
                                            "served each request (no x-litellm-model-id)")
                    done = MeasuredCell(cell, rows, assignments, len(sent), sends)
                    measured.append(done)
                    if on_cell:
                        on_cell(done)
    return measured


# ---------------------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class Knob:
    """A constant the fit moves: `path` into the profile's data ("links.{link}" is the fitted transport's);
    `tied` are keys of the same section moved by the same factor (the router's burst costs)."""

    path: tuple[str, ...]
    low: float
    high: float
    tied: tuple[str, ...] = ()
    start: float = 0.0  # where the fit starts when the base's value is below `low` (e.g. 0: not modeled)
    # The value at which the constant does nothing (a limit not reached). Such a constant is calibrated only
    # when a cell it pins shows it: the prediction without it falls outside the cell's measured runs.
    off: float | None = None

    def resolved(self, transport: str) -> tuple[str, ...]:
        return tuple(transport if part == "{link}" else part for part in self.path)

    def name(self, transport: str) -> str:
        return ".".join(self.resolved(transport))

    def get(self, hw: HardwareProfile, transport: str) -> float:
        node: Any = hw
        for part in self.resolved(transport):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return float(node)


KNOBS: dict[str, Knob] = {
    "step_overhead_ms": Knob(("step_overhead_ms",), 0.001, 100.0),
    "bandwidth_efficiency": Knob(("bandwidth_efficiency",), 0.02, 1.0),
    "compute_efficiency": Knob(("compute_efficiency",), 0.005, 1.0),
    "engine_pickup_ms": Knob(("engine_pickup_ms",), 0.001, 1000.0),
    "frontend_ms_per_request": Knob(("frontend_ms_per_request",), 0.001, 1000.0),
    "link latency_us": Knob(("links", "{link}", "latency_us"), 0.001, 10_000.0),
    "link efficiency": Knob(("links", "{link}", "efficiency"), 0.001, 1.0),
    "router request_latency_ms": Knob(("router", "request_latency_ms"), 0.001, 5000.0),
    "router per_request_ms": Knob(("router", "accept_per_request_ms"), 0.001, 1000.0,
                                  tied=("dispatch_per_request_ms",)),
    # 0 in a base profile (no relay limit); started where a saturated proxy would show it. A proxy that keeps
    # up with the engines does not show its relay cost at all: fitted anyway, noise would set it.
    "router relay_per_chunk_ms": Knob(("router", "relay_per_chunk_ms"), 0.0001, 100.0, start=1.0, off=0.0),
}


def with_values(hw: HardwareProfile, values: dict[str, float], transport: str) -> HardwareProfile:
    """`hw` with the knobs' values (by KNOBS name) replaced; tied keys move by the same factor."""
    top: dict[str, Any] = {}
    sections: dict[tuple[str, ...], dict[str, float]] = {}
    for name, value in values.items():
        knob = KNOBS[name]
        *parent, key = knob.resolved(transport)
        if not parent:
            top[key] = value
            continue
        update = sections.setdefault(tuple(parent), {})
        update[key] = value
        if knob.tied:
            old = knob.get(hw, transport)
            factor = value / old if old > 0 else 1.0
            section: Any = hw
            for part in parent:
                section = section[part] if isinstance(section, dict) else getattr(section, part)
            for tied in knob.tied:
                update[tied] = getattr(section, tied) * factor
    links = dict(hw.links)
    router = hw.router
    for parent, update in sections.items():
        if parent[0] == "links":
            links[parent[1]] = links[parent[1]].model_copy(update=update)
        elif parent == ("router",):
            router = router.model_copy(update=update)
        else:
            raise ConfigError(f"no knob section {'.'.join(parent)}")
    return hw.model_copy(update={**top, "links": links, "router": router})


def predict_cell(config: EngineConfig, measured: MeasuredCell) -> dict[str, float]:
    """The cell's metrics as `topo predict` sees them: a warm-up, then each measured run replayed with the
    client's real send times and (routed) the split the router made in that run. Without either, solo and
    TP=2 are deterministic, so one run stands for all."""
    cell = measured.cell
    metrics = [metric for metric, _ in cell.targets]
    if not measured.assignments and not measured.sends:
        (row,) = predict_cells(cell.topology, config, [cell.concurrency], prompt_tokens=cell.pp,
                               max_tokens=cell.tg, runs=1, seed=0)
        return {m: float(row[m]) for m in metrics}
    runs = max(len(measured.assignments), len(measured.sends))
    rows = []
    for run in range(runs):
        deployment = VirtualDeployment(cell.topology, config, seed=run)
        deployment.run_batch(cell.concurrency, cell.pp, cell.tg, run=-1)
        assignment = measured.assignments[run] if measured.assignments else None
        sends = measured.sends[run] if measured.sends else None
        rows.append(cell_row(deployment.run_batch(cell.concurrency, cell.pp, cell.tg, run=run, assignment=assignment,
                                                  sends=sends)))
    return {m: median(float(r[m]) for r in rows) for m in metrics}  # as MeasuredCell.value


@dataclass
class Fit:
    values: dict[str, float]  # by KNOBS name
    before: dict[str, float]  # the base profile's values
    predicted: dict[tuple[str, str], float] = field(default_factory=dict)  # (cell label, metric) -> predicted
    worst: float = 0.0  # largest |predicted / measured - 1| over the cells' targets
    # constants kept at their `off` value because no cell showed them, and what the cells said instead
    not_seen: dict[str, str] = field(default_factory=dict)


def fit_constants(config: EngineConfig, measured: Sequence[MeasuredCell]) -> Fit:
    """Least squares over log(predicted / measured) of every cell's targets, from the base profile's values.

    A constant with an `off` value (a limit such as the proxy's relay rate) is kept off unless a cell it
    pins measured every run slower than the prediction without it: within the cell's own run-to-run spread a
    fitted value would only describe that noise, and runs all faster are not a limit's doing. The others are then
    fitted again without it."""
    transport = config.link
    names = list(dict.fromkeys(knob for m in measured for _, knob in m.cell.targets))
    unknown = [n for n in names if n not in KNOBS]
    if unknown or not names:
        raise ConfigError(f"calibration cells pin constants the fit does not know: {unknown or 'none'}")
    before = {name: KNOBS[name].get(config.hardware, transport) for name in names}
    values = _solve(config, measured, names, before)
    not_seen: dict[str, str] = {}
    for name in names:
        off = KNOBS[name].off
        if off is None:
            continue
        without = config.with_(hardware=with_values(config.hardware, {**values, name: off}, transport))
        said = _unseen_effect(without, measured, name)
        if said is not None:
            not_seen[name] = said
    if not_seen:
        fixed = {name: KNOBS[name].off or 0.0 for name in not_seen}
        config = config.with_(hardware=with_values(config.hardware, fixed, transport))
        rest = [name for name in names if name not in not_seen]
        values = {**(_solve(config, measured, rest, {n: values[n] for n in rest}) if rest else {}), **fixed}
        values = {name: values[name] for name in names}  # in the cells' order
    fitted = config.with_(hardware=with_values(config.hardware, values, transport))
    predicted: dict[tuple[str, str], float] = {}
    for m in measured:
        for metric, value in predict_cell(fitted, m).items():
            predicted[(m.cell.label, metric)] = value
    worst = max(abs(predicted[(m.cell.label, metric)] / m.value(metric) - 1)
                for m in measured for metric, _ in m.cell.targets)
    return Fit(values, before, predicted, worst, not_seen)


def _solve(config: EngineConfig, measured: Sequence[MeasuredCell], names: Sequence[str],
           start_at: dict[str, float]) -> dict[str, float]:
    """The knobs `names` that minimise the log errors of all cells' targets, the others as `config` has them."""
    from scipy.optimize import least_squares

    transport = config.link

    def configured(x: Sequence[float]) -> EngineConfig:
        values = {name: math.exp(v) for name, v in zip(names, x)}
        return config.with_(hardware=with_values(config.hardware, values, transport))

    def residuals(x: Sequence[float]) -> list[float]:
        trial = configured(x)
        out = []
        for m in measured:
            predicted = predict_cell(trial, m)
            out.extend(math.log(predicted[metric] / m.value(metric)) for metric, _ in m.cell.targets)
        return out

    low = [math.log(KNOBS[n].low) for n in names]
    high = [math.log(KNOBS[n].high) for n in names]
    first = {n: start_at[n] if start_at[n] > KNOBS[n].low else max(KNOBS[n].start, KNOBS[n].low) for n in names}
    start = [min(max(math.log(first[n]), lo + 1e-9), hi - 1e-9) for n, lo, hi in zip(names, low, high)]
    solved = least_squares(residuals, start, bounds=(low, high), diff_step=1e-3, x_scale="jac", xtol=1e-10,
                           ftol=1e-12, gtol=1e-12)
    return {name: math.exp(v) for name, v in zip(names, solved.x)}


def _unseen_effect(without: EngineConfig, measured: Sequence[MeasuredCell], name: str) -> str | None:
    """Why knob `name` is not seen (each cell it pins measured a run at least as fast as the prediction
    without it), or None when some cell shows it (every run slower)."""
    said = []
    for m in measured:
        for metric, pins in m.cell.targets:
            if pins != name:
                continue
            runs = [float(row[metric]) for row in m.rows]
            expected = predict_cell(without, m)[metric]
            # a limit only slows: it shows when every run is slower than the prediction without it; runs all
            # faster than that are something else, and a fit would only pin the limit at its bound
            higher_is_faster = next(spec.higher_is_better for spec in METRICS if spec.key == metric)
            slower = [run < expected if higher_is_faster else run > expected for run in runs]
            if all(slower):
                return None
            said.append(f"{m.cell.label} {metric} runs {min(runs):.4g}-{max(runs):.4g}, {expected:.4g} predicted "
                        "without it")
    return "; ".join(said) if said else None


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
    data = yaml.safe_load(yaml.safe_dump(base, sort_keys=False))  # a deep copy of plain data, in its order
    for knob_name, value in fit.values.items():
        knob = KNOBS[knob_name]
        pinned_by = [(m, metric) for m in measured for metric, pins in m.cell.targets if pins == knob_name]
        said = "; ".join(f"{m.cell.label} {metric} measured {m.value(metric):.4g}" for m, metric in pinned_by)
        others = sorted({m.cell.label for m in measured} - {m.cell.label for m, _ in pinned_by})
        source = (f"calibrated: topo calibrate on cluster {cluster}, {stamp}, pinned by {said} "
                  f"(fitted jointly with {', '.join(others)}); base value {fit.before[knob_name]:.4g}")
        if knob_name in fit.not_seen:
            source = (f"calibrated: topo calibrate on cluster {cluster}, {stamp}: not seen, kept off ({value:g}): "
                      f"{fit.not_seen[knob_name]}; base value {fit.before[knob_name]:.4g}")
        *parent, key = knob.resolved(transport)
        section = data
        for part in parent:
            section = section[part]
        factor = value / fit.before[knob_name] if fit.before[knob_name] > 0 else 1.0  # tied keys only
        section[key] = {"value": round(value, 6), "source": source}
        for tied in knob.tied:
            entry = section[tied]
            entry["value"] = round(entry["value"] * factor, 6)
            entry["source"] = (f"calibrated: topo calibrate on cluster {cluster}, {stamp}: moved with {key} "
                               f"(x{factor:.3g}), pinned by {said}")
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
    from twin.cli import parse_serve_args
    from twin.launch import engine_config_kwargs

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
