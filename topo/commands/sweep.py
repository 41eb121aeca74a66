"""`topo sweep`: the main job — every topology up, every concurrency measured, torn down, reported."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.workload import Load
from common.errors import ConfigError, TopoError
from reports.console import print_results
from reports.results import render_results
from topo.commands.bench import parse_concurrency
from topo.commands import workload_options as options
from topo.sweep import (
    DEFAULT_CONCURRENCY,
    SweepPlan,
    SweepSpec,
    command_line,
    default_out_dir,
    plan_sweep,
    resume_spec,
    run_sweep,
)
from topology.kinds import STUDY_TOPOLOGIES


class RichSweepProgress:
    """One bar over every measured run of the sweep (ETA included), a status line, a summary per cell."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}", style="dim"),
            console=console,
            transient=False,
        )
        self.task: Any = None

    def __enter__(self) -> RichSweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _status(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, status=escape(text[:90]))

    # BringUpProgress
    def event(self, step: str | None, message: str, *, log_line: bool = False) -> None:
        self._status(f"{step}: {message}" if step else message)

    # SweepProgress
    def sweep_started(self, total_runs: int, already_done: int) -> None:
        self.task = self.progress.add_task("sweep", total=total_runs, completed=already_done, status="")
        if already_done:
            self.console.print(f"resuming: {already_done} of {total_runs} runs are already measured")

    def topology_started(self, topology: str, loads: Sequence[Load]) -> None:
        self.progress.update(self.task, description=topology)
        self.console.print(f"[bold cyan]{topology}[/]: bringing it up, then {','.join(l.label for l in loads)}")

    def topology_up(self, topology: str, startup_s: float) -> None:
        self.console.print(f"  {topology} up after {startup_s:.1f} s")

    def run_done(self, topology: str, load: Load, run: int, warmup: bool) -> None:
        if warmup:
            self._status(f"{load.label}: warm-up done")
            return
        self.progress.advance(self.task)
        self._status(f"{load.label}: run {run + 1} done")

    def cell_done(self, topology: str, load: Load, rows: list[dict[str, Any]], warnings: list[str]) -> None:
        if not rows:
            return

        def mean(key: str) -> float:
            values = [float(r[key]) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))]
            return sum(values) / len(values) if values else math.nan

        failed = sum(int(r.get("failed") or 0) for r in rows)
        failed_text = f"  [red]{failed} failed[/]" if failed else ""
        if warnings:  # details go to meta.json and the report's caveats; here one flag keeps the log readable
            failed_text += "  [yellow]client-bound?[/]"
        # one line in 80 columns: topology, level, the three figures of the winner tables (mean over runs)
        self.console.print(
            f"  {topology} {load.label:<4} decode {mean('decode_tps'):6.1f} t/s  prefill {mean('prefill_tps'):6.0f} t/s"
            f"  TTFT {mean('ttft_ms'):6.0f} ms{failed_text}", highlight=False
        )

    def topology_failed(self, topology: str, error: TopoError) -> None:
        self.console.print(f"[bold red]{topology} failed:[/] {escape(str(error))}")
        self.console.print("  its measured runs are kept; the sweep goes on with the next topology")

    def note(self, message: str) -> None:
        self.console.print(f"  [yellow]note:[/] {escape(message)}")


def _print_dry_run(console: Console, sweep: SweepPlan, out: Path) -> None:
    from topology.render import plan_text

    spec = sweep.spec
    console.print(f"[bold]sweep[/] of {spec.model} on cluster {sweep.cluster.name} -> {out}")
    if sweep.suite is not None:
        console.print(f"  topologies {', '.join(spec.topologies)}; workload {sweep.suite.name}: "
                      + ", ".join(f"{c.workload} {c.label}" for c in sweep.points))
    else:
        console.print(f"  topologies {', '.join(spec.topologies)}; c={','.join(map(str, spec.concurrency))}; "
                      f"{spec.runs} run(s) per cell after one warm-up batch; pp{spec.pp} tg{spec.tg}")
    console.print(f"  {len(sweep.cells())} cells, {sweep.total_runs} measured runs\n")
    for item in sweep.topologies:
        console.rule(item.topology)
        console.print(plan_text(item.launch), end="")


