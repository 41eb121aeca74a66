"""The fault matrix's two faults that need real nodes: on the namespace test bed (root), a sweep of tp2-mp
then solo loses, right after a stored run,
- - the rank-1 engine on node2 (its process group killed), or
- node2's SSH connections (the per-connection sshd processes killed; the listening sshd stays): the
  controller connects again and nothing is lost (exit 0), or
- node2 itself for a while (its veth down once c1 is measured, up again when the teardown begins).
The lost rank and the lost node assert: the runs stored before are kept, the failure is recorded (naming
what failed), the next topology is still measured, the outcome is the documented exit 3 (a topology
failed, results written), and no process of the run is left on any node.

The sweep runs in this process (`run_sweep`) so the fault is injected from its progress callback, at a
known point (after the first stored run, before the next one starts), not by a sleep racing it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bench.results_folder import ResultsFolder, cell_progress
from cluster.testbed import Testbed, TestbedNode, missing_requirements
from common.errors import TopoError
from tests.cluster.bed_support import bed_on_a_free_slot, foreign_processes, node_processes
from topo.sweep import SweepOutcome, SweepSpec, plan_sweep, run_sweep

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(bool(missing_requirements()), reason="; ".join(missing_requirements()) or "ok"),
]

FAULTY, NEXT = "tp2-mp", "solo"  # the fault hits the first topology; the second must still be measured
LOADS = (1, 2)  # a second cell: its start checks the topology's liveness whatever the first cell saw


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    with bed_on_a_free_slot() as built:
        yield built


class FaultAfterRuns:
    """A sweep progress that calls `fault` once, right after the `after`-th measured run of `topology` is
    stored (before the next run or cell starts)."""

    def __init__(self, topology: str, fault: Callable[[], None], repair: Callable[[], None] | None = None,
                 after: int = 1) -> None:
        self.topology, self.fault, self.after, self.fired = topology, fault, after, False
        self.repair = repair  # called once, when the teardown of the topology begins
        self.failed: dict[str, str] = {}

    def run_done(self, topology: str, load: Any, run: int, warmup: bool) -> None:
        if topology == self.topology and not warmup and not self.fired:
            self.after -= 1
            if self.after > 0:
                return
            self.fired = True
            self.fault()

    def topology_failed(self, topology: str, error: TopoError) -> None:
        self.failed[topology] = str(error)

    def event(self, step: str | None, message: str, *, log_line: bool = False) -> None:
        if self.fired and self.repair is not None and message.startswith("stopping on "):
            repair, self.repair = self.repair, None
            repair()

    def sweep_started(self, total_runs: int, already_done: int) -> None: ...
    def topology_started(self, topology: str, loads: Sequence[Any]) -> None: ...
    def topology_up(self, topology: str, startup_s: float) -> None: ...
    def cell_done(self, topology: str, load: Any, rows: list[dict[str, Any]], warnings: list[str]) -> None: ...
    def note(self, message: str) -> None: ...


def sweep_with_fault(bed: Testbed, out: Path, fault: Callable[[], None], repair: Callable[[], None] | None = None,
                     after: int = 1, **options: Any) -> tuple[SweepOutcome, FaultAfterRuns]:
    spec = SweepSpec(cluster=bed.cluster_yaml, model="tiny", topologies=(FAULTY, NEXT), concurrency=LOADS, runs=2,
                     pp=64, tg=16, twin_hardware="fast")
    progress = FaultAfterRuns(FAULTY, fault, repair, after)
    outcome = asyncio.run(run_sweep(plan_sweep(spec), out, progress, **options))
    assert progress.fired, "the sweep stored no run of the faulty topology"
    return outcome, progress


def node(bed: Testbed, name: str) -> TestbedNode:
    return next(n for n in bed.nodes if n.name == name)


def assert_the_fault_cost_only_its_topology(outcome: SweepOutcome, progress: FaultAfterRuns, out: Path,
                                            names: str) -> None:
    # exit 3 in `topo sweep`: a topology failed, the results are written (topo/commands/sweep.py)
    assert outcome.status == "incomplete" and set(outcome.errors) == {FAULTY}, outcome.errors
    assert names in outcome.errors[FAULTY], outcome.errors[FAULTY]
    assert progress.failed == outcome.errors
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "incomplete" and meta["errors"] == outcome.errors
    progress_of = cell_progress(ResultsFolder(out).read_cells())
    assert progress_of[(FAULTY, "default", "c1")].measured >= 1  # the run stored before the fault is kept
    assert all(progress_of[(NEXT, "default", f"c{c}")].measured == 2 for c in LOADS), progress_of  # measured


def test_a_headless_rank_killed_mid_cell_costs_only_its_topology(bed: Testbed, tmp_path: Path) -> None:
    node2 = node(bed, "node2")
    pidfile = Path(node2.workdir) / "run" / "engine-rank1.pid"

    def kill_rank1() -> None:
        ns_pgid = int(pidfile.read_text().splitlines()[0])  # a pid in node2's own PID namespace
        (leader,) = [here for here, there, _ in node_processes(node2) if there == ns_pgid]
        os.killpg(leader, signal.SIGKILL)  # the group leader's pid here is the group's id here

    out = tmp_path / "results"
    outcome, progress = sweep_with_fault(bed, out, kill_rank1)
    assert_the_fault_cost_only_its_topology(outcome, progress, out, "engine-rank1")
    assert "node2" in outcome.errors[FAULTY]
    assert foreign_processes(bed) == {}  # nothing of either topology is left on any node
    assert not list(Path(bed.directory).rglob("run/*.pid"))


def test_dropped_ssh_connections_to_a_reachable_node_are_opened_again_and_cost_nothing(bed: Testbed,
                                                                                      tmp_path: Path) -> None:
    node2 = node(bed, "node2")
    dropped: list[str] = []

    def drop_node2_connections() -> None:
        # every sshd but the listener (PID 1 of the node) serves one of the controller's connections
        for here, there, args in node_processes(node2):
            if there != 1 and args.startswith("sshd"):
                os.kill(here, signal.SIGKILL)
                dropped.append(args)

    out = tmp_path / "results"
    outcome, _ = sweep_with_fault(bed, out, drop_node2_connections)
    assert dropped, "no SSH connection to node2 was open"
    # the engines never noticed; the controller connects again on its next command: exit 0, all measured
    assert outcome.status == "complete" and outcome.errors == {} and outcome.short_cells == [], outcome
    progress_of = cell_progress(ResultsFolder(out).read_cells())
    assert all(progress_of[(t, "default", f"c{c}")].measured == 2 for t in (FAULTY, NEXT) for c in LOADS)
    assert foreign_processes(bed) == {}
    assert not list(Path(bed.directory).rglob("run/*.pid"))


@pytest.mark.slow  # ~50 s: the liveness check on the lost node times out (30 s)
def test_a_node_unreachable_mid_sweep_costs_only_its_topology(bed: Testbed, tmp_path: Path) -> None:
    node2 = node(bed, "node2")

    def link(state: str) -> None:
        subprocess.run(["ip", "link", "set", node2.host_link, state], check=True)

    out = tmp_path / "results"
    try:
        # node2's cable out once c1 is measured, back in when the teardown begins: the next cell's liveness
        # check over SSH times out (30 s), which ends the topology; the teardown reaches node2 again. Without the watchdog: it is another detector (tests/topo/test_watchdog.py), and
        # here it would race the liveness check.
        outcome, progress = sweep_with_fault(bed, out, lambda: link("down"), lambda: link("up"), after=2,
                                             watchdog=None)
    finally:
        link("up")
    assert progress.repair is None, "the teardown never began"
    assert_the_fault_cost_only_its_topology(outcome, progress, out, "node2")
    assert "timed out after 30 s" in outcome.errors[FAULTY]  # the liveness check, bounded by its timeout
    assert foreign_processes(bed) == {}  # the teardown reached node2 again: nothing is left
    assert not list(Path(bed.directory).rglob("run/*.pid"))
