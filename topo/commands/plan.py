"""`topo plan`: the dry run. Prints what a topology would start where, in order, without starting anything."""

from __future__ import annotations

import json
from enum import Enum

import typer
from rich.console import Console

from topo.options import (
    ClusterOption,
    DeprecatedClusterFlag,
    RecipeOption,
    deprecated_cluster_flag,
    parse_topologies,
)
from topo.plans import run_plan
from topology.ray_reuse import plan_ray_reuse, ray_run_order, reuse_notes
from topology.registry import STUDY_TOPOLOGIES
from topology.render import plan_json, plan_text


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


def plan_command(
    cluster: ClusterOption = "local-twin",
    model: RecipeOption = "gemma4-26b",
    topology: list[str] = typer.Option(
        None, "--topology", "--topologies", "-t",
        help="Topologies to plan, repeatable or comma-separated; default: the study's "
        f"{', '.join(STUDY_TOPOLOGIES)}.",
    ),
    output_format: OutputFormat = typer.Option(
        OutputFormat.text, "--format", "-f", help="text: readable, per stage and node; json: the whole plan."
    ),
    old_cluster: DeprecatedClusterFlag = None,  # type: ignore[assignment]
) -> None:
    """Print the launch plan of a topology: every command per node, stage by stage, with its environment,
    files, readiness probe and how it is stopped. Nothing is started. Secrets (the proxy's master key) are
    generated fresh and always print as ***.
    """
    cluster = deprecated_cluster_flag("plan", cluster, old_cluster, Console(stderr=True))
    plans = run_plan(cluster, model, parse_topologies(topology))
    if output_format is OutputFormat.json:
        documents = [json.loads(plan_json(launch_plan)) for launch_plan in plans]
        typer.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
        return
    console = Console(highlight=False, soft_wrap=True)
    # what a sweep of these topologies (Ray ones next to each other) would keep up between them
    by_name = {launch_plan.topology: launch_plan for launch_plan in plans}
    run_order = [by_name[name] for name in ray_run_order(list(by_name))]
    notes = reuse_notes(run_order, plan_ray_reuse(run_order))
    for index, launch_plan in enumerate(plans):
        if index:
            console.rule()
        for note in notes[launch_plan.topology]:
            console.print(f"[bold]in a sweep, ray:[/] {note}")
        console.print(plan_text(launch_plan), end="")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
