"""The sweep: for each topology, bring it up, measure every concurrency level, tear it down, report.

    spec = SweepSpec(model="gemma4-26b", cluster="local-twin", ...)
    sweep = plan_sweep(spec)            # pure: loads configs, plans every topology (errors before anything runs)
    outcome = await run_sweep(sweep, out_dir, progress)

The results folder (DESIGN.md "Results") is written as the sweep goes: meta.json first (status "running"),
every measured run appended the moment it finishes (bench/results_folder.py: crash-safe part files),
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

from bench.client import Endpoint
from bench.results_folder import FolderMeta, ResultsFolder, Status
from bench.session import BenchSession, BenchSettings, RunDone
from bench.suite import LoadPoint, Suite, load_suites
from bench.workload import DEFAULT_WORKLOAD, ClosedLoad, Load
from cluster.bringup import BringUpProgress, bring_up, open_cluster
from common.config import REPO_ROOT
from common.errors import ConfigError, ResultsError, TopoError
from topology.inventory import Cluster, TwinEngine, load_cluster
from topology.kinds import STUDY_TOPOLOGIES, PlanSecrets, parse_topology, plan
from topology.plan import LaunchPlan
from topology.recipe import Recipe, load_recipe

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep; stored in meta.json so a resume measures the same thing."""

    model: str = "gemma4-26b"
    cluster: str = "local-twin"
    topologies: tuple[str, ...] = STUDY_TOPOLOGIES
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    runs: int = 1
    pp: int = 1024
    tg: int = 128
    latency_mode: Literal["api", "generation", "none"] = "api"
    twin_hardware: str | None = None  # override every twin node's --hardware (e.g. `fast` in tests)
    request_timeout_s: float = 600.0
    seed: int | None = None
    workload: str = DEFAULT_WORKLOAD  # the request shape's name (pp/tg prompts: `default`)
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
        if self.runs < 1:
            raise ConfigError(f"--runs must be >= 1 (got {self.runs})")
        if self.pp < 1 or self.tg < 1:
            raise ConfigError(f"--pp and --tg must be >= 1 (got pp={self.pp}, tg={self.tg})")
        if len(set(self.topologies)) != len(self.topologies):
            raise ConfigError(f"--topologies lists a topology twice: {', '.join(self.topologies)}")

    @property
    def loads(self) -> tuple[Load, ...]:
        return tuple(ClosedLoad(c) for c in self.concurrency)

    def bench_settings(self) -> BenchSettings:
        return BenchSettings(pp=self.pp, tg=self.tg, workload=self.workload, latency_mode=self.latency_mode,
                             request_timeout=self.request_timeout_s, seed=self.seed)

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
        return tuple(SweepCell(spec.workload, load, load.label, spec.runs) for load in spec.loads)
    # an open-loop point is one run of its schedule (as `vllm bench serve`); a closed one its test's runs
    return tuple(SweepCell(p.workload, p.load, p.label, 1 if p.open is not None else (p.runs or spec.runs), p)
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

    def cell_key(self, topology: str, cell: SweepCell) -> tuple[str, str, str]:
        """(topology, workload, load label): how the results folder keys the cell's rows."""
        return (topology, cell.workload, cell.label)

    def cells(self) -> list[tuple[str, str, str]]:
        return [self.cell_key(t.topology, cell) for t in self.topologies for cell in self.points]

    @property
    def total_runs(self) -> int:
        return len(self.topologies) * sum(cell.runs for cell in self.points)


def _with_twin_hardware(cluster: Cluster, hardware: str) -> Cluster:
    nodes = tuple(
        node.model_copy(update={"engine": node.engine.model_copy(update={"hardware": hardware})})
        if isinstance(node.engine, TwinEngine) else node
        for node in cluster.nodes
    )
    if not any(isinstance(n.engine, TwinEngine) for n in cluster.nodes):
        raise ConfigError(f"--twin-hardware {hardware}: cluster {cluster.name!r} has no twin engine to apply it to")
    return cluster.model_copy(update={"nodes": nodes})


def plan_sweep(spec: SweepSpec, *, secrets: PlanSecrets | None = None) -> SweepPlan:
    """Load the cluster and recipe and plan every topology. No I/O but reading the YAML files."""
    cluster = load_cluster(spec.cluster)
    if spec.twin_hardware:
        cluster = _with_twin_hardware(cluster, spec.twin_hardware)
    recipe = load_recipe(spec.model)
    secrets = secrets or PlanSecrets.generate()
    plans = tuple(
        TopologyPlan(name, plan(parse_topology(name), cluster, recipe, secrets=secrets)) for name in spec.topologies
    )
    suite = load_suites(spec.suite, spec.only, spec.dataset) if spec.suite else None
    return SweepPlan(spec, cluster, recipe, plans, suite, sweep_cells(spec, suite))


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
    measured_runs: int = 0


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

    def save_meta(self) -> None:
        self.folder.write_meta(self.meta)


async def _measure_topology(item: TopologyPlan, todo: list[tuple[SweepCell, int]], state: _Run) -> None:
    """Bring one topology up, measure its missing runs cell by cell, tear it down (always)."""
    spec = state.sweep.spec
    async with open_cluster(state.sweep.cluster) as nodes:
        async with bring_up(item.launch, nodes, progress=state.progress) as running:
            state.meta.startup_s[item.topology] = round(running.bring_up_s, 3)
            state.save_meta()
            state.progress.topology_up(item.topology, running.bring_up_s)
            api_key = running.endpoint_headers().get("Authorization", "").removeprefix("Bearer ") or None
            async with BenchSession(Endpoint.from_url(running.endpoint, api_key), item.launch.served_model_name,
                                    spec.bench_settings()) as session:
                for note in session.notes:
                    state.progress.note(f"{item.topology}: {note}")
                for cell, first_run in todo:
                    # a lost node or dead rank ends this topology with its log tail, not with cells of errors
                    await running.check_alive()
                    warnings = await _measure_cell(item.topology, cell, first_run, session, state)
                    state.meta.warnings.extend(f"{item.topology}: {w}" for w in warnings)
                    state.save_meta()
                    state.folder.compact()


async def _measure_cell(topology: str, cell: SweepCell, first_run: int, session: BenchSession,
                        state: _Run) -> list[str]:
    rows: list[dict[str, Any]] = []
    load = cell.load

    def on_run(done: RunDone) -> None:
        # Stored the moment it is measured: Ctrl-C or a crash in the next run loses nothing of this one.
        if not done.warmup and done.row is not None:
            state.folder.append(done.records, [done.row])
            rows.append(done.row)
            state.outcome.measured_runs += 1
        state.progress.run_done(topology, load, max(done.run, first_run), done.warmup)

    if cell.point is not None:
        result = await session.run_point(cell.point, cell.runs, topology=topology, first_run=first_run,
                                         rate_scale=state.sweep.spec.rate_scale, on_run=on_run)
    else:
        result = await session.run(load, cell.runs - first_run, topology=topology, first_run=first_run,
                                   on_run=on_run)
    state.progress.cell_done(topology, load, rows, result.warnings)
    return result.warnings


async def run_sweep(
    sweep: SweepPlan,
    directory: Path,
    progress: SweepProgress,
    *,
    command_line: Sequence[str] = (),
    resume: bool = False,
    on_topology_done: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Measure every missing run of the sweep into `directory`; see the module docstring."""
    folder = ResultsFolder(directory)
    if resume:
        meta = folder.read_meta()
        meta.resumed_at.append(now_utc())
        meta.status = "running"
        done = folder.runs_done()
    else:
        if folder.has_meta():
            raise ResultsError(f"{directory} already holds a sweep; resume it with --resume {directory} "
                               "or choose another --out")
        meta = new_meta(sweep, command_line)
        done = {}
    folder.write_meta(meta)

    runs_of = {sweep.cell_key(t.topology, cell): cell.runs for t in sweep.topologies for cell in sweep.points}
    already = sum(min(n, runs_of[key]) for key, n in done.items() if key in runs_of)
    progress.sweep_started(sweep.total_runs, already)
    state = _Run(sweep, folder, meta, progress, SweepOutcome(directory, "running"))
    status: Status = "failed"
    try:
        for item in sweep.topologies:
            stored = [(cell, done.get(sweep.cell_key(item.topology, cell), 0)) for cell in sweep.points]
            todo = [(cell, n) for cell, n in stored if n < cell.runs]
            if not todo:
                continue
            progress.topology_started(item.topology, [cell.load for cell, _ in todo])
            try:
                await _measure_topology(item, todo, state)
            except TopoError as exc:
                # One topology failing (a node that does not come up) must not cost the others' cells.
                state.outcome.errors[item.topology] = str(exc)
                meta.errors[item.topology] = str(exc)
                state.save_meta()
                progress.topology_failed(item.topology, exc)
            if on_topology_done:
                on_topology_done(item.topology)
        status = "incomplete" if state.outcome.errors else "complete"
    except (asyncio.CancelledError, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        folder.compact()
        state.outcome.status = status
        meta.status = status
        meta.finished_at = now_utc()
        state.save_meta()
    return state.outcome


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