def sweep_command(
    model: str = typer.Option("gemma4-26b", "--model", "-m", help="Model recipe: a name under configs/models/ "
                              "or a YAML path."),
    cluster: str = typer.Option("local-twin", "--cluster", help="Cluster inventory: a name under configs/clusters/ "
                                "or a YAML path. Default: two emulated DGX Spark on this machine (no root, no GPU)."),
    topologies: str = typer.Option(",".join(STUDY_TOPOLOGIES), "--topologies", "-t",
                                   help="Comma-separated topologies, measured in this order."),
    concurrency: str = typer.Option(",".join(map(str, DEFAULT_CONCURRENCY)), "--concurrency", "-c",
                                    help="Concurrency levels: each is a closed batch of exactly c requests."),
    runs: int = typer.Option(1, "--runs", "-r", help="Measured runs per cell, after one discarded warm-up batch. "
                             "1 keeps the default sweep under 10 minutes; 50 is the published study's method."),
    pp: int = typer.Option(1024, "--pp", help="Prompt tokens per request."),
    tg: int = typer.Option(128, "--tg", help="Generated tokens per request."),
    latency_mode: str = typer.Option("api", "--latency-mode", help="api, generation or none (see METRICS.md)."),
    twin_hardware: str = typer.Option(None, "--twin-hardware", help="Override the hardware profile of every twin "
                                      "node (e.g. `fast` for a quick check, or a profile YAML path)."),
    out: Path = typer.Option(None, "--out", "-o", help="Results folder (default: results/MODEL-TIME)."),
    resume: Path = typer.Option(None, "--resume", help="Continue a sweep that stopped: measures only the runs "
                                "missing in that folder, with the settings stored in its meta.json."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every topology's commands and the cells; "
                                 "start nothing."),
    seed: int = typer.Option(None, "--seed", help="Seed for prompt offsets (default: random)."),
    workload: str = options.WORKLOAD,
    only: str = options.ONLY,
    dataset: Path = options.DATASET,
    rate_scale: float = options.RATE_SCALE,
) -> None:
    """Bring the cluster up in each topology, sweep the concurrency levels, tear it down, write a report.

    For each topology: start it (readiness by HTTP probes), run every concurrency level (llama-benchy
    semantics: one warm-up batch, then RUNS closed batches of exactly c streamed requests of PP prompt
    tokens and TG generated tokens), tear it down (always, also on failure and Ctrl-C). Every measured run is
    written at once to the results folder; report.md and report.html (winner tables for decode, prefill and
    TTFT, Ray vs no-Ray, recommendations, charts) are written at the end. A topology that fails to come up
    is recorded and the sweep goes on. Ctrl-C stops cleanly; `--resume DIR` continues where it stopped.
    """
    console = Console()
    if resume is not None:
        if out is not None and out != resume:
            raise ConfigError("--resume DIR writes into DIR; drop --out")
        spec = resume_spec(resume)
        directory = resume
    else:
        spec = SweepSpec(
            model=model,
            cluster=cluster,
            topologies=tuple(t.strip() for t in topologies.split(",") if t.strip()),
            concurrency=tuple(parse_concurrency(concurrency)),
            runs=runs,
            pp=pp,
            tg=tg,
            latency_mode=_latency_mode(latency_mode),
            twin_hardware=twin_hardware,
            seed=seed,
            suite=workload,
            only=tuple(options.only_list(only)),
            rate_scale=rate_scale,
            dataset=str(dataset) if dataset is not None else None,
        )
        directory = out or default_out_dir(spec)
    sweep = plan_sweep(spec)
    if dry_run:
        _print_dry_run(console, sweep, directory)
        return
    with RichSweepProgress(console) as progress:
        try:
            outcome = asyncio.run(run_sweep(sweep, directory, progress, command_line=command_line(),
                                            resume=resume is not None))
        except KeyboardInterrupt:
            progress.progress.stop()
            # soft_wrap: a command to copy must not be broken across lines at the terminal's width
            console.print(f"[yellow]interrupted[/]: every finished run is kept in {directory}; continue with\n"
                          f"  topo sweep --resume {directory}", soft_wrap=True, highlight=False)
            raise typer.Exit(130) from None
    if outcome.measured_runs or resume is not None:
        report, md_path, html_path = render_results(directory)
        console.print()
        print_results(console, report)
        console.print(f"\nwrote [bold]{md_path}[/] and [bold]{html_path}[/]")
    else:
        console.print(f"[red]nothing was measured[/]; what happened is in {directory}/meta.json")
    if outcome.errors:
        console.print(f"[bold red]{len(outcome.errors)} topolog{'y' if len(outcome.errors) == 1 else 'ies'} failed[/]: "
                      f"{', '.join(outcome.errors)} (details in {directory}/meta.json); after fixing, "
                      f"`topo sweep --resume {directory}` measures only what is missing", soft_wrap=True, highlight=False)
        raise typer.Exit(1)


def _latency_mode(value: str) -> Any:
    if value not in ("api", "generation", "none"):
        raise ConfigError(f"--latency-mode {value!r}: expected api, generation or none")
    return value


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
