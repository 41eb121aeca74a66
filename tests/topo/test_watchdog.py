"""The sweep's watchdog: the decision in memory, the polling against a mock server, and a real hang: the
twin stops stepping mid-cell, the sweep records the incident, restarts the topology once, retries the cell
and completes, and the report names the incident."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from bench.client import StreamActivity
from common.errors import ConfigError, TopologyHung
from tests.support.local_cluster import write_local_cluster
from topo.sweep import _watched
from topo.watchdog import HangDetector, WatchdogSettings, engine_health_urls, token_counter_total, watch
from topology.inventory import load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.recipe import load_recipe
from twin.engine import StepDescription
from twin.server import twin_version
from twin.hang_fault import HANG_AFTER_ENV, HANG_ONCE_ENV, HangFault, hang_fault_from_env

SETTINGS = WatchdogSettings(stall_s=10, health_every_s=1, health_failures=3, metrics_stall_s=20, poll_s=0.01)


# --- the decision ----------------------------------------------------------------------------------------


def test_no_token_for_the_stall_limit_is_a_hang_only_with_requests_in_flight() -> None:
    detector = HangDetector(SETTINGS)
    assert detector.tokens(now=109.9, in_flight=4, last_data=100.0) is None
    assert detector.tokens(now=200.0, in_flight=0, last_data=100.0) is None  # idle between cells: fine
    assert detector.tokens(now=110.0, in_flight=4, last_data=100.0) == (
        "no token on any of 4 in-flight request(s) for 10 s (limit 10 s)")


def test_health_must_fail_several_times_in_a_row() -> None:
    detector = HangDetector(SETTINGS)
    url = "http://127.0.0.1:8000/health"
    assert detector.health(url, False, "HTTP 503") is None
    assert detector.health(url, False, "HTTP 503") is None
    assert detector.health(url, True) is None  # a success resets the count
    assert detector.health(url, False) is None and detector.health(url, False) is None
    assert detector.health(url, False, "ConnectError") == f"{url} failed 3 times in a row (ConnectError)"


def test_metrics_that_stop_moving_under_load_are_a_hang() -> None:
    detector = HangDetector(SETTINGS)
    assert detector.metrics(0.0, 2, 500.0) is None
    assert detector.metrics(15.0, 2, 900.0) is None  # moved: the clock restarts
    assert detector.metrics(30.0, 2, 900.0) is None
    assert detector.metrics(34.0, 0, 900.0) is None  # nothing in flight: standing still is normal
    assert detector.metrics(40.0, 2, 900.0) is None
    assert detector.metrics(53.9, 2, 900.0) is None
    assert "stayed at 900 for 20 s with 2 request(s) in flight" in detector.metrics(54.0, 2, 900.0)
    assert HangDetector(SETTINGS).metrics(1000.0, 2, None) is None  # no counters: no opinion


def test_token_counters_are_summed_from_prometheus_text() -> None:
    page = ('# HELP vllm:prompt_tokens_total x\nvllm:prompt_tokens_total{model_name="m"} 1024.0\n'
            'vllm:generation_tokens_total{model_name="m"} 128.0\nvllm:num_requests_running{model_name="m"} 3.0\n')
    assert token_counter_total(page) == 1152.0
    assert token_counter_total("# nothing\nother_metric 1\n") is None


def test_health_urls_are_the_serving_engines_probes() -> None:
    cluster = load_cluster("local-twin")
    launch = plan(parse_topology("2x-solo-shuffle"), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    assert engine_health_urls(launch) == ["http://127.0.0.1:8000/health", "http://127.0.0.1:8001/health"]
    tp = plan(parse_topology("tp2-mp"), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    assert engine_health_urls(tp) == ["http://127.0.0.1:8000/health"]  # the headless rank serves no HTTP


# --- polling, against a mock engine ----------------------------------------------------------------------


async def test_watch_returns_the_failing_health_with_requests_still_streaming() -> None:
    launch = plan(parse_topology("solo"), load_cluster("local-twin"), load_recipe("tiny"),
                  secrets=PlanSecrets.generate())
    seen: list[str] = []

    def engine(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(503) if request.url.path == "/health" else httpx.Response(404)

    activity = StreamActivity()
    reason = await asyncio.wait_for(
        watch(launch, lambda: activity, WatchdogSettings(stall_s=1e6, health_every_s=0.01, poll_s=0.01),
              transport=httpx.MockTransport(engine)), timeout=10)
    assert reason == "http://127.0.0.1:8000/health failed 3 times in a row (HTTP 503)"
    assert seen.count("/health") == 3


async def test_watch_sees_a_token_stall() -> None:
    launch = plan(parse_topology("solo"), load_cluster("local-twin"), load_recipe("tiny"),
                  secrets=PlanSecrets.generate())
    ok = httpx.MockTransport(lambda request: httpx.Response(200, text="vllm:generation_tokens_total 5\n"))
    activity = StreamActivity()
    activity.started()
    reason = await asyncio.wait_for(watch(launch, lambda: activity, WatchdogSettings(stall_s=0.2, poll_s=0.01),
                                          transport=ok), timeout=10)
    assert reason.startswith("no token on any of 1 in-flight request(s)")


async def test_watched_work_wins_or_is_cancelled_when_the_watchdog_fires() -> None:
    async def forever() -> str:
        await asyncio.Event().wait()
        return "never"

    async def quick() -> None:
        await asyncio.sleep(0)

    await _watched(quick(), forever())  # the work ends first: no error, the watchdog is cancelled
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def bark() -> str:
        await asyncio.sleep(0.01)
        return "no token for a while"

    with pytest.raises(TopologyHung, match="no token for a while"):
        await _watched(stuck(), bark())
    assert cancelled.is_set()

    async def broken() -> None:
        raise ValueError("the work's own error")

    with pytest.raises(ValueError, match="own error"):
        await _watched(broken(), forever())


# --- the twin's fault knob -------------------------------------------------------------------------------


async def test_hang_fault_passes_steps_until_due_then_blocks_and_only_once(tmp_path: Path) -> None:
    now = [0.0]
    passed: list[int] = []

    async def inner(step: StepDescription) -> None:
        passed.append(1)

    once = tmp_path / "hung-once"
    fault = HangFault(5.0, inner, once, clock=lambda: now[0])
    step = StepDescription.__new__(StepDescription)
    await fault(step)
    now[0] = 4.9
    await fault(step)
    now[0] = 5.0
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(fault(step), timeout=0.1)
    assert passed == [1, 1] and fault.hung and once.exists()
    again = HangFault(0.0, inner, once, clock=lambda: now[0])  # a restarted twin: the file says it hung
    await again(step)
    assert passed == [1, 1, 1] and not again.hung


def test_hang_fault_from_env_is_off_by_default_and_checks_its_value(tmp_path: Path) -> None:
    async def inner(step: StepDescription) -> None:
        return None

    assert hang_fault_from_env(inner, {}) is inner
    fault = hang_fault_from_env(inner, {HANG_AFTER_ENV: "2.5", HANG_ONCE_ENV: str(tmp_path / "x")})
    assert isinstance(fault, HangFault) and fault.after_s == 2.5 and fault.once_file == tmp_path / "x"
    with pytest.raises(ConfigError, match="TWIN_FAULT_HANG_AFTER_S='soon'"):
        hang_fault_from_env(inner, {HANG_AFTER_ENV: "soon"})


# --- a real hang in a sweep ------------------------------------------------------------------------------


def test_twin_hangs_mid_cell_and_the_sweep_recovers_retries_once_and_completes(tmp_path: Path) -> None:
    cluster = write_local_cluster(tmp_path / "cluster")
    data = yaml.safe_load(cluster.read_text())
    hung_once = tmp_path / "hung-once"
    # The engine stops stepping 0.5 s after its first step. The twin sleeps each step's modeled time, so the
    # 2 x 4 batches of c=1,2 (warm-up + 3 runs each) take ~1 s of stepping on any machine, more on a slow one;
    # a hang is checked at a step, so it always falls inside a cell. A restart serves normally. The stall
    # limit (5 s) is far above any real gap between tokens here, also when the shared machine is busy: a
    # tighter one (2 s) failed once in a long run on the loaded machine, most likely by a spurious second stall.
    data["nodes"][0]["env"] = {HANG_AFTER_ENV: "0.5", HANG_ONCE_ENV: str(hung_once)}
    cluster.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "topo", "sweep", "--cluster", str(cluster), "-t", "solo", "-c", "1,2", "--runs", "3",
         "--pp", "256", "--tg", "64", "--stall-timeout", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    meta = json.loads((out / "meta.json").read_text())
    assert done.returncode == 0, f"{meta.get('errors')}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert hung_once.exists()
    assert meta["status"] == "complete" and meta["errors"] == {}
    (incident,) = meta["incidents"]
    assert incident["topology"] == "solo" and incident["action"] == "torn down, brought up again, cell retried"
    assert incident["reason"].startswith("no token on any of ") and "(limit 5 s)" in incident["reason"]
    assert incident["runs_failed"]  # the run in flight when it hung, and those after it in that cell
    ran = meta["ran"]["solo"]  # what ran, recorded from the engine's GET /version and the node
    assert ran["executor"] == "uni" and ran["nodes"]["node1"]["engine_version"] == twin_version()
    assert ran["nodes"]["node1"]["kernel"] and ran["nodes"]["node1"]["env"]["engine"]["VLLM_HOST_IP"] == "127.0.0.1"
    cells = pd.read_parquet(out / "cells.parquet")
    assert sorted(zip(cells.concurrency, cells.run)) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert (cells.failed == 0).all()  # the retried runs are clean; the failed attempt is the incident
    report = (out / "report.md").read_text()
    assert "Incident: " in report and f"hung at {incident['load']}" in report
    assert "brought up again, cell retried" in report
    assert sorted(str(p) for p in cluster.parent.rglob("run/*.pid")) == []


class _CellsDone:
    """A silent sweep progress that counts finished cells."""

    def __init__(self) -> None:
        self.cells_done = 0

    def cell_done(self, *args: object) -> None:
        self.cells_done += 1

    def event(self, *args: object, **kwargs: object) -> None: ...
    def sweep_started(self, *args: object) -> None: ...
    def topology_started(self, *args: object) -> None: ...
    def topology_up(self, *args: object) -> None: ...
    def run_done(self, *args: object) -> None: ...
    def topology_failed(self, *args: object) -> None: ...
    def note(self, *args: object) -> None: ...


def test_a_hang_called_during_the_next_cells_liveness_check_retries_that_whole_cell(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on the test bed (a node unplugged between cells): the check before c2 hung on the lost node,
    the watchdog called the hang meanwhile, and c1's stored runs were counted as c2's: the retry asked for
    0 runs and the topology was lost. c2 must be retried whole."""
    from cluster.bringup import Running
    from topo import sweep as sweep_module

    progress = _CellsDone()
    checking = asyncio.Event()
    original_check = Running.check_alive

    async def check_alive(self: Running) -> None:
        if progress.cells_done == 1 and not checking.is_set():  # the check before c2, first bring-up
            checking.set()
            await asyncio.sleep(3600)  # a node that does not answer; the watchdog's hang cancels it
        await original_check(self)

    async def watch_once(*args: object, **kwargs: object) -> str:
        if checking.is_set():
            await asyncio.Event().wait()  # the second bring-up serves normally
        await checking.wait()
        return "hung (test)"

    async def without_liveness_polls(running: Running, work):  # type: ignore[no-untyped-def]
        return await work  # only the check before each cell

    monkeypatch.setattr(Running, "check_alive", check_alive)
    monkeypatch.setattr(sweep_module, "watch", watch_once)
    monkeypatch.setattr(sweep_module, "_while_alive", without_liveness_polls)
    cluster = write_local_cluster(tmp_path / "cluster")
    spec = sweep_module.SweepSpec(cluster=str(cluster), model="tiny", topologies=("solo",), concurrency=(1, 2),
                                  runs=2, pp=64, tg=8, twin_hardware="fast", telemetry_interval_s=0)
    out = tmp_path / "results"
    outcome = asyncio.run(sweep_module.run_sweep(sweep_module.plan_sweep(spec), out, progress, check_nodes=False))
    assert outcome.status == "complete" and outcome.errors == {}, outcome
    (incident,) = json.loads((out / "meta.json").read_text())["incidents"]
    assert incident["load"] == "c2" and incident["runs_failed"] == [0, 1]
    cells = pd.read_parquet(out / "cells.parquet")
    assert sorted(zip(cells.concurrency, cells.run)) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert sorted(str(p) for p in cluster.parent.rglob("run/*.pid")) == []
