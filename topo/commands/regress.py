"""`topo regress`: the regression gate between two results folders (or tags), for CI: exit 1 / 0 / 2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from reports.console import print_regression
from reports.regress import compare_result_dirs, write_gate_outputs
from topo.options import (
    AlphaOption,
    GateHistoryOption,
    JunitOption,
    MarkdownVerdictOption,
    TestOption,
    ThresholdOption,
    regression_policy,
)
from topo.nightly import DEFAULT_ROOT, history_for_gate, resolve_sweep, sweep_label


def regress_command(
    baseline: Annotated[str, typer.Option("--baseline", "-b", help="The good sweep: a results folder, or a tag "
                                          "set with `topo baseline set` (looked up in ROOT/baselines.json).",
                                          show_default=False)],
    current: Annotated[str, typer.Option("--current", help="The sweep to judge: a results folder (or a tag).",
                                         show_default=False)],
    threshold: ThresholdOption = "3%",
    alpha: AlphaOption = 0.05,
    test: TestOption = "intervals",
    history: GateHistoryOption = 20,
    junit: JunitOption = None,  # type: ignore[assignment]
    md: MarkdownVerdictOption = None,  # type: ignore[assignment]
    root: Annotated[Path, typer.Option("--root", help="Where tags are looked up (ROOT/baselines.json).")]
    = DEFAULT_ROOT,
) -> None:
    """Compare every (topology, concurrency, metric) cell of CURRENT with BASELINE by what its noise allows.

    Decode t/s, prefill t/s and TTFT of each cell: a cell with 3+ earlier sweeps under ROOT REGRESSES when it
    is worse by more than the sweep-to-sweep spread those sweeps showed (and than --threshold); a cell
    without that history when it is worse by more than --threshold and its 95% interval lies clear of the
    baseline's (or, with --test welch / mannwhitney, p < --alpha). Improvements, cells without an interval,
    cells missing from CURRENT and cells whose requests failed are reported too; missing and failed cells
    fail the gate like regressions.

    Exit code: 1 when any cell fails the gate, 0 when clean, 2 when the two sweeps cannot be compared
    (unreadable folder, unknown tag, different model or pp/tg, no cell in common).
    """
    console = Console()
    policy = regression_policy(threshold, alpha, test)
    baseline_dir = resolve_sweep(baseline, root)
    current_dir = resolve_sweep(current, root)
    result = compare_result_dirs(baseline_dir, current_dir, policy, baseline_label=sweep_label(baseline, baseline_dir),
                                 current_label=sweep_label(current, current_dir),
                                 history=history_for_gate(root, current_dir, history))
    print_regression(console, result)
    code = write_gate_outputs(result, junit=junit, markdown=md)
    for label, path in (("JUnit", junit), ("Markdown", md)):
        if path is not None:
            console.print(f"[dim]wrote {label} {path}[/]")
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("regress")(regress_command)
