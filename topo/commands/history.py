"""`topo history` (the sweeps under a results root and their trend) and `topo baseline set|list` (tags)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.results_folder import ResultsFolder
from reports.names import display_name, ordered_topologies
from reports.tables import MetricSpec, format_pct, format_value
from topo.nightly import (
    BASELINES_FILE,
    DEFAULT_ROOT,
    SweepEntry,
    list_sweeps,
    metric_spec,
    query_history,
    read_entry,
    same_kind,
    set_tag,
    summarize_history,
    tag_details,
)

RootOption = Annotated[Path, typer.Option(
    "--root", help="The folder holding one results folder per sweep (what `topo sweep` / `topo nightly` write).")]


def _when(entry: SweepEntry) -> str:
    return _local_time(entry.started_at)


def _local_time(text: str | None, short: bool = False) -> str:
    """ISO time -> `2026-11-23 20:08` in the local zone (what a person compares with their clock)."""
    if not text:
        return "—"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M")


def sweeps_table(entries: list[SweepEntry], first_index: int) -> Table:
    # the year is in the folder name already: the short time keeps the list within 100 columns
    table = Table(title="Sweeps (oldest first)", title_style="bold", box=box.SIMPLE_HEAVY, pad_edge=False)
    show_kind = any(e.kind != "sweep" for e in entries)  # `topo predict --out` folders sit there too
    headers = ["#", "Started", "Folder", *(["Kind"] if show_kind else []), "Model", "Cluster", "Status", "Tags",
               "git"]
    for header in headers:
        table.add_column(header, justify="right" if header == "#" else "left",
                         no_wrap=header in ("#", "Started", "Folder", "Model", "Status"), overflow="fold")
    for index, entry in enumerate(entries, start=first_index):
        status = entry.status or "—"
        colour = "green" if status == "complete" else "yellow"
        table.add_row(str(index), _local_time(entry.started_at, short=True), escape(entry.name), *([entry.kind] if show_kind else []),
                      escape(entry.model or "—"), escape(entry.cluster or "—"), f"[{colour}]{escape(status)}[/]",
                      escape(", ".join(entry.tags)), escape(entry.git_describe or "—"))
    return table


def history_command(
    root: RootOption = DEFAULT_ROOT,
    topology: Annotated[str, typer.Option("--topology", "-t", help="Only this topology's cells in the trend "
                                          "(solo, tp2-mp, tp2-ray, 2x-solo-shuffle, ...).")] = None,  # type: ignore[assignment]
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Only this concurrency level's cells "
                                             "in the trend.")] = None,  # type: ignore[assignment]
    metric: Annotated[str, typer.Option("--metric", help="decode_tps (decode t/s total), prefill_tps (prefill "
                                        "t/s total) or ttft_ms (mean TTFT).")] = "decode_tps",
    last: Annotated[int, typer.Option("--last", "-n", help="How many of the most recent sweeps to list and "
                                      "trend.", min=1)] = 8,
    model: Annotated[str, typer.Option("--model", "-m", help="Trend the sweeps of this model (default: the "
                                       "newest sweep's model, load and kind).")] = None,  # type: ignore[assignment]
) -> None:
    """List the sweeps under ROOT and show how the chosen cells moved from sweep to sweep.

    Every folder under ROOT holding a cells.parquet is a sweep (meta.json supplies its time, model,
    cluster, status and git describe; ROOT/baselines.json its tags). The trend is one DuckDB query over
    ROOT/*/cells.parquet: per topology and concurrency, the metric's mean over each sweep's runs, one
    column per sweep (numbered as in the list), and the change from the first shown sweep to the last.
    Only sweeps of one model with the same prompt/generation lengths are trended together.
    """
    console = Console()
    spec = metric_spec(metric)
    entries = list_sweeps(root)
    if not entries:
        console.print(f"no sweeps under {root} (a sweep is a folder with cells.parquet); run `topo sweep` or "
                      f"`topo nightly` with --root {root}")
        return
    shown = entries[-last:]
    console.print(sweeps_table(shown, first_index=len(entries) - len(shown) + 1))
    numbers = {e.name: index for index, e in enumerate(entries, start=1)}
    if model is not None:
        trended = [e for e in entries if e.model == model or (e.model and Path(e.model).stem == model)]
        if not trended:
            console.print(f"[yellow]no sweep of model {escape(model)} under {root}[/]")
            return
        trended = same_kind(trended, trended[-1])
    else:
        trended = same_kind(entries, entries[-1])
    trended = trended[-last:]
    history = query_history(trended, topology=topology, concurrency=concurrency)
    if history.empty:
        wanted = " ".join(f"{k} {v}" for k, v in (("topology", topology), ("c", concurrency)) if v is not None)
        console.print(f"[yellow]no cell matches {escape(wanted)} in these sweeps[/]")
        return
    console.print(trend_table(summarize_history(history, spec), [e.name for e in trended], numbers, spec))
    model_text = trended[-1].model or "?"
    console.print(f"[dim]{len(trended)} sweep(s) of {escape(model_text)} (pp{trended[-1].pp} tg{trended[-1].tg}); "
                  f"mean over each sweep's runs; {'higher' if spec.higher_is_better else 'lower'} is better; "
                  f"Change = last vs first shown, red when more than 5% worse[/]")


def trend_table(summary: pd.DataFrame, sweeps: list[str], numbers: dict[str, int], spec: MetricSpec) -> Table:
    """Rows = (topology, c), one column per sweep (#n as in the list), then the change first -> last shown."""
    table = Table(title=f"Trend: {spec.title} ({spec.unit})", title_style="bold", box=box.SIMPLE_HEAVY)
    table.add_column("Topology")
    table.add_column("c", justify="right")
    for sweep in sweeps:
        table.add_column(f"#{numbers[sweep]}", justify="right")
    table.add_column("Change", justify="right")
    means = {(r.sweep, r.topology, int(r.concurrency)): (float(r.mean), r.runs) for r in summary.itertuples()}
    for topology in ordered_topologies(summary["topology"].astype(str).unique()):
        for concurrency in sorted(summary.loc[summary["topology"] == topology, "concurrency"].unique()):
            values = [means.get((s, topology, int(concurrency)), (math.nan, 0))[0] for s in sweeps]
            present = [v for v in values if not math.isnan(v)]
            change = (present[-1] - present[0]) / present[0] * 100 if len(present) >= 2 and present[0] else math.nan
            worse = -change if spec.higher_is_better else change
            colour = "red" if worse > 5 else ("green" if worse < -5 else "")
            change_text = format_pct(change)
            table.add_row(escape(display_name(topology)), str(int(concurrency)),
                          *[format_value(v) for v in values],
                          f"[{colour}]{change_text}[/]" if colour else change_text)
    return table


baseline_app = typer.Typer(help="Mark a good sweep as the baseline the nightly gate compares against.",
                           no_args_is_help=True)


@baseline_app.command("set")
def baseline_set(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A results folder (holds cells.parquet).",
                                              show_default=False)],
    tag: Annotated[str, typer.Option("--tag", help="The name to give it, e.g. `nightly` (what `topo nightly "
                                     "--baseline` looks up). Setting an existing tag moves it.")] = "nightly",
    root: RootOption = DEFAULT_ROOT,
    force: Annotated[bool, typer.Option("--force", help="Mark a sweep that is not complete (some topology "
                                        "failed or it was interrupted) anyway.")] = False,
) -> None:
    """Tag DIR as a baseline: `topo regress --baseline TAG` and `topo nightly --baseline TAG` compare with it.

    Tags are kept in ROOT/baselines.json, as folder names relative to ROOT (absolute when DIR is outside
    ROOT); the results folder itself is never modified. Only a complete sweep can be a baseline unless
    --force: a baseline without a topology would let that topology's cells pass the gate as "new".
    """
    console = Console()
    change = set_tag(root, directory, tag, allow_incomplete=force)
    entry = read_entry(change.folder)
    moved = f" (was {change.previous.name})" if change.previous and change.previous.resolve() != change.folder.resolve() else ""
    console.print(f"baseline [bold]{escape(change.tag)}[/] -> {escape(str(change.folder))}{escape(moved)}: "
                  f"{escape(entry.model or '?')}, started {_when(entry)}, status {entry.status or '—'}")
    console.print(f"[dim]stored in {root / BASELINES_FILE}[/]")


@baseline_app.command("list")
def baseline_list(root: RootOption = DEFAULT_ROOT) -> None:
    """The tags of ROOT/baselines.json and the sweeps they name."""
    console = Console()
    details = tag_details(root)
    if not details:
        console.print(f"no baseline tags under {root}; mark a good sweep with `topo baseline set DIR --tag nightly`")
        return
    table = Table(title="Baselines", title_style="bold", box=box.SIMPLE_HEAVY, pad_edge=False)
    for header in ("Tag", "Folder", "Model", "Started", "Status", "Set at"):
        table.add_column(header, overflow="fold", no_wrap=True)
    for tag, item in sorted(details.items()):
        folder = root / str(item["folder"])
        if ResultsFolder(folder).has_cells():
            entry = read_entry(folder)
            facts = [escape(entry.model or "—"), _when(entry), escape(entry.status or "—")]
        else:
            facts = ["[red]folder missing[/]", "", ""]
        table.add_row(escape(tag), escape(str(item["folder"])), *facts, _local_time(item.get("set_at")))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("history")(history_command)
    app.add_typer(baseline_app, name="baseline")
