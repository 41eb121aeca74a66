"""Execute a LaunchPlan: pre-flight, start stage by stage, wait for readiness, and ALWAYS tear down.

    async with open_cluster(cluster) as nodes:
        async with bring_up(plan, nodes, progress=progress) as running:
            ... send load to running.endpoint ...
        # here every process of the plan is stopped, proven gone, its ports closed, its pidfile removed

Pre-flight (before anything starts): every node of the plan answers, none of the plan's ports is taken,
and no process of an earlier run is alive (its pidfile is still in the node's workdir/run/).
Each stage's steps start in parallel (files written first); the next stage starts when every probe of
this one passed. While waiting, every started process is checked alive on each poll: a dead one is a
BringUpError carrying its log tail at once (a proxy that exits looks like a slow one otherwise); a probe
that does not pass in its `timeout_s` is a ReadinessTimeout with the log tail.
Teardown runs on success, failure, timeout and cancellation (Ctrl-C), in `plan.teardown_order()`, one
step at a time, and is shielded from a further cancellation; what cannot be proven stopped is a
TeardownError (or, when something already failed, a note on that error).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from cluster.connector import Connector, LocalConnector, SshConnector, run_checked
from cluster.supervise import (
    StopOutcome,
    Supervised,
    foreign_note,
    listening_ports,
    live_groups,
    live_leftovers,
    log_tail,
    pidfile_state,
    prove_ports_closed,
    read_pidfiles,
    signal_group,
    step_paths,
    stop_group,
)
from common.errors import BringUpError, ConfigError, ReadinessTimeout, RemoteCommandError, TeardownError, TopoError
from topology.inventory import CONTROLLER, Cluster, LocalConnect
from topology.kinds import CONTAINER_LABEL
from topology.plan import (
    CommandProbe,
    HttpProbe,
    LaunchPlan,
    NoProbe,
    Stage,
    Step,
    StopByCommand,
    StopContainer,
    reveal,
)

CONTROLLER_WORKDIR = "/tmp/topo"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ---------------------------------------------------------------------------------------------------------
# Which node is reached how


@dataclass
class NodeAccess:
    name: str
    connector: Connector
    workdir: str  # logs/ and run/ (pidfiles) of supervised processes go here


class ClusterAccess(Mapping[str, NodeAccess]):
    """The nodes of a cluster (plus the controller) with their connectors; closes them all at the end."""

    def __init__(self, nodes: Mapping[str, NodeAccess]) -> None:
        self._nodes = dict(nodes)

    def __getitem__(self, name: str) -> NodeAccess:
        return self._nodes[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    async def close(self) -> None:
        await asyncio.gather(*(node.connector.close() for node in self._nodes.values()), return_exceptions=True)

    async def __aenter__(self) -> ClusterAccess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def open_cluster(cluster: Cluster) -> ClusterAccess:
    """Connectors for every node of the cluster and for the controller (connections open lazily)."""
    nodes: dict[str, NodeAccess] = {}
    for node in cluster.nodes:
        if isinstance(node.connect, LocalConnect):
            connector: Connector = LocalConnector(node.name)
        else:
            connector = SshConnector(node.name, node.connect)
        nodes[node.name] = NodeAccess(node.name, connector, node.workdir)
    controller_workdir = CONTROLLER_WORKDIR
    if cluster.proxy.node == CONTROLLER and cluster.proxy.workdir:
        controller_workdir = cluster.proxy.workdir
    nodes[CONTROLLER] = NodeAccess(CONTROLLER, LocalConnector(CONTROLLER), controller_workdir)
    return ClusterAccess(nodes)


# ---------------------------------------------------------------------------------------------------------
# Progress and settings


class BringUpProgress(Protocol):
    """Receives what happens, for a progress display; `step` is None for plan-wide events.
    `log_line`: the message is the latest line of a waiting step's log (transient, not a milestone)."""

    def event(self, step: str | None, message: str, *, log_line: bool = False) -> None: ...


class _Silent:
    def event(self, step: str | None, message: str, *, log_line: bool = False) -> None:
        return None


@dataclass(frozen=True)
class BringUpSettings:
    poll_s: float = 0.5  # between readiness attempts and liveness checks
    log_every_s: float = 2.0  # how often the last log line of a waiting step is shown
    probe_request_s: float = 5.0  # one HTTP probe request
    command_timeout_s: float = 60.0  # one command on a node (probe, ps, ss)
    prove_s: float = 15.0  # after KILL: how long the group and ports may take to vanish
    stop_grace_s: float | None = None  # overrides every step's grace (tests); None: the plan's


