"""Does sampling telemetry disturb the measurement? The client's send lag and TTFT with and without it.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/telemetry_overhead.py [--topology tp2-mp] [-c 64] [--rounds 3]
        [--intervals 1,0.25] [--cluster local-twin] [--pp 1024] [--tg 32]

Brings one topology up on the cluster (gb10 twins on the embedded default) and measures the same cell in
alternating rounds: without a sampler, then with the sweep's sampler (telemetry/sampler.py: every engine's
/metrics and every node's probe) in its agent process at each --intervals value, as in a sweep, and the same
SampleLoop run on the client's own event loop (in-loop: what the agent process avoids). Alternating rounds keep a drift of the shared machine from looking like an effect.
Per condition it prints the client's scheduling lag (send_lag = when a request's bytes went on the wire
minus when its batch fired; docs/METRICS.md), TTFT and decode t/s, the ratio against no sampling, and how late
the client's event loop woke from 5 ms sleeps during the cell (p99 and max: a stall there delays sends and
token timestamps alike). On a shared machine a whole batch is sometimes held by other processes' load, in
every condition alike: compare several rounds, not one.

Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.client import Endpoint  # noqa: E402
from bench.session import BenchSession, BenchSettings  # noqa: E402
from cluster.bringup import bring_up, open_cluster  # noqa: E402
from bench.workload import ClosedLoad  # noqa: E402
from telemetry.sampler import SampleLoop, TelemetrySampler, targets_for  # noqa: E402
from topology.inventory import load_cluster  # noqa: E402
from topology.kinds import PlanSecrets, parse_topology, plan  # noqa: E402
from topology.recipe import load_recipe  # noqa: E402


class LoopLag:
    """How late the client's event loop wakes from 5 ms sleeps while a cell runs: every stall of the loop
    (a page parsed on it, a probe spawned from it, the machine's other load) delays sends and token stamps."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            self.lags.append((loop.time() - due) * 1000)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def quantile(self, q: float) -> float:
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(args: argparse.Namespace) -> None:
    cluster = load_cluster(args.cluster)
    recipe = load_recipe(args.model)
    launch = plan(parse_topology(args.topology), cluster, recipe, secrets=PlanSecrets.generate())
    intervals = [float(v) for v in args.intervals.split(",")]
    results: dict[str, list[dict[str, float]]] = {}
    async with open_cluster(cluster) as nodes, bring_up(launch, nodes) as running:
        headers = running.endpoint_headers()
        api_key = headers.get("Authorization", "").removeprefix("Bearer ") or None
        session = BenchSession(Endpoint.from_url(running.endpoint, api_key), launch.served_model_name,
                               BenchSettings(pp=args.pp, tg=args.tg, latency_mode="none", seed=1))
        await session.open()
        try:
            http, node_targets = targets_for(launch, cluster, headers)
            connectors = {name: nodes[name].connector for name in nodes}
            conditions = [("off", 0.0, False)] + [(f"agent {i:g} s", i, False) for i in intervals]
            conditions += [(f"in-loop {i:g} s", i, True) for i in intervals[:1]]
            for round_index in range(args.rounds):
                for label, interval, in_loop in conditions:
                    sampler: Any = None
                    if in_loop:  # the SampleLoop on the client's own event loop: what the agent avoids
                        sampler = SampleLoop(args.topology, http, node_targets, connectors, interval_s=interval)
                    elif interval > 0:
                        sampler = TelemetrySampler(args.topology, http, node_targets, cluster, interval_s=interval)
                    if sampler is not None:
                        await sampler.start()
                    try:
                        with LoopLag() as lag:
                            result = await session.run(ClosedLoad(args.concurrency), 1, topology=args.topology)
                    finally:
                        if sampler is not None:
                            await sampler.stop()
                    lags = [r.send_lag * 1000 for r in result.records]
                    ttfts = [(r.first_token - r.start) * 1000 for r in result.records if r.first_token is not None]
                    row = result.run_rows[0]
                    results.setdefault(label, []).append({
                        "lag_mean": statistics.fmean(lags), "lag_max": max(lags), "ttft": statistics.fmean(ttfts),
                        "loop_p99": lag.quantile(0.99), "loop_max": lag.quantile(1.0),
                               "decode": row["decode_tps"], "samples": float(len(sampler.rows() if callable(sampler.rows) else sampler.rows))
                        if sampler else 0.0,
                    })
                    print(f"round {round_index + 1} {label:>12}: send lag mean {statistics.fmean(lags):6.2f} ms, "
                          f"max {max(lags):6.2f} ms; TTFT {statistics.fmean(ttfts):7.1f} ms; "
                          f"decode {row['decode_tps']:7.1f} t/s; loop lag p99 {lag.quantile(0.99):5.1f} ms, "
                          f"max {lag.quantile(1.0):5.1f} ms", flush=True)
        finally:
            await session.close()
    base = results["off"]
    print(f"\n{args.topology} c{args.concurrency} pp{args.pp} tg{args.tg}, {args.rounds} alternating rounds "
          "(mean over rounds; ratio = with sampling / without)")
    for label, rows in results.items():
        def mean(key: str, of: list[dict[str, float]] = rows) -> float:
            return statistics.fmean(r[key] for r in of)
        print(f"  sampling {label:>12}: send lag mean {mean('lag_mean'):6.2f} ms (x{mean('lag_mean') / mean('lag_mean', base):.2f}), "
              f"max {mean('lag_max'):6.2f} ms (x{mean('lag_max') / mean('lag_max', base):.2f}); "
              f"TTFT {mean('ttft'):7.1f} ms (x{mean('ttft') / mean('ttft', base):.2f}); "
              f"decode {mean('decode'):7.1f} t/s (x{mean('decode') / mean('decode', base):.2f}); "
              f"loop lag p99 {mean('loop_p99'):5.1f} ms, max {mean('loop_max'):5.1f} ms; "
              f"{mean('samples'):.0f} samples a cell")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="local-twin")
    parser.add_argument("--model", default="gemma4-26b")
    parser.add_argument("--topology", default="tp2-mp")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--intervals", default="1,0.25")
    parser.add_argument("--pp", type=int, default=1024)
    parser.add_argument("--tg", type=int, default=32)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
