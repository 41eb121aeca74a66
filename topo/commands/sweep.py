"""`topo sweep`: the main job — every topology up, every concurrency measured, torn down, reported."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from rich.markup import escape

from bench.results_folder import ResultsFolder
from common.errors import ConfigError
from topo.exits import EXIT_CODES_HELP, EXIT_FAILURES, interrupted_exit_code
from reports.console import print_results
from reports.results import render_results
from reports.tables import DEFAULT_MARGIN_PCT
from topo.adaptive import DEFAULT_MAX_RUNS, DEFAULT_PRECISION_PCT
from topo.options import (
    ClusterOption,
    ConcurrencyOption,
    DatasetOption,
    GeneratedTokensOption,
    LatencyModeOption,
    MarginOption,
    OnlyOption,
    OutOption,
    PromptTokensOption,
    RateScaleOption,
    RecipeOption,
    SeedOption,
    TopologiesOption,
    TwinHardwareOption,
    WorkloadOption,
    only_list,
    parse_concurrency,
    parse_topologies,
)
from topo.progress import RichSweepProgress
from topo.watchdog import WatchdogSettings
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
from topology.registry import STUDY_TOPOLOGIES


def _print_dry_run(console: Console, sweep: SweepPlan, out: Path) -> None:
    from topology.ray_reuse import reuse_notes
    from topology.render import plan_text

    spec = sweep.spec
    order = [item.topology for item in sweep.topologies]
    notes = reuse_notes([item.launch for item in sweep.topologies], sweep.ray_reuse)
    console.print(f"[bold]sweep[/] of {spec.model} on cluster {sweep.cluster.name} -> {out}")
    if sweep.suite is not None:
        console.print(f"  topologies {', '.join(order)}; workload {sweep.suite.name}: "
                      + ", ".join(f"{c.workload} {c.label}" for c in sweep.points))
    else:
        console.print(f"  topologies {', '.join(order)}; c={','.join(map(str, spec.concurrency))}; "
                      f"runs per cell {spec.runs_text}, after one short warm-up batch; pp{spec.pp} tg{spec.tg}")
    most = "at most " if spec.adaptive else ""
    console.print(f"  {len(sweep.cells())} cells, {most}{sweep.total_runs} measured runs\n")
    for item in sweep.topologies:
        console.rule(item.topology)
        for note in notes[item.topology]:
            console.print(f"[bold]ray:[/] {note}", highlight=False, soft_wrap=True)
        console.print(plan_text(item.launch), end="")


def sweep_command(
    model: RecipeOption = "gemma4-26b",
    cluster: ClusterOption = "local-twin",
    topologies: TopologiesOption = ",".join(STUDY_TOPOLOGIES),
    concurrency: ConcurrencyOption = ",".join(map(str, DEFAULT_CONCURRENCY)),
    runs: str = typer.Option("auto", "--runs", "-r", help="Measured runs per cell, after one short warm-up batch: "
                             "auto measures each cell until its 95% intervals are within ±--precision or the "
                             "winner call at its level is settled (at most --max-runs); a number fixes the count "
                             "(50 is the published study's method)."),
    max_runs: int = typer.Option(DEFAULT_MAX_RUNS, "--max-runs", help="--runs auto: at most this many runs per cell."),
    precision: float = typer.Option(DEFAULT_PRECISION_PCT, "--precision", help="--runs auto: a cell is precise "
                                    "enough when every headline metric's 95% interval is within ± this % of its mean."),
    margin: MarginOption = DEFAULT_MARGIN_PCT,
    twin_noise_cv: float = typer.Option(None, "--twin-noise-cv", help="Per-step jitter of every twin node "
                                        "(coefficient of variation of a step's time, seeded; 0 = deterministic): "
                                        "for trying intervals, ties and adaptive runs on a noisy engine."),
    pp: PromptTokensOption = 1024,
    tg: GeneratedTokensOption = 128,
    latency: LatencyModeOption = "api",
    twin_hardware: TwinHardwareOption = None,  # type: ignore[assignment]
    out: OutOption = None,  # type: ignore[assignment]
    resume: Path = typer.Option(None, "--resume", help="Continue a sweep that stopped: measures only the runs "
                                "missing in that folder, with the settings stored in its meta.json."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every topology's commands and the cells; "
                                 "start nothing."),
    seed: SeedOption = None,  # type: ignore[assignment]
    telemetry_interval: float = typer.Option(1.0, "--telemetry-interval", help="Seconds between samples of every "
                                             "engine's /metrics and every node (nvidia-smi, memory, CPU) into "
                                             "telemetry.parquet; 0 switches sampling off."),
    timeout: float = typer.Option(600.0, "--timeout", help="Deadline on progress: a request without a generated "
                                  "token for this many seconds is recorded as failed (a whole request may take "
                                  "10 x this at most)."),
    max_failed_share: float = typer.Option(0.0, "--max-failed-share", help="A run counts as measured only when "
                                           "at most this share of its requests failed (default 0: all succeeded); "
                                           "other runs are stored as failed and `--resume` measures them again."),
    no_doctor: bool = typer.Option(False, "--no-doctor", help="Skip `topo doctor`'s blocking checks, which "
                                   "otherwise run before anything starts."),
    stall_timeout: float = typer.Option(WatchdogSettings.stall_s, "--stall-timeout", min=1.0, help="Watchdog: "
                                        "seconds without a token on any in-flight request before the topology "
                                        "counts as hung (it is then restarted once and the cell retried)."),
    no_watchdog: bool = typer.Option(False, "--no-watchdog", help="Never restart a topology that stops serving."),
    workload: WorkloadOption = None,  # type: ignore[assignment]
    only: OnlyOption = None,  # type: ignore[assignment]
    dataset: DatasetOption = None,  # type: ignore[assignment]
    rate_scale: RateScaleOption = 1.0,
) -> None:
    """Bring the cluster up in each topology, sweep the concurrency levels, tear it down, write a report.

    For each topology: start it (readiness by HTTP probes), run every concurrency level (llama-benchy
    semantics: one warm-up batch, then RUNS closed batches of exactly c streamed requests of PP prompt
    tokens and TG generated tokens), tear it down (always, also on failure and Ctrl-C). Every measured run is
    written at once to the results folder; report.md and report.html (winner tables for decode, prefill and
    TTFT, Ray vs no-Ray, recommendations, charts) are written at the end. A topology that fails to come up
    is recorded and the sweep goes on. Ctrl-C, SIGTERM and SIGHUP stop cleanly; `--resume DIR` continues
    where it stopped.
    The results folder defaults to results/MODEL-TIME.
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
            topologies=tuple(parse_topologies(topologies)),
            concurrency=tuple(parse_concurrency(concurrency)),
            runs=parse_runs(runs),
            max_runs=max_runs,
            precision_pct=precision,
            margin_pct=margin,
            twin_noise_cv=twin_noise_cv,
            pp=pp,
            tg=tg,
            latency_mode=latency,  # type: ignore[arg-type]
            twin_hardware=twin_hardware,
            seed=seed,
            telemetry_interval_s=telemetry_interval,
            request_timeout_s=timeout,
            max_failed_share=max_failed_share,
            suite=workload,
            only=tuple(only_list(only)),
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
                                            resume=resume is not None, check_nodes=not no_doctor,
                                            watchdog=None if no_watchdog else WatchdogSettings(stall_s=stall_timeout)))
        except KeyboardInterrupt:
            progress.progress.stop()
            # soft_wrap: a command to copy must not be broken across lines at the terminal's width
            console.print(f"[yellow]interrupted[/]: every finished run is kept in {directory}; continue with\n"
                          f"  topo sweep --resume {directory}", soft_wrap=True, highlight=False)
            raise typer.Exit(interrupted_exit_code()) from None
    if outcome.measured_runs or resume is not None:
        report, md_path, html_path = render_results(directory)
        console.print()
        print_results(console, report)
        console.print(f"\nwrote [bold]{md_path}[/] and [bold]{html_path}[/]")
        if outcome.timing:
            console.print(f"time to decision: {outcome.timing_text()}", highlight=False)
    else:
        console.print(f"[red]nothing was measured[/]; what happened is in {ResultsFolder(directory).meta_path}")
    if outcome.errors:
        console.print(f"[bold red]{len(outcome.errors)} topolog{'y' if len(outcome.errors) == 1 else 'ies'} failed[/]: "
                      f"{', '.join(outcome.errors)} (details in {ResultsFolder(directory).meta_path})", soft_wrap=True, highlight=False)
    if outcome.short_cells:
        console.print(f"[bold red]{len(outcome.short_cells)} cell(s) short of measured runs[/]: "
                      + escape("; ".join(outcome.short_cells)), soft_wrap=True, highlight=False)
    if outcome.errors or outcome.short_cells:
        console.print(f"after fixing the cause, `topo sweep --resume {directory}` measures only what is missing "
                      "or failed", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_FAILURES)


def parse_runs(text: str) -> int | None:
    """`--runs auto` (None: adaptive) or a positive whole number."""
    if text.strip().lower() == "auto":
        return None
    try:
        runs = int(text)
    except ValueError:
        raise ConfigError(f"--runs {text!r}: expected auto or a whole number of runs") from None
    if runs < 1:
        raise ConfigError(f"--runs {text!r}: at least 1 run (or auto)")
    return runs


def register(app: typer.Typer) -> None:
    app.command("sweep", epilog=EXIT_CODES_HELP)(sweep_command)