@dataclass
class Running:
    """A topology that is up. Durations are wall-clock seconds measured by the controller."""

    plan: LaunchPlan
    processes: dict[str, Supervised]
    bring_up_s: float  # pre-flight start to the last probe passing: the topology's start-up time
    ready_s: dict[str, float]  # per step: from its stage's start to its probe passing
    stopped: list[StopOutcome] = field(default_factory=list)
    teardown_s: float | None = None
    _bringup: _BringUp | None = field(default=None, repr=False)

    async def check_alive(self) -> None:
        """BringUpError (with the log tail) if any process of the topology has died since it came up:
        call it between load runs, so a crashed rank is not measured as a slow one."""
        if self._bringup is not None:
            await self._bringup.check_alive()

    @property
    def endpoint(self) -> str:
        return self.plan.endpoint

    def endpoint_headers(self) -> dict[str, str]:
        """Headers for clients, secrets revealed (the LiteLLM master key): never print these."""
        return {key: reveal(value) for key, value in self.plan.endpoint_headers.items()}


@dataclass
class KeptProcesses:
    """Processes a bring-up left running for the next one (a Ray cluster kept up, topology/ray_reuse.py),
    with the steps that started them: their `stop` is what stops them, whoever adopts them."""

    source: str  # the topology whose bring-up kept them
    steps: tuple[Step, ...]  # as they were started (an adopted one: by the topology that started it)
    processes: dict[str, Supervised]  # by step name


@dataclass
class Handover:
    """Between consecutive bring-ups: processes this one adopts instead of starting them (`adopt`), and the
    steps it leaves running when its block ends cleanly (`keep`; then `kept` holds them). On any failure or
    cancellation everything, adopted processes included, is torn down as usual."""

    adopt: KeptProcesses | None = None
    keep: frozenset[str] = frozenset()
    kept: KeptProcesses | None = None


# ---------------------------------------------------------------------------------------------------------
# The bring-up


