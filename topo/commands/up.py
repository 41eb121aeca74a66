"""`topo up` and `topo down`: bring one topology up on a cluster and keep it up; stop what a run left behind."""

from __future__ import annotations

import asyncio

import typer
from rich.markup import escape
from rich.console import Console

from cluster.bringup import Leftovers, bring_up, open_cluster, stop_leftovers
from cluster.progress import ConsoleProgress
from topo.exits import EXIT_CODES_HELP, interrupted_exit_code
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
    or --hold seconds (SIGTERM and SIGHUP count as Ctrl-C), then tear it down and prove nothing is left. Pre-flight first: nodes reachable,
    ports free, no processes of an earlier run. A failure shows the failing process's log tail.
    """
    loaded = load_cluster(cluster)
    launch = plan(parse_topology(topology), loaded, load_recipe(model), secrets=PlanSecrets.generate())

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
        asyncio.run(hold_up())
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("torn down after an interrupt")
        raise typer.Exit(interrupted_exit_code()) from None


def down_command(
    cluster: str = CLUSTER_OPTION,
    grace: float = typer.Option(30.0, "--grace", help="Seconds between TERM and KILL for each process group."),
) -> None:
    """Stop every process an earlier topo run left on the cluster's nodes (found by the pidfiles in each
    node's workdir/run/): TERM to its process group, KILL after --grace, group proven empty. A pidfile
    whose process is no longer the one topo started (start time and boot id differ) is reported and left
    alone: exit 3 then, after the rest was stopped."""
    loaded = load_cluster(cluster)

    async def run() -> Leftovers:
        async with open_cluster(loaded) as nodes:
            return await stop_leftovers(nodes, grace_s=grace)

    leftovers = asyncio.run(run())
    for outcome in leftovers.stopped:
        console.print(
            f"stopped {outcome.step} on {outcome.node} (process group {outcome.pgid})" + (" with KILL" if outcome.killed else "")
        )
    for note in leftovers.foreign:
        console.print(f"[yellow]not stopped:[/] {escape(note)}")
    stopped = len(leftovers.stopped)
    console.print(f"{stopped} leftover process group(s) stopped" if stopped else "nothing left over")
    if leftovers.foreign:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command("up", epilog=EXIT_CODES_HELP)(up_command)
    app.command("down")(down_command)
