"""What the LiteLLM proxy costs on this host, measured alone: the router constants of a hardware profile.

    .venv/bin/python benchmarks/proxy_cost.py [--cluster local-twin] [-c 16,32,64] [--runs 4]

Brings up 2x-solo-shuffle on the cluster and sends bursts of c streamed pp1024 requests, as a sweep does.
The engines are twins of --hardware (gb10): their prefill takes long enough that no answer comes back
while a burst is being handed on, so the proxy is only doing that. Read, without any topology's measured
throughput or TTFT:

- When each request of a burst reaches an engine: the twin records every request's arrival on the same
  clock as the client (perf_counter is system-wide on Linux), at /twin/requests. A burst is handed on in a
  clump, not one request after another: the proxy is one asyncio process, so every request's first part
  (reading and checking the body) is done for the whole burst before any request's second part (picking a
  backend and opening its stream). With latency L, first part a and second part b per request, request
  k of c (k = 1..c) reaches its engine at L + c*a + k*b: the first one at L + c*a + b, the last at
  L + c*a + c*b. Bursts of 1 and of c give L, a and b: the profile's `request_latency_ms`,
  `accept_per_request_ms` and `dispatch_per_request_ms`.
- CPU seconds per request and per streamed chunk, from /proc for the proxy's process group: bursts with
  tg=1 against bursts with tg=--tg (more chunks a request). Printed for context (how near a full core the
  proxy runs); the prediction does not queue chunks.
- What the proxy does at the streams' ends, from the same bursts at tg=--tg: how long after a stream's last
  token the client sees it closed (LiteLLM rebuilds the whole response for its logging before it sends
  `[DONE]`, streaming_handler._finalize_completed_stream), and how much later than after a tg=1 burst the
  next burst's first request reaches its engine (work the last burst's ends left the proxy). The twin does
  not model either (see benchmarks/calibrate_roundtrip.py).

Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.client import Endpoint  # noqa: E402
from bench.records import RequestRecord  # noqa: E402
from bench.session import BenchSession, BenchSettings  # noqa: E402
from bench.workload import ClosedLoad  # noqa: E402
from cluster.bringup import bring_up, open_cluster  # noqa: E402
from topology.inventory import Cluster, load_cluster  # noqa: E402
from topology.kinds import PlanSecrets, parse_topology, plan  # noqa: E402
from topology.recipe import load_recipe  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in a process group (children the proxy reaped are
    counted in its own cutime/cstime)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid:  # fields[2] is pgrp (field 5 of stat)
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def with_twin_hardware(cluster: Cluster, hardware: str) -> Cluster:
    nodes = tuple(
        node.model_copy(update={"engine": node.engine.model_copy(update={"hardware": hardware})}) for node in cluster.nodes
    )
    return cluster.model_copy(update={"nodes": nodes})


@dataclass(frozen=True)
class Burst:
    """One burst as the engines saw it, in ms after it fired."""

    first_arrival: float
    last_arrival: float
    response_ms: float  # mean first token at the client minus mean first token at the engines
    close_lag_ms: tuple[float, float]  # a stream's close at the client after its last token: median, largest


def bursts(records: list[RequestRecord], served: list[dict[str, Any]]) -> list[Burst]:
    """Match each run's requests with the engines' records of the same time span."""
    found = []
    for run in sorted({record.run for record in records}):
        batch = [record for record in records if record.run == run]
        fired = batch[0].batch_start
        finished = max(record.end or fired for record in batch)
        seen = [row for row in served if fired <= row["arrival"] <= finished]
        if len(seen) != len(batch):
            raise SystemExit(f"run {run}: {len(batch)} requests sent, {len(seen)} seen by the engines")
        reached = sorted(row["arrival"] - fired for row in seen)
        at_client = statistics.mean(record.first_token - fired for record in batch if record.first_token)
        at_engines = statistics.mean(row["token_times"][0] - fired for row in seen)
        lags = [1000 * (record.end - record.token_times[-1]) for record in batch if record.end and record.token_times]
        found.append(Burst(reached[0] * 1000, reached[-1] * 1000, (at_client - at_engines) * 1000,
                           (statistics.median(lags), max(lags))))
    return found


async def measure(cluster: Cluster, concurrencies: list[int], runs: int, pp: int, long_tg: int) -> None:
    launch = plan(parse_topology("2x-solo-shuffle"), cluster, load_recipe("gemma4-26b"), secrets=PlanSecrets.generate())
    engines = [f"http://{node.reachable_host}:{node.engine.port}" for node in cluster.nodes[:2]]
    async with open_cluster(cluster) as access, bring_up(launch, access) as running, httpx.AsyncClient(
        trust_env=False, timeout=30
    ) as http:
        pgid = running.processes["proxy"].pgid
        api_key = running.endpoint_headers().get("Authorization", "").removeprefix("Bearer ") or None
        endpoint = Endpoint.from_url(running.endpoint, api_key)
        model = launch.served_model_name

        sessions: dict[int, BenchSession] = {}

        async def burst(c: int, tg: int, n_runs: int) -> tuple[list[Burst], float]:
            if tg not in sessions:  # opened (preflight, token counter) outside the CPU window
                sessions[tg] = BenchSession(endpoint, model, BenchSettings(pp=pp, tg=tg, latency_mode="none",
                                                                           warmup=False))
                await sessions[tg].open()
            for engine in engines:
                await http.delete(f"{engine}/twin/requests")
            before = group_cpu_seconds(pgid)
            result = await sessions[tg].run(ClosedLoad(c), n_runs)
            cpu = group_cpu_seconds(pgid) - before
            failed = [record.error for record in result.records if record.error]
            if failed:
                raise SystemExit(f"{len(failed)} request(s) failed at c{c} tg{tg} ({failed[0]}); no figures")
            served = []
            for engine in engines:
                served += (await http.get(f"{engine}/twin/requests")).json()["requests"]
            return bursts(result.records, served), cpu

        await burst(2, 1, 1)  # warm-up: imports and first-use caches are charged to no figure
        single, _ = await burst(1, 1, max(runs * 2, 8))
        clumps, short_cpu = {}, {}
        for size in concurrencies:
            clumps[size], short_cpu[size] = await burst(size, 1, runs)
        largest = concurrencies[-1]  # the CPU comparison: same bursts, tg=1 against tg=long_tg
        long_runs = max(runs, 2)  # the first of each size follows another size's burst: compared are the rest
        long_bursts: dict[int, list[Burst]] = {}
        long_cpu: dict[int, float] = {}
        for size in concurrencies:
            long_bursts[size], long_cpu[size] = await burst(size, long_tg, long_runs)
        for session in sessions.values():
            await session.close()

    alone = statistics.median(one.first_arrival for one in single)
    print(f"LiteLLM proxy on {cluster.name}, pp{pp}, {runs} burst(s) each; medians over bursts")
    print(f"  c1: a request reaches its engine after {alone:.1f} ms; its first token reaches the client "
          f"{statistics.median(one.response_ms for one in single):.1f} ms after the engine sent it")
    # pooled over burst sizes: first(c) - alone = (c-1) a, last(c) - first(c) = (c-1) b
    spread = accept_sum = weights = 0.0
    for size, measured in clumps.items():
        first = statistics.median(one.first_arrival for one in measured)
        last = statistics.median(one.last_arrival for one in measured)
        response = statistics.median(one.response_ms for one in measured)
        print(f"  c{size}: the first after {first:.1f} ms, the last after {last:.1f} ms "
              f"(a {(first - alone) / (size - 1):.2f}, b {(last - first) / (size - 1):.2f} ms); "
              f"first tokens {response:.1f} ms later at the client")
        accept_sum += first - alone
        spread += last - first
        weights += size - 1
    accept, dispatch = accept_sum / weights, spread / weights
    print(f"  -> request_latency_ms {alone - accept - dispatch:.1f}, accept_per_request_ms {accept:.2f}, "
          f"dispatch_per_request_ms {dispatch:.2f}")
    requests = largest * runs
    long_requests = largest * long_runs
    print(f"  CPU at c{largest}: {short_cpu[largest] / requests * 1000:.1f} ms per request (tg=1), "
          f"{(long_cpu[largest] / long_requests - short_cpu[largest] / requests) / (long_tg - 1) * 1000:.3f} ms per "
          f"further chunk (tg={long_tg})")
    print(f"  stream ends at tg={long_tg} (the next burst compared with one after a tg=1 burst):")
    for size, measured in long_bursts.items():
        after_short = statistics.median(one.first_arrival for one in clumps[size])
        after_long = statistics.median(one.first_arrival for one in measured[1:])  # each after a tg=long burst
        print(f"  c{size}: a stream is closed {statistics.median(one.close_lag_ms[0] for one in measured):.0f} ms "
              f"after its last token (median; largest {max(one.close_lag_ms[1] for one in measured):.0f} ms); "
              f"the next burst's first request reaches its engine {after_long - after_short:+.0f} ms later, its "
              f"first tokens reach the client {statistics.median(one.response_ms for one in measured[1:]):.0f} ms "
              "after the engines sent them")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", default="local-twin", help="cluster name or YAML path")
    parser.add_argument("--hardware", default="gb10", help="the twins' hardware profile (default: gb10)")
    parser.add_argument("-c", "--concurrency", default="16,32,64", help="burst sizes, comma-separated, each >= 2")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--pp", type=int, default=1024)
    parser.add_argument("--tg", type=int, default=128, help="tokens per request in the CPU-per-chunk series")
    args = parser.parse_args()
    try:
        concurrencies = sorted({int(part) for part in args.concurrency.split(",")})
    except ValueError:
        parser.error(f"-c {args.concurrency!r}: expected whole numbers separated by commas")
    if concurrencies[0] < 2:
        parser.error("-c: every burst needs at least 2 requests to show a spread")
    cluster = with_twin_hardware(load_cluster(args.cluster), args.hardware)
    asyncio.run(measure(cluster, concurrencies, args.runs, args.pp, args.tg))


if __name__ == "__main__":
    main()
