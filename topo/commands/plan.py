"""`topo plan`: the dry run. Prints what a topology would start where, in order, without starting anything."""

from __future__ import annotations

import json
from enum import Enum

import typer
from rich.console import Console

from topology.inventory import load_cluster
from topology.kinds import STUDY_TOPOLOGIES, PlanSecrets, parse_topology, plan
from topology.recipe import load_recipe
from topology.render import plan_json, plan_text


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


def plan_command(
    cluster: str = typer.Option(
        "local-twin",
        "--cluster",
        "-c",
        help="Cluster inventory: a name in configs/clusters (local-twin, the two emulated nodes on this "
        "machine) or a YAML path.",
    ),
    model: str = typer.Option(
        "gemma4-26b", "--model", "-m", help="Model recipe: a name in configs/models or a YAML path."
    ),
    topology: list[str] = typer.Option(
        None,
        "--topology",
        "-t",
        help="solo, tp2-mp, tp2-ray, 2x-solo-shuffle (or tpN-mp, tpN-ray, Nx-solo-shuffle). Repeatable or "
        "comma-separated; default: the four of the study.",
    ),
    output_format: OutputFormat = typer.Option(
        OutputFormat.text, "--format", "-f", help="text: readable, per stage and node; json: the whole plan."
    ),
) -> None:
    """Print the launch plan of a topology: every command per node, stage by stage, with its environment,
    files, readiness probe and how it is stopped. Nothing is started. Secrets (the proxy's master key) are
    generated fresh and always print as ***.
    """
    loaded_cluster = load_cluster(cluster)
    recipe = load_recipe(model)
    names = [name.strip() for value in topology or [] for name in value.split(",") if name.strip()]
    names = names or list(STUDY_TOPOLOGIES)
    secrets = PlanSecrets.generate()
    plans = [plan(parse_topology(name), loaded_cluster, recipe, secrets=secrets) for name in names]
    console = Console(highlight=False, soft_wrap=True)
    if output_format is OutputFormat.json:
        documents = [json.loads(plan_json(launch_plan)) for launch_plan in plans]
        typer.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
        return
    for index, launch_plan in enumerate(plans):
        if index:
            console.rule()
        console.print(plan_text(launch_plan), end="")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
