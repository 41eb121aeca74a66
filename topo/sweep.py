"""The sweep: for each topology, bring it up, measure every concurrency level, tear it down, report.

    spec = SweepSpec(model="gemma4-26b", cluster="local-twin", ...)
    sweep = plan_sweep(spec)            # pure: loads configs, plans every topology (errors before anything runs)
    outcome = await run_sweep(sweep, out_dir, progress)

The results folder (docs/DESIGN.md, "The results folder") is written as the sweep goes: meta.json first
(status "running"), every measured run appended the moment it finishes (bench/results_folder.py:
crash-safe part files),
start-up time per topology into meta.json, and report.md/report.html at the end. A sweep that dies keeps
every finished run; `resume_spec(DIR)` reads the spec back and the next run measures only what is missing
(the missing runs of a partly measured cell, then the untouched cells), never re-measuring a finished run.
"""

from __future__ import annotations

import asyncio
import getpass
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from bench.client import Endpoint
from bench.records import RequestRecord
from bench.results_folder import CellProgress, FolderMeta, Incident, ResultsFolder, Status, WhatRan, run_failed
from bench.session import BenchSession, BenchSettings, RunDone
from bench.suite import LoadPoint, Suite, load_suites
from bench.workload import DEFAULT_WORKLOAD, ClosedLoad, Load
from cluster.bringup import BringUpProgress, Running, bring_up, open_cluster
from cluster.ray_keep import RayKeeper
from cluster.doctor import require_ready
from cluster.provenance import what_ran
from common.config import REPO_ROOT
from common.errors import ConfigError, ResultsError, StorageError, TopoError, TopologyHung
from telemetry.sampler import DEFAULT_INTERVAL_S, TelemetrySampler, targets_for
from common.masking import mask_command_line
from topo.watchdog import WatchdogSettings, watch
from topology.inventory import Cluster, TwinEngine, load_cluster
from topology.kinds import STUDY_TOPOLOGIES, PlanSecrets, parse_topology, plan
from topology.plan import LaunchPlan
from topology.ray_reuse import RayReuse, plan_ray_reuse, ray_run_order
from topology.recipe import Recipe, load_recipe
from reports.tables import DEFAULT_MARGIN_PCT
from topo.adaptive import DEFAULT_MAX_RUNS, DEFAULT_PRECISION_PCT, MIN_RUNS, AdaptivePolicy, stop_reason

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
# Tokens per request of a cell's warm-up batch: the batch's prefill and first decode steps at this
# concurrency warm the engine; 128 more decode steps only cost time (benchmarks/adaptive_vs_fixed.py
# compares a cell's first measured run with its later ones).
WARMUP_TG = 8
# ... and at least this many requests: at c1 a router sends one request to one engine, and the first
# measured run to a cold one half the time (seen: Shuffle's first c1 run 60% later TTFT); 4 reach both
# engines of a 2-replica router 7 times in 8
WARMUP_MIN_REQUESTS = 4


@dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep; stored in meta.json so a resume measures the same thing."""

    model: str = "gemma4-26b"
    cluster: str = "local-twin"
    topologies: tuple[str, ...] = STUDY_TOPOLOGIES
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    runs: int | None = None  # measured runs per cell; None = adaptive (`--runs auto`, topo/adaptive.py)
    max_runs: int = DEFAULT_MAX_RUNS  # adaptive: at most this many runs per cell
    precision_pct: float = DEFAULT_PRECISION_PCT  # adaptive: stop when every interval is within ± this % ...
    margin_pct: float = DEFAULT_MARGIN_PCT  # ... or the call is settled at this margin (also the report's)
    pp: int = 1024
    tg: int = 128
    latency_mode: Literal["api", "generation", "none"] = "api"
    twin_hardware: str | None = None  # override every twin node's --hardware (e.g. `fast` in tests)
    twin_noise_cv: float | None = None  # override every twin node's --noise-cv (per-step jitter, tests)
    request_timeout_s: float = 600.0
    max_failed_share: float = 0.0  # a run with more failed requests than this share is stored as failed
    seed: int | None = None
    workload: str = DEFAULT_WORKLOAD  # the request shape's name (pp/tg prompts: `default`)
    # server and node telemetry (telemetry/sampler.py) every this many seconds during each topology; 0: off
    telemetry_interval_s: float = DEFAULT_INTERVAL_S
    suite: str | None = None  # --workload: suite names or YAML paths (bench/suite.py); None = the pp/tg shape
    only: tuple[str, ...] = ()  # --only: tests of the suite
    rate_scale: float = 1.0  # open-loop rates x this (a twin profile sped up as much, e.g. 50 for `fast`)
    dataset: str | None = None  # --dataset: a ShareGPT JSON for the suite's sharegpt test

    def __post_init__(self) -> None:
        if not self.rate_scale > 0:
            raise ConfigError(f"--rate-scale must be > 0 (got {self.rate_scale})")
        if (self.only or self.dataset) and not self.suite:
            raise ConfigError("--only and --dataset pick tests of a --workload suite; give --workload too")
        if not self.topologies:
            raise ConfigError("--topologies: give at least one topology")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ConfigError(f"-c: concurrency levels must be >= 1 (got {list(self.concurrency)})")
        if self.telemetry_interval_s < 0:
            raise ConfigError(f"--telemetry-interval must be >= 0 s, 0 switches it off (got {self.telemetry_interval_s})")
        if self.runs is not None and self.runs < 1:
            raise ConfigError(f"--runs must be >= 1 or auto (got {self.runs})")
        self.adaptive_policy()  # checks --precision, --margin and --max-runs
        if self.twin_noise_cv is not None and not 0 <= self.twin_noise_cv <= 2:
            raise ConfigError(f"--twin-noise-cv must be between 0 and 2 (got {self.twin_noise_cv})")
        if self.pp < 1 or self.tg < 1:
            raise ConfigError(f"--pp and --tg must be >= 1 (got pp={self.pp}, tg={self.tg})")
        if not 0 <= self.max_failed_share < 1:
            raise ConfigError(f"--max-failed-share must be in [0, 1) (got {self.max_failed_share})")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"--timeout must be positive (got {self.request_timeout_s})")
        if len(set(self.topologies)) != len(self.topologies):
            raise ConfigError(f"--topologies lists a topology twice: {', '.join(self.topologies)}")
        self.bench_settings()  # its own checks (the latency mode) fail here, before anything is brought up

    @property
    def loads(self) -> tuple[Load, ...]:
        return tuple(ClosedLoad(c) for c in self.concurrency)

    @property
    def adaptive(self) -> bool:
        return self.runs is None

    @property
    def planned_runs(self) -> int:
        """The fixed count, or the most an adaptive cell may take."""
        return self.max_runs if self.runs is None else self.runs

    @property
    def runs_text(self) -> str:
        return (f"auto (±{self.precision_pct:g}% or settled at {self.margin_pct:g}%, {MIN_RUNS}..{self.max_runs} runs)"
                if self.adaptive else str(self.runs))

    def adaptive_policy(self) -> AdaptivePolicy:
        return AdaptivePolicy(self.precision_pct, self.margin_pct, self.max_runs)

    def bench_settings(self) -> BenchSettings:
        return BenchSettings(pp=self.pp, tg=self.tg, workload=self.workload, latency_mode=self.latency_mode,
                             request_timeout=self.request_timeout_s, seed=self.seed,
                             warmup_tg=min(self.tg, WARMUP_TG), warmup_min_requests=WARMUP_MIN_REQUESTS)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> SweepSpec:
        try:
            data = dict(data)
            data["topologies"] = tuple(data["topologies"])
            data["concurrency"] = tuple(int(c) for c in data["concurrency"])
            data["only"] = tuple(data.get("only") or ())
            return cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(f"{source}: the stored sweep spec is unusable ({exc})") from exc


@dataclass(frozen=True)
class SweepCell:
    """One cell of the sweep per topology: the workload, its load, and (for a suite's test) the point."""

    workload: str
    load: Load
    label: str
    runs: int
    point: LoadPoint | None = None


def sweep_cells(spec: SweepSpec, suite: Suite | None) -> tuple[SweepCell, ...]:
    if suite is None:
        return tuple(SweepCell(spec.workload, load, load.label, spec.planned_runs) for load in spec.loads)
    # an open-loop point is one run of its schedule (as `vllm bench serve`); a closed one its test's runs
    return tuple(SweepCell(p.workload, p.load, p.label, 1 if p.open is not None else (p.runs or spec.planned_runs), p)
                 for p in suite.points())


@dataclass(frozen=True)
class TopologyPlan:
    topology: str
    launch: LaunchPlan


@dataclass(frozen=True)
class SweepPlan:
    """A sweep computed up front: every topology planned, so a bad layout fails before anything starts."""

    spec: SweepSpec
    cluster: Cluster
    recipe: Recipe
    topologies: tuple[TopologyPlan, ...]
    suite: Suite | None = None
    points: tuple[SweepCell, ...] = ()
    ray_reuse: dict[str, RayReuse] = field(default_factory=dict)  # topology -> the Ray cluster it keeps up

    def cell_key(self, topology: str, cell: SweepCell) -> tuple[str, str, str]:
        """(topology, workload, load label): how the results folder keys the cell's rows."""
        return (topology, cell.workload, cell.label)

    def cells(self) -> list[tuple[str, str, str]]:
        return [self.cell_key(t.topology, cell) for t in self.topologies for cell in self.points]

    @property
    def total_runs(self) -> int:
        return len(self.topologies) * sum(cell.runs for cell in self.points)


def with_twin_overrides(cluster: Cluster, flag: str, update: dict[str, Any]) -> Cluster:
    """Every twin node's engine with `update` applied (`flag` names the option in the error)."""
    if not any(isinstance(n.engine, TwinEngine) for n in cluster.nodes):
        raise ConfigError(f"{flag}: cluster {cluster.name!r} has no twin engine to apply it to")
    nodes = tuple(
        node.model_copy(update={"engine": node.engine.model_copy(update=update)})
        if isinstance(node.engine, TwinEngine) else node
        for node in cluster.nodes
    )
    return cluster.model_copy(update={"nodes": nodes})


def with_twin_hardware(cluster: Cluster, hardware: str) -> Cluster:
    """Every twin node of `cluster` with `--hardware hardware` (sweeps and calibrations of twin clusters)."""
    return with_twin_overrides(cluster, f"--twin-hardware {hardware}", {"hardware": hardware})


def plan_sweep(spec: SweepSpec, *, secrets: PlanSecrets | None = None) -> SweepPlan:
    """Load the cluster and recipe and plan every topology. No I/O but reading the YAML files."""
    cluster = load_cluster(spec.cluster)
    if spec.twin_hardware:
        cluster = with_twin_hardware(cluster, spec.twin_hardware)
    if spec.twin_noise_cv is not None:
        cluster = with_twin_overrides(cluster, f"--twin-noise-cv {spec.twin_noise_cv:g}", {"noise_cv": spec.twin_noise_cv})
    recipe = load_recipe(spec.model)
    secrets = secrets or PlanSecrets.generate()
    plans = tuple(  # Ray topologies next to each other, so they can share one Ray cluster
        TopologyPlan(name, plan(parse_topology(name), cluster, recipe, secrets=secrets))
        for name in ray_run_order(spec.topologies)
    )
    suite = load_suites(spec.suite, spec.only, spec.dataset) if spec.suite else None
    return SweepPlan(spec, cluster, recipe, plans, suite, sweep_cells(spec, suite),
                     plan_ray_reuse([t.launch for t in plans]))


# ---------------------------------------------------------------------------------------------------------
# Progress: what the CLI shows (rich) or a test records.


class SweepProgress(BringUpProgress, Protocol):
    def sweep_started(self, total_runs: int, already_done: int) -> None: ...
    def topology_started(self, topology: str, loads: Sequence[Load]) -> None: ...
    def topology_up(self, topology: str, startup_s: float) -> None: ...
    def run_done(self, topology: str, load: Load, run: int, warmup: bool) -> None: ...
    def cell_done(self, topology: str, load: Load, rows: list[dict[str, Any]], warnings: list[str]) -> None: ...
    def topology_failed(self, topology: str, error: TopoError) -> None: ...
    def note(self, message: str) -> None: ...


# ---------------------------------------------------------------------------------------------------------
# meta.json


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_describe() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--tags"],
                              capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return None
    return done.stdout.strip() or None


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_meta(sweep: SweepPlan, command_line: Sequence[str]) -> FolderMeta:
    return FolderMeta(
        kind="sweep",
        status="running",
        who=f"{getpass.getuser()}@{socket.gethostname()}",
        started_at=now_utc(),
        command_line=list(command_line),
        git_describe=_git_describe(),
        versions={
            "topo": _version("topo"),
            "python": platform.python_version(),
            **{name: _version(name) for name in ("ray", "litellm", "vllm", "httpx", "asyncssh")},
        },
        spec=sweep.spec.to_json(),
        cluster=sweep.cluster.model_dump(mode="json"),
        recipe=sweep.recipe.model_dump(mode="json"),
        workloads=sweep.suite.model_dump(mode="json") if sweep.suite is not None else None,
    )


def resume_spec(directory: Path) -> SweepSpec:
    folder = ResultsFolder(directory)
    meta = folder.read_meta()
    if meta.kind != "sweep":
        raise ResultsError(f"{folder.meta_path}: a {meta.kind}, not a sweep; only a sweep can be resumed")
    return SweepSpec.from_json(meta.spec, source=str(folder.meta_path))


def default_out_dir(spec: SweepSpec, root: Path = Path("results")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    model = Path(spec.model).stem
    return root / f"{model}-{stamp}"


@dataclass
class SweepOutcome:
    directory: Path
    status: Status
    errors: dict[str, str] = field(default_factory=dict)
    measured_runs: int = 0  # runs stored by this process (failed ones included)
    short_cells: list[str] = field(default_factory=list)  # cells with fewer measured runs than asked, and why
    timing: dict[str, float] = field(default_factory=dict)  # meta.json's: wall_s, serving_s, serving_share

    def timing_text(self) -> str:
        """The closing line's figures: how long the decision took, and how much of it was measuring."""
        if not self.timing:
            return ""
        return (f"wall {self.timing['wall_s']:.0f} s, serving measured requests {self.timing['serving_s']:.0f} s "
                f"({self.timing['serving_share']:.0%} of the wall time)")


# ---------------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    """What every step of one sweep shares: where it writes, what it reports to, what it found."""

    sweep: SweepPlan
    folder: ResultsFolder
    meta: FolderMeta
    progress: SweepProgress
    outcome: SweepOutcome
    watchdog: WatchdogSettings | None = None
    keeper: RayKeeper | None = None  # a Ray cluster kept up between consecutive Ray topologies
    rows: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)  # by cell, failed too
    serving_s: float = 0.0  # measured batches, first send to last byte

    def save_meta(self) -> None:
        self.folder.write_meta(self.meta)

    def measured(self, key: tuple[str, str, str]) -> list[dict[str, Any]]:
        """A cell's runs that count (not stored as failed), as stored so far."""
        share = self.sweep.spec.max_failed_share
        return [row for row in self.rows.get(key, []) if not run_failed(row["failed"], row["requests"], share)]

    def rivals(self, topology: str, cell: SweepCell) -> dict[str, list[dict[str, Any]]]:
        """The other topologies' counted runs of this cell, as measured so far."""
        return {other.topology: self.measured(self.sweep.cell_key(other.topology, cell))
                for other in self.sweep.topologies if other.topology != topology}


def cell_label(key: tuple[str, str, str]) -> str:
    """meta.json's key of a cell: topology/workload/load."""
    return "/".join(key)


def batch_seconds(records: Sequence[RequestRecord]) -> float:
    """How long one measured batch kept the server busy: from the first send to the last byte."""
    starts = [r.start for r in records]
    ends = [r.end for r in records if r.end is not None] or [t for r in records for t in r.token_times[-1:]]
    return max(ends) - min(starts) if starts and ends else 0.0


T = TypeVar("T")
LIVENESS_POLL_S = 2.0


async def _while_alive(running: Running, work: Awaitable[T], poll_s: float = LIVENESS_POLL_S) -> T:
    """Run `work` while checking every `poll_s` that the topology's processes live: a rank or proxy that
    dies mid-cell ends the cell at once with its log tail (BringUpError), instead of the rest of the cell's
    runs being measured against a dead topology."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            await asyncio.sleep(poll_s)
            await running.check_alive()

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done() and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            watcher.result()  # raises the BringUpError
        return task.result()
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def _measure_topology(item: TopologyPlan, todo: list[tuple[SweepCell, int, int]], state: _Run) -> None:
    """Bring one topology up, measure its missing runs cell by cell, tear it down (always). When the
    watchdog calls it hung: record the incident, tear down, bring it up again and retry the cell (at most
    `watchdog.restarts` times; then TopologyHung ends this topology and the sweep goes on)."""
    remaining = list(todo)  # (cell, runs still to measure, first run's number); the head is in progress
    restarts = 0
    while remaining:
        stored_in_cell = [0]  # runs of the head cell stored during this bring-up
        try:
            await _up_and_measure(item, remaining, stored_in_cell, state)
        except TopologyHung as hang:
            cell, runs, first_run = remaining[0]
            done = stored_in_cell[0]
            given_up = state.watchdog is None or restarts >= state.watchdog.restarts
            incident = Incident(
                topology=item.topology, load=cell.label, reason=str(hang), at=now_utc(),
                runs_failed=list(range(first_run + done, first_run + runs)),
                action=(f"torn down; given up after {restarts} restart(s)" if given_up
                        else "torn down, brought up again, cell retried"),
            )
            state.meta.incidents.append(incident)
            state.save_meta()
            state.progress.note(f"{item.topology} hung at {cell.label}: {hang}; {incident.action}")
            if given_up:
                raise
            restarts += 1
            remaining[0] = (cell, runs - done, first_run + done)  # runs stored before the hang stay


async def _up_and_measure(item: TopologyPlan, remaining: list[tuple[SweepCell, int, int]], stored_in_cell: list[int],
                          state: _Run) -> None:
    """One bring-up: record what runs, then measure the cells of `remaining` in order (each removed when
    done) under the watchdog."""
    spec = state.sweep.spec
    assert state.keeper is not None
    handover = await state.keeper.handover(item.topology)
    async with open_cluster(state.sweep.cluster) as nodes:
        async with bring_up(item.launch, nodes, progress=state.progress, handover=handover) as running:
            state.meta.startup_s[item.topology] = round(running.bring_up_s, 3)
            if handover.adopt is not None:  # its start-up did not include the kept Ray processes
                state.meta.ray_kept_from[item.topology] = handover.adopt.source
            else:
                state.meta.ray_kept_from.pop(item.topology, None)
            connectors = {name: access.connector for name, access in nodes.items()}
            logs = {name: process.log_path for name, process in running.processes.items()}
            ran = await what_ran(item.launch, state.sweep.cluster, state.sweep.recipe, connectors, logs)
            state.meta.ran[item.topology] = WhatRan.model_validate(ran)
            state.save_meta()
            state.progress.topology_up(item.topology, running.bring_up_s)
            sampler = None
            if spec.telemetry_interval_s > 0:
                http_targets, node_targets = targets_for(item.launch, state.sweep.cluster,
                                                         running.endpoint_headers())
                sampler = TelemetrySampler(item.topology, http_targets, node_targets, state.sweep.cluster,
                                           interval_s=spec.telemetry_interval_s, workload=spec.workload)
            api_key = running.endpoint_headers().get("Authorization", "").removeprefix("Bearer ") or None
            session = BenchSession(Endpoint.from_url(running.endpoint, api_key), item.launch.served_model_name,
                                   spec.bench_settings())
            try:
                if sampler is not None:
                    await sampler.__aenter__()
                work = _measure_cells(item, remaining, stored_in_cell, running, state, sampler, session)
                if state.watchdog is None:
                    await work
                else:
                    await _watched(work, watch(item.launch, lambda: session.activity, state.watchdog))
            finally:
                await session.close()
                if sampler is not None:
                    # what was sampled is kept, also when the topology failed half-way
                    await sampler.stop()
                    state.folder.append_telemetry(sampler.rows())
                    for note in sampler.notes:
                        state.progress.note(f"{item.topology}: telemetry: {note}")


async def _measure_cells(item: TopologyPlan, remaining: list[tuple[SweepCell, int, int]], stored_in_cell: list[int],
                         running: Running, state: _Run, sampler: TelemetrySampler | None,
                         session: BenchSession) -> None:
    """The cells of `remaining` of one topology that is up, in order, each removed when done; the sampler
    learns which cell runs."""
    await session.open()
    for note in session.notes:
        state.progress.note(f"{item.topology}: {note}")
    while remaining:
        cell, runs, first_run = remaining[0]
        # before the check: a hang called during it must not count the previous cell's runs as this one's
        stored_in_cell[0] = 0
        # a lost node or dead rank ends this topology with its log tail, not with cells of errors
        await running.check_alive()
        if sampler is not None:
            sampler.mark(cell.load)
        warnings = await _while_alive(running, _measure_cell(item.topology, cell, runs, first_run, session, state,
                                                             sampler, stored_in_cell))
        if sampler is not None:
            sampler.mark(None)
        remaining.pop(0)
        state.meta.warnings.extend(f"{item.topology}: {w}" for w in warnings)
        state.save_meta()
        state.folder.compact()


async def _watched(work: Coroutine[Any, Any, None], watchdog: Coroutine[Any, Any, str]) -> None:
    """Run `work`; if the watchdog returns first, cancel the work and raise TopologyHung with its reason."""
    work_task = asyncio.ensure_future(work)
    dog_task = asyncio.ensure_future(watchdog)
    try:
        done, _ = await asyncio.wait({work_task, dog_task}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled from outside (Ctrl-C, SIGTERM): both go
        for task in (work_task, dog_task):
            task.cancel()
        await asyncio.gather(work_task, dog_task, return_exceptions=True)
        raise
    if work_task in done:
        dog_task.cancel()
        await asyncio.gather(dog_task, return_exceptions=True)
        work_task.result()  # the work's own error, if any
        return
    work_task.cancel()  # the runs it stored stay stored; the requests in flight are abandoned
    await asyncio.gather(work_task, return_exceptions=True)
    raise TopologyHung(dog_task.result())


async def _measure_cell(topology: str, cell: SweepCell, runs: int, first_run: int, session: BenchSession,
                        state: _Run, sampler: TelemetrySampler | None = None,
                        stored_in_cell: list[int] | None = None) -> list[str]:
    """The missing runs of one cell: `runs` of them (a workload test's point: its own runs), or (adaptive,
    closed loads of the pp/tg shape) run after run until topo/adaptive.py's rule says the cell is done. Why
    it stopped goes to meta.json."""
    spec = state.sweep.spec
    key = state.sweep.cell_key(topology, cell)
    stored = state.rows.setdefault(key, [])
    rows: list[dict[str, Any]] = []
    load = cell.load

    def on_run(done: RunDone) -> None:
        if sampler is not None:
            sampler.snapshot()  # a sample at this run's end (and the next one's start) for its counters
        # Stored the moment it is measured: Ctrl-C or a crash in the next run loses nothing of this one.
        if not done.warmup and done.row is not None:
            if sampler is not None and done.records:
                ends = [r.end for r in done.records if r.end is not None] or [r.start for r in done.records]
                sampler.mark_run(load, done.run, min(r.batch_start for r in done.records), max(ends))
            state.folder.append(done.records, [done.row])
            rows.append(done.row)
            stored.append(done.row)
            state.serving_s += batch_seconds(done.records)
            state.outcome.measured_runs += 1
            if stored_in_cell is not None:
                stored_in_cell[0] += 1
        state.progress.run_done(topology, load, max(done.run, first_run), done.warmup)

    if cell.point is not None:
        result = await session.run_point(cell.point, first_run + runs, topology=topology, first_run=first_run,
                                         rate_scale=spec.rate_scale, on_run=on_run)
        warnings = result.warnings
        state.meta.cell_stops[cell_label(key)] = f"fixed: {cell.runs} run(s) of the test"
    elif not spec.adaptive:
        result = await session.run(load, runs, topology=topology, first_run=first_run, on_run=on_run)
        warnings = result.warnings
        state.meta.cell_stops[cell_label(key)] = f"fixed: {spec.planned_runs} runs"
    else:
        policy, warm, warnings, next_run = spec.adaptive_policy(), True, [], first_run
        while (reason := stop_reason(topology, state.measured(key), state.rivals(topology, cell), policy)) is None:
            if len(stored) >= 2 * policy.max_runs:  # failed runs count towards a limit too
                reason = f"stopped after {len(stored)} runs, {len(stored) - len(state.measured(key))} of them failed"
                break
            more = max(1, MIN_RUNS - len(state.measured(key)))  # a cell's first batch: the fewest that can stop
            result = await session.run(load, more, topology=topology, first_run=next_run, on_run=on_run, warmup=warm)
            warm, next_run = False, next_run + more
            warnings += result.warnings
        state.meta.cell_stops[cell_label(key)] = reason
    state.progress.cell_done(topology, load, rows, warnings)
    return warnings


async def run_sweep(
    sweep: SweepPlan,
    directory: Path,
    progress: SweepProgress,
    *,
    command_line: Sequence[str] = (),
    resume: bool = False,
    on_topology_done: Callable[[str], None] | None = None,
    check_nodes: bool = True,
    watchdog: WatchdogSettings | None = WatchdogSettings(),
) -> SweepOutcome:
    """Measure every missing run of the sweep into `directory`; see the module docstring.
    First (unless `check_nodes` is off) `topo doctor`'s blocking checks: NodesNotReady, nothing started."""
    if check_nodes:
        await require_ready(sweep.cluster, sweep.recipe)
    began = time.perf_counter()
    folder = ResultsFolder(directory)
    if resume:
        meta = folder.read_meta()
        meta.resumed_at.append(now_utc())
        meta.status = "running"
        done = folder.cell_progress(sweep.spec.max_failed_share)  # sets damaged part files aside
        for note in folder.notes:
            progress.note(note)
            meta.warnings.append(note)
    else:
        if folder.has_meta():
            raise ResultsError(f"{directory} already holds a sweep; resume it with --resume {directory} "
                               "or choose another --out")
        meta = new_meta(sweep, command_line)
        done = {}
    folder.write_meta(meta)

    spec = sweep.spec
    runs_of = {sweep.cell_key(t.topology, cell): cell.runs for t in sweep.topologies for cell in sweep.points}
    already = sum(min(cell.measured, runs_of[key]) for key, cell in done.items() if key in runs_of)
    progress.sweep_started(sweep.total_runs, already)
    keeper = RayKeeper(sweep.cluster, {t.topology: t.launch for t in sweep.topologies}, sweep.ray_reuse, progress)
    state = _Run(sweep, folder, meta, progress, SweepOutcome(directory, "running"), watchdog, keeper)
    if done:
        for row in folder.read_cells().to_dict("records"):
            state.rows.setdefault((str(row["topology"]), str(row["workload"]), str(row["load"])), []).append(row)
    status: Status = "failed"
    try:
        for item in sweep.topologies:
            todo = []  # (cell, runs still to measure, number of the first of them)
            for cell in sweep.points:
                key = sweep.cell_key(item.topology, cell)
                stored = done.get(key, CellProgress(0, 0, 0))
                # a resumed adaptive cell is done when it said why it stopped
                adaptive = spec.adaptive and cell.point is None
                finished = cell_label(key) in meta.cell_stops if adaptive else stored.measured >= cell.runs
                if not finished:
                    todo.append((cell, cell.runs - stored.measured, stored.next_run))
            if not todo:
                continue
            progress.topology_started(item.topology, [cell.load for cell, _, _ in todo])
            try:
                await _measure_topology(item, todo, state)
            except StorageError:
                raise  # the disk, not the topology: nothing further can be stored
            except TopoError as exc:
                # One topology failing (a node that does not come up) must not cost the others' cells.
                state.outcome.errors[item.topology] = str(exc)
                meta.errors[item.topology] = str(exc)
                state.save_meta()
                progress.topology_failed(item.topology, exc)
            if on_topology_done:
                on_topology_done(item.topology)
        state.outcome.short_cells = _short_cells(folder, sweep)
        status = "incomplete" if state.outcome.errors or state.outcome.short_cells else "complete"
    except (asyncio.CancelledError, KeyboardInterrupt):
        status = "interrupted"
        raise
    except StorageError as exc:
        meta.errors["results folder"] = str(exc)
        raise
    finally:
        failing = sys.exc_info()[1] is not None  # an error is on its way out: it is the one to report
        storage_error: StorageError | None = None
        # a Ray cluster kept for a topology that never came (failed, interrupted, nothing to measure)
        kept_problem, late_cancel = await keeper.release_at_end()
        if kept_problem:
            meta.errors["teardown"] = kept_problem
            status = "failed" if status == "complete" else status
        status = "interrupted" if late_cancel else status
        try:
            folder.compact()
        except StorageError as exc:  # the parts stay and are read as they are; a resume compacts them
            meta.errors["results folder"] = str(exc)
            status, storage_error = "failed", exc
        state.outcome.status = status
        meta.status = status
        meta.finished_at = now_utc()
        wall = time.perf_counter() - began
        meta.timing = {"wall_s": round(wall, 3), "serving_s": round(state.serving_s, 3),
                       "serving_share": round(state.serving_s / wall, 4) if wall > 0 else 0.0}
        state.outcome.timing = dict(meta.timing)
        try:
            state.save_meta()
        except StorageError as exc:
            storage_error = storage_error or exc
        if storage_error is not None and not failing:
            raise storage_error
        if late_cancel and not failing:
            raise asyncio.CancelledError()
    return state.outcome


def _short_cells(folder: ResultsFolder, sweep: SweepPlan) -> list[str]:
    """Cells with fewer measured runs than the spec asks: failed runs (stored, measured again by a resume)
    or runs never measured (a topology that failed)."""
    progress = folder.cell_progress(sweep.spec.max_failed_share)
    short = []
    for item in sweep.topologies:
        for point in sweep.points:
            # adaptive (closed pp/tg cells): the fewest runs that can stop; a workload test's point: its runs
            needed = MIN_RUNS if sweep.spec.adaptive and point.point is None else point.runs
            key = sweep.cell_key(item.topology, point)
            cell = progress.get(key, CellProgress(0, 0, 0))
            if cell.measured < needed:
                failed = f", {cell.failed} failed" if cell.failed else ""
                short.append(f"{key[0]} {key[2]}: {cell.measured} of {needed} runs measured{failed}")
    return short


def command_line() -> list[str]:
    """This process's command line as it may be stored: secret option values and URL credentials masked."""
    return mask_command_line([Path(sys.argv[0]).name, *sys.argv[1:]])
