"""Sample every engine's and the proxy's /metrics and every node of a topology at a steady interval.

    http, nodes = targets_for(plan, cluster, endpoint_headers)
    sampler = TelemetrySampler(topology, http, nodes, cluster, interval_s=1.0)
    async with sampler:                       # the agent process runs; one sample right away, one at the end
        sampler.mark(load)                    # which cell the samples belong to (None between cells)
        ...measure...; sampler.snapshot()     # a run ended: a sample now
        sampler.mark_run(load, run, t0, t1)   # a measured run's window (perf_counter, the client's clock)
    rows = sampler.rows()                     # long format, cell keys filled in (ResultsFolder.append_telemetry)

One row per (scrape, series): topology, workload, load, concurrency, run, source (`engine:<node>`, `proxy`,
`node:<node>`), node, t (time.perf_counter() when the answer arrived: the clock the client stamps requests
with, so samples line up with runs), unix, metric, le (histogram bucket bound, else NaN), value.

Sampling must not disturb the measurement. The SampleLoop runs in its own process (telemetry/agent.py):
parsing a real vLLM page with prometheus_client takes tens of ms of pure Python and spawning a probe a few
ms, which on the client's event loop would delay a batch's sends and its tokens' timestamps. Every scrape of
a tick runs concurrently with a deadline below the interval, a target still busy from the previous tick is
skipped rather than queued, and a target that fails is noted once and retried at the next tick (a 404
/metrics, e.g. a LiteLLM proxy without its prometheus callback, is dropped for the rest of the topology).
benchmarks/telemetry_overhead.py measures the client's send lag with and without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sys
import tempfile
import time
from bisect import bisect_right
from pathlib import Path
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pyarrow.parquet as pq

from bench.workload import DEFAULT_WORKLOAD, Load
from cluster.connector import Connector
from common.errors import TopoError
from telemetry.node import node_probe_argv, parse_node_probe
from telemetry.prometheus import PROXY_METRICS, VLLM_METRICS, MetricSpec, Reading, extract, parse_prometheus
from topology.inventory import CONTROLLER, Cluster
from topology.plan import HttpProbe, LaunchPlan

DEFAULT_INTERVAL_S = 1.0


SPEC_SETS: dict[str, tuple[MetricSpec, ...]] = {"vllm": VLLM_METRICS, "proxy": PROXY_METRICS}


@dataclass(frozen=True)
class HttpTarget:
    source: str  # engine:<node> or proxy
    node: str
    url: str  # the full /metrics URL
    specs: str  # a key of SPEC_SETS: which series the page is read for
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeTarget:
    node: str
    workdir: str

    @property
    def source(self) -> str:
        return f"node:{self.node}"


@dataclass(frozen=True)
class RunWindow:
    load: str  # the load's label (bench/workload.py)
    concurrency: int | None
    run: int
    start: float
    end: float


class SampleLoop:
    """The sampling itself: every target at a steady interval, rows without cell keys (telemetry/agent.py
    runs it in its own process; TelemetrySampler adds the keys)."""

    def __init__(
        self,
        topology: str,
        http_targets: Sequence[HttpTarget],
        node_targets: Sequence[NodeTarget],
        connectors: Mapping[str, Connector],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
        transport: httpx.AsyncBaseTransport | None = None,
        workload: str = DEFAULT_WORKLOAD,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"the sampling interval must be positive (got {interval_s})")
        self.topology = topology
        self.workload = workload
        self.http_targets = list(http_targets)
        self.node_targets = list(node_targets)
        self.connectors = connectors
        self.interval_s = interval_s
        self.clock = clock
        self.notes: list[str] = []
        self.ticks = 0
        self.skipped = 0  # scrapes skipped because the target's previous one was still running
        self.rows: list[dict[str, Any]] = []
        self._client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(max(0.5, 0.9 * interval_s)))
        self._busy: set[str] = set()
        self._dropped: set[str] = set()
        self._noted: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def snapshot(self) -> None:
        """Sample now, besides the rhythm (a run just ended): counters are then bracketed by samples right at
        the run's edges instead of up to an interval outside them. Does not wait for the scrapes."""
        if self._task is not None:
            self._spawn()

    def _spawn(self) -> None:
        task = asyncio.create_task(self.tick())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    # -- life ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.tick()
        self._task = asyncio.create_task(self._loop(), name=f"telemetry-{self.topology}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            await self.tick()  # the last moment of the last cell
        await self._client.aclose()

    async def _loop(self) -> None:
        next_tick = self.clock() + self.interval_s
        while True:
            await asyncio.sleep(max(0.0, next_tick - self.clock()))
            # fire the tick's scrapes without waiting: a slow target must not shift the others' rhythm
            self._spawn()
            next_tick += self.interval_s
            if next_tick < self.clock():  # we fell behind (a stalled loop): keep the rhythm, skip the missed
                next_tick = self.clock() + self.interval_s

    async def tick(self) -> None:
        self.ticks += 1
        scrapes = [self._exclusive(t.source, self._scrape_http(t)) for t in self.http_targets
                   if t.source not in self._dropped]
        scrapes += [self._exclusive(t.source, self._scrape_node(t)) for t in self.node_targets]
        await asyncio.gather(*scrapes)

    async def _exclusive(self, source: str, scrape: Coroutine[Any, Any, None]) -> None:
        """Run a target's scrape unless its previous one still runs (then skip: never queue behind it)."""
        if source in self._busy:
            scrape.close()
            self.skipped += 1
            return
        self._busy.add(source)
        try:
            await scrape
        finally:
            self._busy.discard(source)

    # -- one target ------------------------------------------------------------------------------------

    def _note_once(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self.notes.append(message)

    def _add(self, source: str, node: str, readings: Sequence[Reading], t: float) -> None:
        unix = time.time()
        for reading in readings:
            self.rows.append({
                "topology": self.topology, "workload": self.workload, "load": None, "concurrency": None,
                "run": None, "source": source,
                "node": node, "t": t, "unix": unix, "metric": reading.metric,
                "le": reading.le if reading.le is not None else math.nan, "value": float(reading.value),
            })

    async def _scrape_http(self, target: HttpTarget) -> None:
        try:
            response = await self._client.get(target.url, headers=target.headers)
            t = self.clock()
            if response.status_code == 404:
                self._dropped.add(target.source)
                self._note_once(target.source, f"{target.source}: {target.url} has no /metrics (404); not sampled")
                return
            if response.status_code != 200:
                self._note_once(target.source, f"{target.source}: {target.url} answered HTTP {response.status_code}")
                return
            self._add(target.source, target.node, extract(parse_prometheus(response.text, target.url, SPEC_SETS[target.specs]),
                                                             SPEC_SETS[target.specs]), t)
        except httpx.HTTPError as exc:
            self._note_once(target.source, f"{target.source}: scraping {target.url} failed ({type(exc).__name__})")
        except TopoError as exc:
            self._note_once(target.source, f"{target.source}: {exc}")

    async def _scrape_node(self, target: NodeTarget) -> None:
        try:
            done = await self.connectors[target.node].run(node_probe_argv(target.workdir),
                                                          timeout=max(2.0, 2 * self.interval_s))
            t = self.clock()
            readings = parse_node_probe(done.stdout)
            if not readings:
                self._note_once(target.source, f"{target.source}: the node probe printed nothing usable "
                                               f"(exit {done.exit_status}): {done.output_tail(200)}")
                return
            if not any(r.metric == "gpu_power_w" for r in readings):
                self._note_once(target.source + ":gpu", f"{target.source}: no nvidia-smi power figures; "
                                                        "energy per token is not measured on this node")
            self._add(target.source, target.node, readings, t)
        except TopoError as exc:
            self._note_once(target.source, f"{target.source}: node probe failed ({exc})")

def _concurrency(load: Load) -> int | None:
    return getattr(load, "concurrency", None)  # a closed load's c; other load shapes have none


def align_to_runs(rows: Sequence[dict[str, Any]], windows: Sequence[RunWindow]) -> list[dict[str, Any]]:
    """Copies of `rows`; a row whose `t` falls in a run window [start, end] gets that window's load and run.
    Others keep the load marked at sampling time (warm-up, between runs) and run None."""
    ordered = sorted(windows, key=lambda w: w.start)
    out = []
    for row in rows:
        row = dict(row)
        for window in ordered:
            if window.start <= row["t"] <= window.end:
                row["load"], row["concurrency"], row["run"] = window.load, window.concurrency, window.run
                break
        out.append(row)
    return out


def targets_for(plan: LaunchPlan, cluster: Cluster,
                endpoint_headers: Mapping[str, str]) -> tuple[list[HttpTarget], list[NodeTarget]]:
    """What to sample for a topology that is up: every serving engine's and the proxy's /metrics, and every
    node the plan runs something on (the controller is not a node: its proxy is sampled over HTTP)."""
    http: list[HttpTarget] = []
    used: list[str] = []
    for step in plan.steps():
        if step.node != CONTROLLER and step.node not in used:
            used.append(step.node)
        if step.role == "engine":
            node = cluster.node(step.node)
            http.append(HttpTarget(f"engine:{node.name}", node.name,
                                   f"http://{node.reachable_host}:{node.engine.port}/metrics", "vllm"))
        elif step.role == "proxy" and isinstance(step.probe, HttpProbe) and step.probe.urls:
            parts = urlsplit(step.probe.urls[0])
            http.append(HttpTarget("proxy", step.node, f"{parts.scheme}://{parts.netloc}/metrics", "proxy",
                                   dict(endpoint_headers)))
    return http, [NodeTarget(name, cluster.node(name).workdir) for name in used]


def align_to_loads(rows: Sequence[dict[str, Any]], marks: Sequence[tuple[float, Load | None]]) -> list[dict[str, Any]]:
    """Copies of `rows`, each with the load that was marked last at or before its time (None before any)."""
    ordered = sorted(marks, key=lambda mark: mark[0])
    times = [t for t, _ in ordered]
    out = []
    for row in rows:
        row = dict(row)
        index = bisect_right(times, row["t"]) - 1
        load = ordered[index][1] if index >= 0 else None
        row["load"] = load.label if load is not None else None
        row["concurrency"] = _concurrency(load) if load is not None else None
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------
# The sampler the sweep uses: the SampleLoop in a process of its own


AGENT_STOP_S = 30.0


class TelemetrySampler:
    """Samples a topology from a separate process (`python -m telemetry.agent`), so that parsing pages and
    spawning probes never stall the load client's event loop (a stalled loop would delay a batch's sends
    and the timestamps of its tokens). time.perf_counter() is CLOCK_MONOTONIC on Linux, one clock for every
    process on the machine, so the agent's sample times line up with the client's request timestamps.

    The sweep marks which load runs (`mark`) and each measured run's window (`mark_run`); `rows()` after
    `stop()` gives every sample with its cell keys."""

    def __init__(self, topology: str, http_targets: Sequence[HttpTarget], node_targets: Sequence[NodeTarget],
                 cluster: Cluster | None, *, interval_s: float = DEFAULT_INTERVAL_S,
                 workload: str = DEFAULT_WORKLOAD) -> None:
        if interval_s <= 0:
            raise ValueError(f"the sampling interval must be positive (got {interval_s})")
        self.spec = {
            "topology": topology, "workload": workload, "interval_s": interval_s,
            "http": [dataclasses.asdict(t) for t in http_targets],
            "nodes": [dataclasses.asdict(t) for t in node_targets],
            "cluster": cluster.model_dump(mode="json") if cluster is not None and node_targets else None,
        }
        self.notes: list[str] = []
        self.windows: list[RunWindow] = []
        self.marks: list[tuple[float, Load | None]] = []
        self.ticks = 0
        self.skipped = 0
        self._rows: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    def mark(self, load: Load | None) -> None:
        self.marks.append((time.perf_counter(), load))

    def mark_run(self, load: Load, run: int, start: float, end: float) -> None:
        self.windows.append(RunWindow(load.label, _concurrency(load), run, start, end))

    def snapshot(self) -> None:
        """Ask the agent for a sample now (a run just ended); does not wait."""
        if self._process is not None and self._process.stdin is not None and self._process.returncode is None:
            self._process.stdin.write(b"snapshot\n")

    async def __aenter__(self) -> TelemetrySampler:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="topo-telemetry-")
        out = Path(self._workdir.name) / "samples.parquet"
        log = open(Path(self._workdir.name) / "agent.log", "wb")  # noqa: SIM115 - closed after the process
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telemetry.agent", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log)
        except OSError as exc:
            log.close()
            self.notes.append(f"the telemetry agent could not start ({exc.strerror or exc}); no telemetry")
            return
        finally:
            if self._process is not None:
                log.close()
        assert self._process.stdin is not None and self._process.stdout is not None
        # the spec goes over stdin, not argv: the proxy's headers carry its master key
        self._process.stdin.write(json.dumps({**self.spec, "out": str(out)}).encode() + b"\n")
        try:
            ready = await asyncio.wait_for(self._process.stdout.readline(), AGENT_STOP_S)
        except asyncio.TimeoutError:
            ready = b""
        if ready.strip() != b"ready":
            self.notes.append(f"the telemetry agent did not start: {self._agent_log_tail()}")
            await self._kill()

    async def stop(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        try:
            assert process.stdin is not None and process.stdout is not None
            if process.returncode is None:
                process.stdin.write(b"stop\n")
                await process.stdin.drain()
            answer = await asyncio.wait_for(process.stdout.read(), AGENT_STOP_S)
            await asyncio.wait_for(process.wait(), AGENT_STOP_S)
        except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
            self.notes.append("the telemetry agent did not stop in time; its samples are lost")
            self._process = process
            await self._kill()
            return
        try:
            summary = json.loads(answer.decode().strip().splitlines()[-1])
            self.notes += summary["notes"]
            self.ticks, self.skipped = summary["ticks"], summary["skipped"]
            self._rows = pq.read_table(summary["out"]).to_pylist() if summary["rows"] else []
        except (ValueError, KeyError, IndexError, OSError) as exc:
            self.notes.append(f"the telemetry agent's samples are unreadable ({exc}): {self._agent_log_tail()}")
        finally:
            if self._workdir is not None:
                self._workdir.cleanup()

    async def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()

    def _agent_log_tail(self) -> str:
        try:
            text = (Path(self._workdir.name) / "agent.log").read_text(errors="replace") if self._workdir else ""
        except OSError:
            text = ""
        return text.strip().splitlines()[-1] if text.strip() else "(no output)"

    def rows(self) -> list[dict[str, Any]]:
        """Every sample, with the load marked when it was taken and the run whose window it falls in."""
        return align_to_runs(align_to_loads(self._rows, self.marks), self.windows)
