"""`topo doctor`: every node checked before anything starts; a table per node and a verdict."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.doctor import DoctorReport, diagnose
from topo.options import ClusterOption, RecipeOption
from topology.inventory import load_cluster
from topology.recipe import load_recipe

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor_table(report: DoctorReport) -> Table:
    table = Table(title=f"topo doctor: cluster {report.cluster}", show_lines=False, expand=False)
    table.add_column("node", style="bold")
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("detail", overflow="fold")
    previous = None
    for finding in report.findings:
        if previous is not None and finding.node != previous:
            table.add_section()
        node_cell = finding.node if finding.node != previous else ""
        if finding.node != previous:
            verdict = report.node_verdict(finding.node)
            node_cell = f"{finding.node} [{_STYLE[verdict]}]({verdict.upper()})[/]"
        previous = finding.node
        style = _STYLE[finding.verdict]
        table.add_row(node_cell, finding.check, f"[{style}]{finding.verdict.upper()}[/]", escape(finding.detail))
    return table


def print_doctor(console: Console, report: DoctorReport) -> None:
    console.print(doctor_table(report))
    style = "bold red" if report.blocking else "bold green"
    console.print(f"[{style}]{escape(report.summary())}[/]")


def doctor_command(
    cluster: ClusterOption = "local-twin",
    model: RecipeOption = "gemma4-26b",
) -> None:
    """Check every node before a sweep: SSH and sudo-less operation, the fast-link address, MTU and a
    do-not-fragment ping at it between nodes, the engine version or image (the same on all nodes), free
    memory, GPU, ports, clock offset, disk space, leftovers of an earlier run. Exit 0: ready (warnings
    allowed); exit 2: something blocks."""
    loaded = load_cluster(cluster)
    report = asyncio.run(diagnose(loaded, load_recipe(model)))
    print_doctor(Console(highlight=False), report)
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
