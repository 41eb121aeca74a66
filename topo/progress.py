"""What a running sweep shows on the terminal: one bar over every measured run (ETA included), a status
line, a summary line per cell. `topo sweep` and `topo nightly` both show it (topo.sweep.SweepProgress and
cluster.bringup.BringUpProgress are the interfaces it implements)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.records import CLIENT_BOUND_MARK
from bench.workload import Load
from common.errors import TopoError


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
        labels = [load.label for load in loads]
        # a workload suite repeats labels across its tests (three tests at 0.3rps): count them, list each once
        plan = ",".join(labels) if len(labels) == len(set(labels)) else \
            f"{len(labels)} load points ({','.join(dict.fromkeys(labels))})"
        self.console.print(f"[bold cyan]{topology}[/]: bringing it up, then {plan}")

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
            failed_text += f"  [yellow]{CLIENT_BOUND_MARK}[/]"
        # a suite's test id goes first: several tests share a label such as 0.3rps
        workload = rows[0].get("workload")
        where = f"{workload} {load.label}" if workload and workload != "default" else f"{load.label:<4}"
        # one line in 80 columns: topology, level, the three figures of the winner tables (mean over runs)
        self.console.print(
            f"  {topology} {where} decode {mean('decode_tps'):6.1f} t/s  prefill {mean('prefill_tps'):6.0f} t/s"
            f"  TTFT {mean('ttft_ms'):6.0f} ms  ({len(rows)} run{'s' if len(rows) > 1 else ''}){failed_text}",
            highlight=False
        )

    def topology_failed(self, topology: str, error: TopoError) -> None:
        self.console.print(f"[bold red]{topology} failed:[/] {escape(str(error))}")
        self.console.print("  its measured runs are kept; the sweep goes on with the next topology")

    def note(self, message: str) -> None:
        self.console.print(f"  [yellow]note:[/] {escape(message)}")
