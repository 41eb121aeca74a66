"""`topo bench`'s job: llama-benchy-style load against one endpoint, level by level, stored as it goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.metrics import cell_summary
from bench.records import RequestRecord
from bench.results_folder import FolderMeta, ResultsFolder
from bench.session import BenchSession, RunDone
from bench.suite import Suite
from bench.workload import ClosedLoad
from common.masking import mask_url_credentials
from reports.console import print_tables
from reports.workloads import WorkloadReport
from topo.sweep import command_line, now_utc


def _bench_meta(session: BenchSession, levels: list[int], runs: int, topology: str) -> FolderMeta:
    settings = session.settings
    endpoint = mask_url_credentials(session.endpoint.base_url)  # Endpoint strips them; a second guard
    return FolderMeta(kind="bench", status="running", started_at=now_utc(), command_line=command_line(),
                      spec={"endpoint": endpoint, "model": session.model, "topology": topology,
                            "workload": settings.workload, "concurrency": levels, "runs": runs, "pp": settings.pp,
                            "tg": settings.tg, "depth": settings.depth, "latency_mode": settings.latency_mode,
                            "seed": settings.seed})


async def run_bench(session: BenchSession, levels: list[int], runs: int, topology: str, out: Path | None,
                    console: Console) -> tuple[str, list[dict[str, Any]], list[str], list[str]]:
    """Every level against the session's endpoint (warm-up, then `runs` closed batches), a progress bar
    on `console`, every run stored in the results folder `out` as it finishes. Returns the served model, a
    summary per level, warnings and notes."""
    folder = ResultsFolder(out) if out is not None else None
    summaries: list[dict[str, Any]] = []
    warnings: list[str] = []
    meta: FolderMeta | None = None
    try:
        model = await session.open()
        console.print(f"[bold]{escape(model)}[/] at {escape(str(session.endpoint))}; latency "
                      f"({session.settings.latency_mode}) {session.latency * 1000:.2f} ms", highlight=False)
        for note in session.notes:
            console.print(f"  {escape(note)}", highlight=False)
        session.notes.clear()
        if folder is not None:
            meta = _bench_meta(session, levels, runs, topology)
            folder.write_meta(meta)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            for level in levels:
                task = progress.add_task(f"c={level:<3} warm-up", total=(runs + 1) * level)
                failures: list[int] = []

                def on_request(record: RequestRecord, task: Any = task) -> None:
                    progress.advance(task)

                def on_run(done: RunDone, task: Any = task, level: int = level, failures: list[int] = failures) -> None:
                    if not done.warmup and folder is not None:
                        folder.append(done.records, [done.row] if done.row else [])
                    failures.append(sum(1 for r in done.records if not r.ok) if not done.warmup else 0)
                    finished = "warm-up done" if done.warmup else f"run {done.run + 1}/{runs} done"
                    progress.update(task, description=f"c={level:<3} {finished}" + (
                        f" [red]{sum(failures)} failed[/]" if sum(failures) else ""))
                    if done.warmup:
                        first_error = next((r.error for r in done.records if r.error), None)
                        if first_error:
                            progress.console.print(f"[yellow]warm-up c={level}: {escape(first_error)}[/]")

                result = await session.run(ClosedLoad(level), runs, topology=topology, on_run=on_run,
                                           on_request=on_request)
                summaries.append(cell_summary(result.run_rows, result.records))
                warnings.extend(result.warnings)
                if folder is not None:
                    folder.compact()
        if meta is not None:
            meta.status = "complete"
        return model, summaries, warnings, list(session.notes)
    finally:
        await session.close()
        if folder is not None and meta is not None:
            meta.status = meta.status if meta.status == "complete" else "interrupted"
            meta.finished_at = now_utc()
            meta.warnings = warnings
            folder.write_meta(meta)
            folder.compact()


async def run_bench_workload(session: BenchSession, suite: Suite, runs: int, topology: str, out: Path | None,
                          console: Console, rate_scale: float) -> None:
    """Every point of the suite against the endpoint; stored as measured, reported per test at the end."""
    folder = ResultsFolder(out) if out is not None else None
    rows: list[dict[str, Any]] = []
    meta: FolderMeta | None = None
    try:
        model = await session.open()
        console.print(f"[bold]{escape(model)}[/] at {escape(str(session.endpoint))}: workload {suite.name}",
                      highlight=False)
        if folder is not None:
            meta = FolderMeta(kind="bench", status="running", started_at=now_utc(), command_line=command_line(),
                              spec={"model": model, "topology": topology, "workload": suite.name, "runs": runs,
                                    "rate_scale": rate_scale, "seed": session.settings.seed},
                              workloads=suite.model_dump(mode="json"))
            folder.write_meta(meta)
        for point in suite.points():
            def on_run(done: RunDone) -> None:
                if not done.warmup and done.row is not None:
                    rows.append(done.row)
                    if folder is not None:
                        folder.append(done.records, [done.row])

            console.print(f"  {point.workload} {point.label} ...", highlight=False)
            result = await session.run_point(point, runs, topology=topology, rate_scale=rate_scale, on_run=on_run)
            for warning in result.warnings:
                console.print(f"  [yellow]warning:[/] {escape(warning)}")
        if meta is not None:
            meta.status = "complete"
    finally:
        await session.close()
        if folder is not None and meta is not None:
            meta.status = meta.status if meta.status == "complete" else "interrupted"
            meta.finished_at = now_utc()
            folder.write_meta(meta)
            folder.compact()
    if rows:
        stdout = Console(highlight=False)
        if not stdout.is_terminal:
            stdout.width = max(stdout.width, 160)
        print_tables(stdout, WorkloadReport(suite, pd.DataFrame(rows)).sections())
