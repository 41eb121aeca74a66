"""`topo nightly`: sweep into a new folder of the results root, gate it against the baseline, report."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bench.results_folder import ResultsFolder
from reports.console import print_regression
from topo.nightly import BASELINES_FILE, DEFAULT_ROOT, known_tags, plan_nightly, run_nightly
from topo.options import (
    AlphaOption,
    ClusterOption,
    ConcurrencyOption,
    GateHistoryOption,
    GeneratedTokensOption,
    JunitOption,
    MarkdownVerdictOption,
    PromptTokensOption,
    RecipeOption,
    RunsOption,
    TestOption,
    ThresholdOption,
    TopologiesOption,
    TwinHardwareOption,
    parse_concurrency,
    parse_topologies,
    regression_policy,
)
from topo.progress import RichSweepProgress
from topo.exits import EXIT_CODES_HELP, interrupted_exit_code
from topo.sweep import SweepSpec, command_line
from topology.registry import STUDY_TOPOLOGIES

NIGHTLY_CONCURRENCY = "1,2,4,8,16,32,64"


def nightly_command(
    cluster: ClusterOption,
    model: RecipeOption,
    baseline: Annotated[str, typer.Option("--baseline", "-b", help="Tag (ROOT/baselines.json) or results folder "
                                          "to compare with. An unset tag means a first night: sweep, report, "
                                          "exit 0 and say how to set it.")] = "nightly",
    runs: RunsOption = 3,
    concurrency: ConcurrencyOption = NIGHTLY_CONCURRENCY,
    topologies: TopologiesOption = ",".join(STUDY_TOPOLOGIES),
    root: Annotated[Path, typer.Option("--root", help="Results root: the sweep goes to ROOT/MODEL-TIME; "
                                       "tags and the history are read from here.")] = DEFAULT_ROOT,
    junit: JunitOption = None,  # type: ignore[assignment]
    md: MarkdownVerdictOption = None,  # type: ignore[assignment]
    twin_hardware: TwinHardwareOption = None,  # type: ignore[assignment]
    threshold: ThresholdOption = "3%",
    alpha: AlphaOption = 0.05,
    test: TestOption = "intervals",
    gate_history: GateHistoryOption = 20,
    pp: PromptTokensOption = 1024,
    tg: GeneratedTokensOption = 128,
    history_sweeps: Annotated[int, typer.Option("--history", help="How many sweeps (this one included) the "
                                                "report's trend tables and charts cover.", min=1)] = 30,
    require_baseline: Annotated[bool, typer.Option("--require-baseline", help="Exit 2 before sweeping when the "
                                                   "baseline is not set, instead of a first-night exit 0.")]
    = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="The sweep's folder (default ROOT/MODEL-TIME); "
                                      "keep it directly under ROOT, where the history and tags are read.")]
    = None,  # type: ignore[assignment]
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve the baseline, plan every topology and print "
                                          "what would run; start nothing.")] = False,
) -> None:
    """The nightly job: sweep, compare with the baseline, write the reports, exit with the gate's code.

    1. Sweeps the cluster into ROOT/MODEL-TIME (as `topo sweep`, with --runs runs per cell).
    2. Compares it cell by cell with the baseline (as `topo regress`) and writes the JUnit XML and the
       Markdown verdict for CI.
    3. Writes report.md / report.html with the verdict first and each cell's trend over the earlier sweeps
       of the same model under ROOT.

    The JUnit XML and the Markdown verdict default to regress.junit.xml and regress.md in the sweep's
    folder. More runs per cell (the test needs 2+ a side) mean fewer false alarms on noisy cells.

    Exit code: 1 on a regression (or a cell that is missing or failed), 0 when clean, 2 when the input is
    unusable (unknown baseline folder, baseline of another model or load, nothing measured). With no
    baseline yet (the tag is not set) the sweep is still run and reported and the exit code is 0 — or 3
    when a topology failed — and the message says how to mark it: `topo baseline set DIR --tag TAG`.
    130/143/129 when interrupted by Ctrl-C/SIGTERM/SIGHUP (the teardown runs).
    """
    console = Console()
    policy = regression_policy(threshold, alpha, test)  # a bad option fails before an hour of sweeping
    spec = SweepSpec(model=model, cluster=cluster, runs=runs, pp=pp, tg=tg, twin_hardware=twin_hardware,
                     topologies=tuple(parse_topologies(topologies)),
                     concurrency=tuple(parse_concurrency(concurrency)))
    plan = plan_nightly(spec, root, baseline, policy, out=out, junit=junit, markdown=md,
                        history_sweeps=history_sweeps, require_baseline=require_baseline, gate_history=gate_history)
    directory, paths = plan.directory, plan.paths
    if directory.resolve().parent != root.resolve():
        console.print(f"[yellow]note:[/] {directory} is not directly under --root {root}: later nightlies will "
                      "not see it in their history")
    if dry_run:
        console.print(f"[bold]nightly[/] of {escape(spec.model)} on {escape(plan.sweep.cluster.name)} -> {directory}")
        console.print(f"  topologies {', '.join(spec.topologies)}; c={','.join(map(str, spec.concurrency))}; "
                      f"{spec.runs} run(s) per cell; pp{spec.pp} tg{spec.tg}")
        baseline_text = escape(str(plan.baseline_dir)) if plan.baseline_dir else f"none yet (tag {baseline!r})"
        console.print(f"  baseline: {baseline_text}")
        console.print(f"  gate: {escape(policy.test_name)}, threshold {policy.threshold_pct:g}%, α = {policy.alpha:g}; "
                      f"JUnit {paths.junit}, Markdown {paths.markdown}")
        return

    with RichSweepProgress(console) as progress:
        try:
            outcome = asyncio.run(run_nightly(plan, progress, command_line=command_line()))
        except KeyboardInterrupt:
            progress.progress.stop()
            console.print(f"[yellow]interrupted[/]: the measured runs are kept in {directory}; "
                          f"`topo sweep --resume {directory}` completes it, `topo regress` then gates it")
            raise typer.Exit(interrupted_exit_code()) from None

    console.print()
    if outcome.regression is None:
        console.print(f"[bold yellow]no baseline yet[/]: tag {escape(baseline)!r} is not set in "
                      f"{root / BASELINES_FILE} ({known_tags(root)}), so nothing was compared.")
        console.print(f"If this sweep is good, make it the baseline:\n  topo baseline set {directory} "
                      f"--tag {baseline} --root {root}", soft_wrap=True, highlight=False)  # a command to copy: unwrapped
    else:
        print_regression(console, outcome.regression)
        console.print(f"wrote [bold]{paths.junit}[/] and [bold]{paths.markdown}[/]")
    if outcome.sweep.errors:
        console.print(f"[bold red]failed topologies[/]: {', '.join(outcome.sweep.errors)} (details in "
                      f"{ResultsFolder(directory).meta_path})")
    md_path, html_path = outcome.report_paths
    console.print(f"report with the trend over {outcome.trend_sweeps} sweep(s): [bold]{html_path}[/] ({md_path.name})")
    raise typer.Exit(outcome.exit_code)


def register(app: typer.Typer) -> None:
    app.command("nightly", epilog=EXIT_CODES_HELP)(nightly_command)
