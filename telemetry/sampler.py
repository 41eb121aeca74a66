"""Sample every engine's and the proxy's /metrics and every node of a topology at a steady interval.

    sampler = TelemetrySampler(topology, http_targets, node_targets, interval_s=1.0)
    async with sampler:                       # a background task; one sample right away, one at the end
        sampler.mark(load)                    # which cell the samples belong to (None between cells)
        ...measure...
        sampler.mark_run(load, run, t0, t1)   # a measured run's window (perf_counter, the client's clock)
    rows = sampler.rows()                     # long format, cell keys filled in (ResultsFolder.append_telemetry)

One row per (scrape, series): topology, workload, load, concurrency, run, source (`engine:<node>`, `proxy`, `node:<node>`),
node, t (time.perf_counter() of this process when the answer arrived: the clock the client stamps requests
with, so samples line up with runs), unix, metric, le (histogram bucket bound, else NaN), value.

Sampling must not disturb the measurement: every scrape of a tick runs concurrently with a deadline below
the interval, a target still busy from the previous tick is skipped rather than queued, and a target that
fails is noted once and retried at the next tick (a 404 /metrics, e.g. a LiteLLM proxy without its
prometheus callback, is dropped for the rest of the topology).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.workload import DEFAULT_WORKLOAD, Load
from cluster.bringup import NodeAccess
from cluster.connector import Connector
from common.errors import TopoError
from telemetry.node import node_probe_argv, parse_node_probe
from telemetry.prometheus import PROXY_METRICS, VLLM_METRICS, MetricSpec, Reading, extract, parse_prometheus
from topology.inventory import CONTROLLER, Cluster
from topology.plan import HttpProbe, LaunchPlan

DEFAULT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class HttpTarget:
    source: str  # engine:<node> or proxy
    node: str
    url: str  # the full /metrics URL
    specs: tuple[MetricSpec, ...]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeTarget:
    node: str
    connector: Connector
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


class TelemetrySampler:
    def __init__(
        self,
        topology: str,
        http_targets: Sequence[HttpTarget],
        node_targets: Sequence[NodeTarget],
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
        self.interval_s = interval_s
        self.clock = clock
        self.notes: list[str] = []
        self.windows: list[RunWindow] = []
        self.ticks = 0
        self.skipped = 0  # scrapes skipped because the target's previous one was still running
        self._rows: list[dict[str, Any]] = []
        self._load: Load | None = None
        self._client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(max(0.5, 0.9 * interval_s)))
        self._busy: set[str] = set()
        self._dropped: set[str] = set()
        self._noted: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    # -- what the sweep tells the sampler -------------------------------------------------------------

    def mark(self, load: Load | None) -> None:
        self._load = load

    def mark_run(self, load: Load, run: int, start: float, end: float) -> None:
        self.windows.append(RunWindow(load.label, _concurrency(load), run, start, end))

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

    async def __aenter__(self) -> TelemetrySampler:
        await self.tick()
        self._task = asyncio.create_task(self._loop(), name=f"telemetry-{self.topology}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

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
            self._rows.append({
                "topology": self.topology, "workload": self.workload,
                "load": self._load.label if self._load is not None else None,
                "concurrency": _concurrency(self._load) if self._load is not None else None, "run": None,
                "source": source,
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
            self._add(target.source, target.node, extract(parse_prometheus(response.text, target.url), target.specs), t)
        except httpx.HTTPError as exc:
            self._note_once(target.source, f"{target.source}: scraping {target.url} failed ({type(exc).__name__})")
        except TopoError as exc:
            self._note_once(target.source, f"{target.source}: {exc}")

    async def _scrape_node(self, target: NodeTarget) -> None:
        try:
            done = await target.connector.run(node_probe_argv(target.workdir), timeout=max(2.0, 2 * self.interval_s))
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

    # -- results ----------------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """Every sample so far, each inside a marked run window given that run's cell keys."""
        return align_to_runs(self._rows, self.windows)


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


def targets_for(plan: LaunchPlan, cluster: Cluster, nodes: Mapping[str, NodeAccess],
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
                                   f"http://{node.reachable_host}:{node.engine.port}/metrics", VLLM_METRICS))
        elif step.role == "proxy" and isinstance(step.probe, HttpProbe) and step.probe.urls:
            parts = urlsplit(step.probe.urls[0])
            http.append(HttpTarget("proxy", step.node, f"{parts.scheme}://{parts.netloc}/metrics", PROXY_METRICS,
                                   dict(endpoint_headers)))
    node_targets = [NodeTarget(name, nodes[name].connector, cluster.node(name).workdir) for name in used]
    return http, node_targets
