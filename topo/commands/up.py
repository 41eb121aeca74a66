"""`topo up` and `topo down`: bring one topology up on a cluster and keep it up; stop what a run left behind."""

from __future__ import annotations

import asyncio

import typer
from rich.markup import escape
from rich.console import Console

from cluster.bringup import Running
from cluster.progress import ConsoleProgress
from topo.options import (
    TOPOLOGY_NAMES,
    ClusterOption,
    DeprecatedClusterFlag,
    RecipeOption,
    deprecated_cluster_flag,
)
from topo.up import plan_up, run_down, run_up
from topo.exits import EXIT_CODES_HELP, interrupted_exit_code

console = Console(highlight=False, soft_wrap=True)


def up_command(
    topology: str = typer.Option(..., "--topology", "-t", help=f"The topology: {TOPOLOGY_NAMES}."),
    cluster: ClusterOption = "local-twin",
    model: RecipeOption = "gemma4-26b",
    hold: float = typer.Option(0.0, "--hold", help="Seconds to keep it up, then tear down; 0: until Ctrl-C."),
    old_cluster: DeprecatedClusterFlag = None,  # type: ignore[assignment]
) -> None:
    """Bring a topology up (the very plan `topo plan` prints), print its endpoint, keep it up until Ctrl-C
    or --hold seconds (SIGTERM and SIGHUP count as Ctrl-C), then tear it down and prove nothing is left. Pre-flight first: nodes reachable,
    ports free, no processes of an earlier run. A failure shows the failing process's log tail.
    """
    cluster = deprecated_cluster_flag("up", cluster, old_cluster, Console(stderr=True))
    launch = plan_up(topology, cluster, model)

    def on_up(progress: ConsoleProgress, running: Running) -> None:
        progress.console.print(
            f"[green]{launch.topology} is up[/] after {running.bring_up_s:.1f} s: {running.endpoint} "
            f"(model {launch.served_model_name})"
            + (" - needs the proxy's master key (Authorization header)" if launch.endpoint_headers else "")
        )
        if hold <= 0:
            progress.console.print("Ctrl-C tears it down")

    try:
        run_up(launch, cluster, hold, on_up)
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("torn down after an interrupt")
        raise typer.Exit(interrupted_exit_code()) from None


def down_command(
    cluster: ClusterOption = "local-twin",
    grace: float = typer.Option(30.0, "--grace", help="Seconds between TERM and KILL for each process group."),
    old_cluster: DeprecatedClusterFlag = None,  # type: ignore[assignment]
) -> None:
    """Stop every process an earlier topo run left on the cluster's nodes (found by the pidfiles in each
    node's workdir/run/): TERM to its process group, KILL after --grace, group proven empty. A pidfile
    whose process is no longer the one topo started (start time and boot id differ) is reported and left
    alone: exit 3 then, after the rest was stopped."""
    cluster = deprecated_cluster_flag("down", cluster, old_cluster, Console(stderr=True))
    leftovers = run_down(cluster, grace)
    for outcome in leftovers.stopped:
        console.print(f"stopped {outcome.step} on {outcome.node} (process group {outcome.pgid})"
                      + (" with KILL" if outcome.killed else ""))
    for note in leftovers.foreign:
        console.print(f"[yellow]not stopped:[/] {escape(note)}")
    stopped = len(leftovers.stopped)
    console.print(f"{stopped} leftover process group(s) stopped" if stopped else "nothing left over")
    if leftovers.foreign:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command("up", epilog=EXIT_CODES_HELP)(up_command)
    app.command("down")(down_command)
