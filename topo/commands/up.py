"""`topo up` and `topo down`: bring one topology up on a cluster and keep it up; stop what a run left behind."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from cluster.bringup import bring_up, open_cluster, remove_leftover_containers, stop_leftovers, teardown_on_signals
from cluster.progress import ConsoleProgress
from topology.inventory import load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.recipe import load_recipe

console = Console(highlight=False, soft_wrap=True)

CLUSTER_OPTION = typer.Option(
    "local-twin", "--cluster", "-c", help="Cluster inventory: a name in configs/clusters or a YAML path."
)


def up_command(
    topology: str = typer.Option(..., "--topology", "-t", help="solo, tp2-mp, tp2-ray or 2x-solo-shuffle."),
    cluster: str = CLUSTER_OPTION,
    model: str = typer.Option("gemma4-26b", "--model", "-m", help="Model recipe: a name in configs/models or a YAML path."),
    hold: float = typer.Option(
        0.0, "--hold", help="Seconds to keep it up, then tear down; 0: until Ctrl-C."
    ),
) -> None:
    """Bring a topology up (the very plan `topo plan` prints), print its endpoint, keep it up until Ctrl-C
    or --hold seconds, then tear it down and prove nothing is left. Pre-flight first: nodes reachable,
    ports free, no processes of an earlier run. A failure shows the failing process's log tail.
    """
    loaded = load_cluster(cluster)
    launch = plan(parse_topology(topology), loaded, load_recipe(model), secrets=PlanSecrets.generate())

    async def run() -> None:
        with teardown_on_signals():
            await hold_up()

    async def hold_up() -> None:
        async with open_cluster(loaded) as nodes:
            with ConsoleProgress() as progress:
                async with bring_up(launch, nodes, progress=progress) as running:
                    progress.console.print(
                        f"[green]{launch.topology} is up[/] after {running.bring_up_s:.1f} s: {running.endpoint} "
                        f"(model {launch.served_model_name})"
                        + (" - needs the proxy's master key (Authorization header)" if launch.endpoint_headers else "")
                    )
                    if hold > 0:
                        await asyncio.sleep(hold)
                    else:
                        progress.console.print("Ctrl-C tears it down")
                        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("torn down after an interrupt")


def down_command(
    cluster: str = CLUSTER_OPTION,
    grace: float = typer.Option(30.0, "--grace", help="Seconds between TERM and KILL for each process group."),
) -> None:
    """Stop every process an earlier topo run left on the cluster's nodes (found by the pidfiles in each
    node's workdir/run/): TERM to its process group, KILL after --grace, group proven empty."""
    loaded = load_cluster(cluster)

    async def run() -> int:
        async with open_cluster(loaded) as nodes:
            outcomes = await stop_leftovers(nodes, grace_s=grace)
            containers = await remove_leftover_containers(loaded, nodes)
        for outcome in outcomes:
            console.print(
                f"stopped {outcome.step} on {outcome.node} (process group {outcome.pgid})" + (" with KILL" if outcome.killed else "")
            )
        for container in containers:
            console.print(f"removed container {container}")
        return len(outcomes) + len(containers)

    stopped = asyncio.run(run())
    console.print(f"{stopped} leftover(s) stopped" if stopped else "nothing left over")


def register(app: typer.Typer) -> None:
    app.command("up")(up_command)
    app.command("down")(down_command)
