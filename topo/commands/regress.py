"""`topo regress`: the regression gate between two results folders (or tags), for CI: exit 1 / 0 / 2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console

from reports.console import print_regression
from reports.regress import RegressionPolicy, TestName, parse_threshold, write_gate_outputs
from reports.regress import compare_result_dirs
from topo.nightly import DEFAULT_ROOT, resolve_sweep, sweep_label


def policy_from_options(threshold: str, alpha: float, test: str) -> RegressionPolicy:
    # RegressionPolicy checks the test's name and says which ones exist
    return RegressionPolicy(threshold_pct=parse_threshold(threshold), alpha=alpha, test=cast(TestName, test))


def regress_command(
    baseline: Annotated[str, typer.Option("--baseline", "-b", help="The good sweep: a results folder, or a tag "
                                          "set with `topo baseline set` (looked up in ROOT/baselines.json).",
                                          show_default=False)],
    current: Annotated[str, typer.Option("--current", help="The sweep to judge: a results folder (or a tag).",
                                         show_default=False)],
    threshold: Annotated[str, typer.Option("--threshold", help="A cell regresses only when it is worse by more "
                                           "than this (5% or 5) AND the test says it is significant.")] = "5%",
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the one-sided test.")] = 0.05,
    test: Annotated[str, typer.Option("--test", help="welch (Welch's t-test on the per-run values; needs 2+ runs "
                                      "a side) or mannwhitney (rank test; needs 4+ runs a side for α = 0.05).")]
    = "welch",
    junit: Annotated[Path, typer.Option("--junit", help="Write JUnit XML here: one test case per (topology, "
                                        "concurrency, metric) cell, regressions as failures.")] = None,  # type: ignore[assignment]
    md: Annotated[Path, typer.Option("--md", help="Write the verdict as Markdown here (fit for a chat or an "
                                     "issue).")] = None,  # type: ignore[assignment]
    root: Annotated[Path, typer.Option("--root", help="Where tags are looked up (ROOT/baselines.json).")]
    = DEFAULT_ROOT,
) -> None:
    """Compare every (topology, concurrency, metric) cell of CURRENT with BASELINE on their per-run values.

    Decode t/s, prefill t/s and TTFT of each cell are compared with a one-sided statistical test, not a
    ratio of two means: a cell REGRESSES when it is worse by more than --threshold and the test gives
    p < --alpha. Improvements, cells too short of runs to test, cells missing from CURRENT and cells whose
    requests failed are reported too; missing and failed cells fail the gate like regressions.

    Exit code: 1 when any cell fails the gate, 0 when clean, 2 when the two sweeps cannot be compared
    (unreadable folder, unknown tag, different model or pp/tg, no cell in common).
    """
    console = Console()
    policy = policy_from_options(threshold, alpha, test)
    baseline_dir = resolve_sweep(baseline, root)
    current_dir = resolve_sweep(current, root)
    result = compare_result_dirs(baseline_dir, current_dir, policy, baseline_label=sweep_label(baseline, baseline_dir),
                                 current_label=sweep_label(current, current_dir))
    print_regression(console, result)
    code = write_gate_outputs(result, junit=junit, markdown=md)
    for label, path in (("JUnit", junit), ("Markdown", md)):
        if path is not None:
            console.print(f"[dim]wrote {label} {path}[/]")
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("regress")(regress_command)
