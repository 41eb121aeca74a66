"""`topo report DIR`: re-render report.md and report.html of a results folder from its stored data."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from reports.console import print_report
from reports.results import render_results


def report(
    directory: Annotated[Path, typer.Argument(
        metavar="DIR",
        help="A results folder of `topo sweep` (holds cells.parquet; meta.json and requests.parquet are used "
             "when present).", show_default=False)],
    open_browser: Annotated[bool, typer.Option(
        "--open", help="Open report.html in the default browser afterwards.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only write the files; do not print the tables.")] = False,
    margin: Annotated[float, typer.Option(
        "--margin", help="The smallest difference, in %, that makes a winner (default: the sweep's, else 3).",
        show_default=False)] = None,  # type: ignore[assignment]
) -> None:
    """Re-render a sweep's report from its stored results.

    Reads DIR/cells.parquet (one row per topology x concurrency x run), computes the winner tables for
    decode, prefill and TTFT, the Ray vs no-Ray comparison and the "when to use which topology"
    recommendations, prints them, and (over)writes DIR/report.md and DIR/report.html (plotly charts,
    works offline). Nothing is measured again.
    """
    console = Console()
    result, md_path, html_path = render_results(directory, margin_pct=margin)
    if not quiet:
        print_report(console, result)
        console.print()
    console.print(f"wrote [bold]{md_path}[/] and [bold]{html_path}[/]")
    if open_browser:
        webbrowser.open(html_path.resolve().as_uri())


def register(app: typer.Typer) -> None:
    app.command("report")(report)
