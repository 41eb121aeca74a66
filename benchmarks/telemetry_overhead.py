"""Does sampling telemetry disturb the measurement? The client's send lag and TTFT with and without it.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/telemetry_overhead.py [--topology tp2-mp] [-c 64] [--rounds 3]
        [--intervals 1,0.25] [--cluster local-twin] [--pp 1024] [--tg 32]

Brings one topology up on the cluster (gb10 twins on the embedded default) and measures the same cell in
alternating rounds: without a sampler, then with the sweep's sampler (telemetry/sampler.py: every engine's
/metrics and every node's probe) at each --intervals value, in the same process and event loop as the load
client, as in a sweep. Alternating rounds keep a drift of the shared machine from looking like an effect.
Per condition it prints the client's scheduling lag (send_lag = when a request's bytes went on the wire
minus when its batch fired; METRICS.md), TTFT and decode t/s, and the ratio against no sampling.

Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.client import Endpoint  # noqa: E402
from bench.session import BenchSession  # noqa: E402
from cluster.bringup import bring_up, open_cluster  # noqa: E402
from telemetry.sampler import TelemetrySampler, targets_for  # noqa: E402
from topology.inventory import load_cluster  # noqa: E402
from topology.kinds import PlanSecrets, parse_topology, plan  # noqa: E402
from topology.recipe import load_recipe  # noqa: E402


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
                               pp=args.pp, tg=args.tg, latency_mode="none", seed=1)
        await session.open()
        try:
            for round_index in range(args.rounds):
                for interval in [0.0, *intervals]:
                    label = "off" if interval == 0 else f"every {interval:g} s"
                    sampler = None
                    if interval > 0:
                        http, node_targets = targets_for(launch, cluster, nodes, headers)
                        sampler = TelemetrySampler(args.topology, http, node_targets, interval_s=interval)
                        await sampler.__aenter__()
                    try:
                        result = await session.cell(args.concurrency, 1, topology=args.topology)
                    finally:
                        if sampler is not None:
                            await sampler.stop()
                    lags = [r.send_lag * 1000 for r in result.records]
                    ttfts = [(r.first_token - r.start) * 1000 for r in result.records if r.first_token is not None]
                    row = result.run_rows[0]
                    results.setdefault(label, []).append({
                        "lag_mean": statistics.fmean(lags), "lag_max": max(lags), "ttft": statistics.fmean(ttfts),
                        "decode": row["decode_tps"], "samples": float(len(sampler.rows())) if sampler else 0.0,
                    })
                    print(f"round {round_index + 1} {label:>12}: send lag mean {statistics.fmean(lags):6.2f} ms, "
                          f"max {max(lags):6.2f} ms; TTFT {statistics.fmean(ttfts):7.1f} ms; "
                          f"decode {row['decode_tps']:7.1f} t/s", flush=True)
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
