"""`topo up` and `topo down`: hold one topology up on a cluster; stop what an earlier run left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cluster.bringup import Leftovers, Running, bring_up, open_cluster, stop_leftovers
from cluster.progress import ConsoleProgress
from topology.inventory import load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.plan import LaunchPlan
from topology.recipe import load_recipe


def plan_up(topology: str, cluster: str, model: str) -> LaunchPlan:
    return plan(parse_topology(topology), load_cluster(cluster), load_recipe(model), secrets=PlanSecrets.generate())


def run_up(launch: LaunchPlan, cluster: str, hold_s: float,
           on_up: Callable[[ConsoleProgress, Running], None]) -> None:
    """Bring `launch` up, call `on_up`, keep it up for `hold_s` seconds (0: until Ctrl-C), tear it down."""
    loaded = load_cluster(cluster)

    async def hold_up() -> None:
        async with open_cluster(loaded) as nodes:
            with ConsoleProgress() as progress:
                async with bring_up(launch, nodes, progress=progress) as running:
                    on_up(progress, running)
                    if hold_s > 0:
                        await asyncio.sleep(hold_s)
                    else:
                        await asyncio.Event().wait()

    # SIGTERM and SIGHUP arrive as KeyboardInterrupt (topo.exits), so the teardown runs as on Ctrl-C
    asyncio.run(hold_up())


def run_down(cluster: str, grace_s: float) -> Leftovers:
    """Stop every process group an earlier run left on the cluster's nodes (found by their pidfiles)."""
    loaded = load_cluster(cluster)

    async def run() -> Leftovers:
        async with open_cluster(loaded) as nodes:
            return await stop_leftovers(nodes, grace_s=grace_s)

    return asyncio.run(run())