class _BringUp:
    def __init__(
        self,
        plan: LaunchPlan,
        nodes: Mapping[str, NodeAccess],
        progress: BringUpProgress,
        settings: BringUpSettings,
        http_transport: httpx.AsyncBaseTransport | None,
        adopt: KeptProcesses | None = None,
    ) -> None:
        self.plan = plan
        self.nodes = nodes
        self.progress = progress
        self.settings = settings
        self.http_transport = http_transport
        self.started: dict[str, Supervised] = {}
        self.launching: set[str] = set()  # start() was called; its pid may not have come back yet
        self.ready_s: dict[str, float] = {}
        self.stopped: list[StopOutcome] = []
        self.phase = "during bring-up"
        self._steps = {step.name: step for step in plan.steps()}
        # adopted processes: running already, stopped by the step that started them
        self.adopted: dict[str, Step] = {step.name: step for step in adopt.steps} if adopt is not None else {}
        if adopt is not None:
            self.started.update(adopt.processes)
        self.keeping: dict[str, Supervised] = {}  # left running for the next bring-up at a clean end

    def node(self, step: Step) -> NodeAccess:
        return self.nodes[step.node]

    # -- pre-flight ----------------------------------------------------------------------------------
    async def preflight(self) -> None:
        used = sorted({step.node for step in self.plan.steps()})
        unknown = [name for name in used if name not in self.nodes]
        if unknown:
            raise ConfigError(
                f"the plan runs steps on {', '.join(unknown)}, which the cluster does not have "
                f"(it has {', '.join(self.nodes)})"
            )
        self.progress.event(None, f"pre-flight: {', '.join(used)}")
        await asyncio.gather(*(self._preflight_node(self.nodes[name]) for name in used))

    async def _preflight_node(self, node: NodeAccess) -> None:
        timeout = self.settings.command_timeout_s
        await run_checked(node.connector, ["true"], timeout=timeout)  # reachable (ConnectError otherwise)
        adopted = {p.pidfile for name, p in self.started.items() if name in self.adopted and p.node == node.name}
        stale = await live_leftovers(node.connector, node.workdir, remove_stale=True, except_pidfiles=adopted)
        if stale:
            raise BringUpError(
                f"node {node.name!r} still runs processes of an earlier topo run: {'; '.join(stale)}. "
                "Stop them with `topo down --cluster ...` first"
            )
        for step in self.plan.steps():
            if step.node == node.name and isinstance(step.stop, StopContainer) and step.name not in self.adopted:
                found = await run_checked(node.connector, step.stop.exists_argv(), timeout=timeout)
                if found.stdout.strip():
                    raise BringUpError(
                        f"node {node.name!r}: a container named {step.stop.container} already exists (an earlier "
                        f"run's?); remove it with `{' '.join(step.stop.remove_argv())}` or `topo down`"
                    )
        wanted = {port for step in self.plan.steps() if step.node == node.name and step.name not in self.adopted
                  for port in step.stop.ports}
        busy = sorted(wanted & await listening_ports(node.connector))
        if busy:
            raise BringUpError(
                f"node {node.name!r}: port(s) {', '.join(map(str, busy))} the plan needs are already in use"
            )

    # -- starting ------------------------------------------------------------------------------------
    async def start_stage(self, stage: Stage) -> None:
        results = await asyncio.gather(*(self._start_step(step) for step in stage.steps), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _start_step(self, step: Step) -> None:
        if step.name in self.adopted:
            self.progress.event(step.name, f"kept up on {step.node}")
            return
        node = self.node(step)
        for path, text in step.files.items():
            await node.connector.write_file(path, text)
        paths = step_paths(node.workdir, step.name)
        self.launching.add(step.name)
        self.progress.event(step.name, f"starting on {step.node}")
        try:
            pgid = await node.connector.start(step.argv, env=step.env, log_path=paths.log, pidfile=paths.pidfile)
        except RemoteCommandError as exc:
            raise BringUpError(f"{step.name} could not be started on node {step.node!r}: {exc}") from exc
        self.started[step.name] = Supervised(step.name, step.node, pgid, paths.log, paths.pidfile)

    # -- readiness -----------------------------------------------------------------------------------
    async def wait_stage(self, stage: Stage, stage_started: float) -> None:
        pending = {step.name: step for step in stage.steps
                   if not isinstance(step.probe, NoProbe) and step.name not in self.adopted}
        for step in stage.steps:
            if isinstance(step.probe, NoProbe) or step.name in self.adopted:
                self.ready_s[step.name] = 0.0
        last_log = 0.0
        async with httpx.AsyncClient(transport=self.http_transport, trust_env=False) as client:
            while True:
                await self.check_alive()
                if not pending:
                    return
                attempts = await asyncio.gather(*(self._probe_once(client, step) for step in pending.values()))
                now = time.monotonic()
                for step, passed in zip(list(pending.values()), attempts):
                    if passed:
                        self.ready_s[step.name] = now - stage_started
                        self.progress.event(step.name, f"ready after {now - stage_started:.1f} s")
                        del pending[step.name]
                for step in pending.values():
                    timeout_s = step.probe.timeout_s  # type: ignore[union-attr]
                    if now - stage_started > timeout_s:
                        process = self.started[step.name]
                        tail = await log_tail(self.node(step).connector, process.log_path)
                        raise ReadinessTimeout(
                            f"{step.name} on node {step.node!r} did not pass its readiness probe "
                            f"({_describe_probe(step)}) within {timeout_s:g} s; its log ends with:\n{tail}"
                        )
                if pending and now - last_log >= self.settings.log_every_s:
                    last_log = now
                    await self._show_log_lines(pending.values())
                if pending:
                    await asyncio.sleep(self.settings.poll_s)

    async def check_alive(self) -> None:
        """Every started process must still be running: one `ps` per node."""
        by_node: dict[str, list[Supervised]] = {}
        for process in self.started.values():
            by_node.setdefault(process.node, []).append(process)
        names = list(by_node)
        groups = await asyncio.gather(*(live_groups(self.nodes[name].connector) for name in names))
        for name, alive in zip(names, groups):
            for process in by_node[name]:
                if process.pgid not in alive:
                    tail = await log_tail(self.nodes[name].connector, process.log_path)
                    raise BringUpError(
                        f"{process.step} on node {name!r} exited {self.phase}; its log ends with:\n{tail}"
                    )

    async def _probe_once(self, client: httpx.AsyncClient, step: Step) -> bool:
        probe = step.probe
        if isinstance(probe, HttpProbe):
            headers = {key: reveal(value) for key, value in probe.headers.items()}
            for url in probe.urls:
                try:
                    response = await client.get(url, headers=headers, timeout=self.settings.probe_request_s)
                except httpx.HTTPError:
                    return False  # not listening yet, or busy loading: keep waiting
                if not response.is_success:
                    return False
            return True
        if isinstance(probe, CommandProbe):
            try:
                done = await self.node(step).connector.run(probe.argv, timeout=self.settings.command_timeout_s)
            except RemoteCommandError:
                return False  # e.g. timed out: the next attempt decides
            if not done.ok:
                return False
            return probe.satisfied_by(done.stdout + done.stderr)
        return True

    async def _show_log_lines(self, steps) -> None:  # type: ignore[no-untyped-def]
        for step in steps:
            process = self.started[step.name]
            line = _ANSI_ESCAPE.sub("", await log_tail(self.node(step).connector, process.log_path, lines=1)).strip()
            if line and not line.startswith("(log "):
                self.progress.event(step.name, line if len(line) <= 160 else line[:159] + "…", log_line=True)

    # -- teardown ------------------------------------------------------------------------------------
    async def teardown(self, keep: Collection[str] = ()) -> list[str]:
        """Stop everything started, in the plan's teardown order, except the started steps named in `keep`
        (left running in `self.keeping`); returns the problems (empty: clean)."""
        problems: list[str] = []
        self.keeping = {name: process for name, process in self.started.items() if name in keep}
        for step in self.plan.teardown_order():
            if step.name in self.keeping:
                self.progress.event(step.name, f"kept up on {step.node} for the next topology")
                continue
            if step.name not in self.started and step.name not in self.launching:
                continue
            step = self.adopted.get(step.name, step)
            try:
                process = self.started.get(step.name) or await self._recover(step)
                if process is None:
                    continue
                self.progress.event(step.name, f"stopping on {step.node}")
                outcome = await self._stop(step, process)
                self.stopped.append(outcome)
                self.progress.event(step.name, f"stopped in {outcome.seconds:.1f} s" + (" (KILL)" if outcome.killed else ""))
            except TopoError as exc:
                problems.append(str(exc))
        problems.extend(await self._leftovers())
        return problems

    async def _recover(self, step: Step) -> Supervised | None:
        """A step cancelled while starting: its pidfile (written by the node's shell) still names it."""
        node = self.node(step)
        paths = step_paths(node.workdir, step.name)
        for entry in await read_pidfiles(node.connector, node.workdir):
            if entry.step == step.name and entry.pgid is not None:
                return Supervised(step.name, step.node, entry.pgid, paths.log, paths.pidfile)
        return None

    async def _stop(self, step: Step, process: Supervised) -> StopOutcome:
        connector = self.node(step).connector
        stop = step.stop
        grace = self.settings.stop_grace_s
        if isinstance(stop, StopContainer):
            return await self._stop_container(step, stop, process)
        if isinstance(stop, StopByCommand):
            started = time.monotonic()
            done = await connector.run(stop.argv, timeout=self.settings.command_timeout_s)
            if not done.ok:
                self.progress.event(step.name, f"stop command exited {done.exit_status}: {done.output_tail(200)}")
            # the supervised launcher (e.g. `docker run`) may still be alive: stop its group too
            outcome = await stop_group(
                connector, process, grace_s=grace or 10.0, ports=stop.ports, prove_s=self.settings.prove_s
            )
            return StopOutcome(step.name, step.node, process.pgid, outcome.killed, time.monotonic() - started)
        return await stop_group(
            connector,
            process,
            grace_s=grace if grace is not None else stop.grace_s,
            ports=stop.ports,
            prove_s=self.settings.prove_s,
        )

    async def _stop_container(self, step: Step, stop: StopContainer, process: Supervised) -> StopOutcome:
        """`docker stop` (the engine's own TERM-then-KILL), `docker rm -f`, the name proven gone; the
        foreground `docker run` we supervise then exits by itself (its group is stopped if it does not)."""
        connector = self.node(step).connector
        grace = self.settings.stop_grace_s if self.settings.stop_grace_s is not None else stop.grace_s
        stop = stop.model_copy(update={"grace_s": grace})
        started = time.monotonic()
        timeout = self.settings.command_timeout_s + grace
        stopped = await connector.run(stop.stop_argv(), timeout=timeout)
        removed = await connector.run(stop.remove_argv(), timeout=self.settings.command_timeout_s)
        left = await connector.run(stop.exists_argv(), timeout=self.settings.command_timeout_s)
        if not left.ok or left.stdout.strip():
            detail = (removed.output_tail(200) or stopped.output_tail(200)) if left.ok else left.output_tail(200)
            raise TeardownError(f"{step.name} on node {step.node!r}: container {stop.container} is not gone ({detail})")
        outcome = await stop_group(connector, process, grace_s=10.0, ports=stop.ports, prove_s=self.settings.prove_s)
        return StopOutcome(step.name, step.node, process.pgid, outcome.killed, time.monotonic() - started)

    async def _leftovers(self) -> list[str]:
        """Checked, not assumed: no group of ours alive on any node, no pidfile of ours left."""
        problems: list[str] = []
        ours: dict[str, list[Supervised]] = {}
        for name, process in self.started.items():
            if name in self.keeping:
                continue
            ours.setdefault(process.node, []).append(process)
        for name, processes in ours.items():
            connector = self.nodes[name].connector
            try:
                alive = await live_groups(connector)
                pidfiles = {entry.pidfile for entry in await read_pidfiles(connector, self.nodes[name].workdir)}
            except TopoError as exc:
                problems.append(f"node {name!r}: cannot check what is left: {exc}")
                continue
            for process in processes:
                if process.pgid in alive:
                    problems.append(f"{process.step} on node {name!r}: process group {process.pgid} is still alive")
                if process.pidfile in pidfiles:
                    problems.append(f"{process.step} on node {name!r}: pidfile {process.pidfile} is still there")
        return problems


def _describe_probe(step: Step) -> str:
    probe = step.probe
    if isinstance(probe, HttpProbe):
        return "GET " + ", then ".join(probe.urls)
    if isinstance(probe, CommandProbe):
        expect = f" showing {probe.expect_in_output!r}" if probe.expect_in_output else ""
        if probe.expect_pattern:
            expect += f" matching {probe.expect_pattern!r} at least {probe.expect_min_matches} time(s)"
        return f"`{' '.join(probe.argv)}`{expect}"
    return "none"


async def _finish(coroutine) -> tuple[object, bool]:  # type: ignore[no-untyped-def]
    """Run `coroutine` to completion even if we are cancelled meanwhile; say whether we were."""
    task = asyncio.ensure_future(coroutine)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True  # a second Ctrl-C must not leave engines running: finish first


@asynccontextmanager
async def bring_up(
    plan: LaunchPlan,
    nodes: Mapping[str, NodeAccess],
    *,
    progress: BringUpProgress | None = None,
    settings: BringUpSettings | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
    handover: Handover | None = None,
) -> AsyncIterator[Running]:
    """Bring `plan` up on `nodes`; tear it down when the block ends, however it ends (but for what a
    `handover` adopts from the previous bring-up and keeps for the next: see Handover)."""
    settings = settings or BringUpSettings()
    adopt = handover.adopt if handover is not None else None
    bringup = _BringUp(plan, nodes, progress or _Silent(), settings, http_transport, adopt)
    began = time.monotonic()
    try:
        await bringup.preflight()  # nothing started yet: nothing to tear down if it fails ...
    except BaseException:
        if adopt is not None:  # ... but what was adopted from the previous bring-up
            await _finish(bringup.teardown())
        raise
    running: Running | None = None
    failure: BaseException | None = None
    try:
        for index, stage in enumerate(plan.stages):
            stage_started = time.monotonic()
            bringup.progress.event(None, f"stage {index + 1}/{len(plan.stages)}: {', '.join(s.name for s in stage.steps)}")
            await bringup.start_stage(stage)
            await bringup.wait_stage(stage, stage_started)
        running = Running(plan, dict(bringup.started), time.monotonic() - began, dict(bringup.ready_s), _bringup=bringup)
        bringup.progress.event(None, f"{plan.topology} is up after {running.bring_up_s:.1f} s")
        bringup.phase = "while the topology was up"
        yield running
    except BaseException as exc:
        failure = exc
        raise
    finally:
        teardown_began = time.monotonic()
        keep = handover.keep if handover is not None and failure is None else frozenset()
        if keep and handover is not None:
            # recorded before anything is stopped: whoever holds the handover can always stop them
            steps = tuple(bringup.adopted.get(s.name, s) for s in plan.steps() if s.name in keep)
            handover.kept = KeptProcesses(plan.topology, steps,
                                          {name: p for name, p in bringup.started.items() if name in keep})
        problems, cancelled = await _finish(bringup.teardown(keep))
        if running is not None:
            running.stopped = list(bringup.stopped)
            running.teardown_s = time.monotonic() - teardown_began
        bringup.progress.event(None, f"torn down in {time.monotonic() - teardown_began:.1f} s")
        if problems:
            message = "teardown left something behind:\n" + "\n".join(f"- {p}" for p in problems)  # type: ignore[union-attr]
            if failure is not None:
                failure.add_note(message)
            else:
                raise TeardownError(message)
        if cancelled and failure is None:
            raise asyncio.CancelledError()


@dataclass
class Leftovers:
    """What `topo down` did: the groups it stopped, and the pidfiles it refused to act on."""

    stopped: list[StopOutcome]
    foreign: list[str]  # one sentence each: which pidfile, why, what to do
    containers: list[str] = field(default_factory=list)  # "node: name" of each container removed


async def stop_leftovers(nodes: Mapping[str, NodeAccess], *, grace_s: float = 30.0) -> Leftovers:
    """`topo down`: stop every process an earlier run left behind (found by its pidfile) on every node.
    Only a group whose leader is provably the process topo started is signalled; a pidfile whose pid now
    belongs to someone else (or that carries no identity) is reported and kept, never acted on."""
    result = Leftovers([], [])
    for name, node in nodes.items():
        for entry in await read_pidfiles(node.connector, node.workdir):
            state = await pidfile_state(node.connector, entry)
            if state == "gone":
                await node.connector.run(["rm", "-f", entry.pidfile])
            elif state == "foreign":
                result.foreign.append(foreign_note(name, entry))
            else:
                assert entry.pgid is not None
                paths = step_paths(node.workdir, entry.step)
                process = Supervised(entry.step, name, entry.pgid, paths.log, entry.pidfile)
                result.stopped.append(await stop_group(node.connector, process, grace_s=grace_s))
    return result


async def remove_leftover_containers(cluster: Cluster, nodes: Mapping[str, NodeAccess]) -> list[str]:
    """`topo down` for the docker launcher: every container topo started for this cluster (found by its
    label) is removed, running or not; returns "node: name" of each."""
    removed = []
    for node in cluster.nodes:
        if node.engine.launcher != "docker":
            continue
        connector = nodes[node.name].connector
        docker = node.engine.docker
        listed = await run_checked(connector, [docker, "ps", "-a", "--filter",
                                               f"label={CONTAINER_LABEL}={cluster.name}", "--format", "{{.Names}}"])
        for name in listed.stdout.split():
            await run_checked(connector, [docker, "rm", "-f", name], timeout=120)
            removed.append(f"{node.name}: {name}")
    return removed


async def stop_kept(kept: KeptProcesses, plan: LaunchPlan, nodes: Mapping[str, NodeAccess], *,
                    progress: BringUpProgress | None = None, settings: BringUpSettings | None = None) -> list[str]:
    """Stop processes a bring-up of `plan` kept up and nobody adopted, as its teardown would have, and prove
    them gone; returns the problems (empty: clean). Shielded from cancellation like every teardown."""
    only_kept = plan.model_copy(update={"stages": (Stage(steps=kept.steps),)})
    bringup = _BringUp(only_kept, nodes, progress or _Silent(), settings or BringUpSettings(), None)
    bringup.started.update(kept.processes)
    problems, cancelled = await _finish(bringup.teardown())
    if cancelled:
        if problems:
            raise TeardownError("teardown left something behind:\n" + "\n".join(f"- {p}" for p in problems))
        raise asyncio.CancelledError()
    return problems


__all__ = [
    "BringUpProgress",
    "BringUpSettings",
    "Handover",
    "KeptProcesses",
    "stop_kept",
    "Leftovers",
    "ClusterAccess",
    "NodeAccess",
    "Running",
    "bring_up",
    "open_cluster",
    "prove_ports_closed",
    "remove_leftover_containers",
    "signal_group",
    "stop_leftovers",
]
