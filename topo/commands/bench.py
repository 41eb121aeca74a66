"""`topo bench`: load against one OpenAI-compatible endpoint, with llama-benchy's semantics (METRICS.md)."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.client import Endpoint
from bench.metrics import cell_summary
from bench.records import RequestRecord
from bench.results_folder import FolderMeta, ResultsFolder
from bench.session import BenchSession, BenchSettings, RunDone
from bench.workload import ClosedLoad
from bench.suite import Suite, load_suites
from common.errors import ConfigError
from topo.commands import workload_options as options
from topo.sweep import command_line, now_utc


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise ConfigError(f"-c {text!r}: expected comma-separated integers such as 1,2,4") from exc
    if not levels or any(level < 1 for level in levels):
        raise ConfigError(f"-c {text!r}: expected one or more integers >= 1")
    return levels


def _fmt(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def summary_table(model: str, pp: int, tg: int, depth: int, summaries: list[dict[str, Any]]) -> Table:
    """llama-benchy's table (model, test, t/s, TTFT) plus peak t/s, TTFT percentiles and failures.

    Like llama-benchy, t/s at c=1 is the per-request rate and at c>1 the total rate of the batch.
    """
    table = Table(title=f"{model}: pp{pp} tg{tg}" + (f" depth {depth}" if depth else ""))
    for name, justify in (("model", "left"), ("test", "right"), ("t/s", "right"), ("peak t/s", "right"),
                          ("TTFT (ms)", "right"), ("p50", "right"), ("p90", "right"), ("p99", "right"),
                          ("failed", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    at_depth = f" @ d{depth}" if depth else ""
    for s in summaries:
        per_request = s["concurrency"] == 1
        prefill = "prefill_tps_req" if per_request else "prefill_tps"
        decode = "decode_tps_req" if per_request else "decode_tps"
        suffix = f"{at_depth} @ c{s['concurrency']}"
        failed = f"{s['failed']}/{s['requests']}"
        table.add_row(model, f"pp{pp}{suffix}", _fmt(s[f"{prefill}_mean"], s[f"{prefill}_std"]), "",
                      _fmt(s["ttft_ms_mean"], s["ttft_ms_std"]), _fmt(s["ttft_p50_ms"]), _fmt(s["ttft_p90_ms"]),
                      _fmt(s["ttft_p99_ms"]), failed)
        table.add_row(model, f"tg{tg}{suffix}", _fmt(s[f"{decode}_mean"], s[f"{decode}_std"]),
                      _fmt(s["peak_tps_mean"], s["peak_tps_std"]), "", "", "", "", failed)
    return table


def _bench_meta(session: BenchSession, levels: list[int], runs: int, topology: str) -> FolderMeta:
    settings = session.settings
    endpoint = re.sub(r"//[^/@]*@", "//***@", session.endpoint.base_url)  # no user:password from the URL
    return FolderMeta(kind="bench", status="running", started_at=now_utc(), command_line=command_line(),
                      spec={"endpoint": endpoint, "model": session.model, "topology": topology,
                            "workload": settings.workload, "concurrency": levels, "runs": runs, "pp": settings.pp,
                            "tg": settings.tg, "depth": settings.depth, "latency_mode": settings.latency_mode,
                            "seed": settings.seed})


async def _bench(session: BenchSession, levels: list[int], runs: int, topology: str, out: Path | None,
                 console: Console) -> tuple[str, list[dict[str, Any]], list[str], list[str]]:
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


async def _bench_workload(session: BenchSession, suite: Suite, runs: int, topology: str, out: Path | None,
                          console: Console, rate_scale: float) -> None:
    """Every point of the suite against the endpoint; stored as measured, reported per test at the end."""
    from reports.console import print_tables
    from reports.workloads import WorkloadReport

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


def bench_command(
    url: str = typer.Option(..., "--url", "-u", help="Base URL of the OpenAI-compatible server, e.g. "
                            "http://127.0.0.1:8000 (a trailing /v1 is accepted)."),
    model: str = typer.Option(None, "--model", "-m", help="Model name as the server lists it in /v1/models; "
                              "default: the server's only model."),
    pp: int = typer.Option(1024, "--pp", help="Prompt tokens per request, as the server counts them "
                           "(the prompt is adapted once to the chat template)."),
    tg: int = typer.Option(128, "--tg", help="Generated tokens per request (max_tokens = min_tokens = tg, "
                           "ignore_eos)."),
    concurrency: str = typer.Option("1,2,4", "--concurrency", "-c", help="Concurrency levels, comma-separated: "
                                    "each run sends exactly c requests at once and waits for all."),
    runs: int = typer.Option(3, "--runs", "-r", help="Measured runs per concurrency level, after one "
                             "discarded warm-up batch."),
    latency_mode: str = typer.Option("api", "--latency-mode", help="Network/API offset subtracted from the "
                                     "time to first response for est_ppt and prefill t/s (req): api = mean of "
                                     "3 GET /v1/models, generation = mean of 3 one-token requests, none = 0."),
    depth: int = typer.Option(0, "--depth", help="Context tokens before the prompt (a system message), "
                              "like llama-benchy's --depth."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="tokenizer.json or a HuggingFace model folder to "
                                   "count prompt tokens locally; default: the built-in tokenizer when the "
                                   "server counts like it, else the server's POST /tokenize."),
    corpus: Path = typer.Option(None, "--corpus", help="Text file to cut prompts from (default: the built-in "
                                "natural-text corpus)."),
    api_key: str = typer.Option(None, "--api-key", envvar="TOPO_API_KEY", help="Bearer token, e.g. a LiteLLM "
                                "proxy's key (also read from TOPO_API_KEY). Never printed."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for requests.parquet (one row per request, raw "
                             "timestamps) and cells.parquet (one row per concurrency x run); every run is "
                             "stored as soon as it is measured."),
    topology: str = typer.Option("endpoint", "--topology", help="Label stored in the results' topology column."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds a request may stay silent before it is "
                                  "recorded as timed out."),
    cache_bust: bool = typer.Option(True, "--cache-bust/--no-cache-bust", help="Start each prompt with a unique "
                                    "tag so a server's prefix cache cannot hit (on by default)."),
    seed: int = typer.Option(None, "--seed", help="Seed for the prompt offsets (default: random)."),
    workload: str = options.WORKLOAD,
    only: str = options.ONLY,
    dataset: Path = options.DATASET,
    rate_scale: float = options.RATE_SCALE,
) -> None:
    """Benchmark one OpenAI-compatible endpoint with llama-benchy's load shape and metrics.

    For each concurrency level: one discarded warm-up batch, then --runs closed batches of exactly c streamed chat requests. Prints prefill (pp) and decode (tg) t/s as mean ± population std over runs, peak t/s, TTFT mean and p50/p90/p99, and failed requests. A wrong URL or model fails before any load.
    """
    if runs < 1:
        raise ConfigError(f"--runs must be at least 1 (got {runs})")
    levels = parse_concurrency(concurrency)
    settings = BenchSettings(pp=pp, tg=tg, depth=depth, latency_mode=latency_mode,  # type: ignore[arg-type]
                             tokenizer=tokenizer, corpus=corpus, unique_prefix=cache_bust, request_timeout=timeout,
                             seed=seed)
    session = BenchSession(Endpoint.from_url(url, api_key), model, settings)
    err = Console(stderr=True, highlight=False)
    if workload is not None:
        suite = load_suites(workload, options.only_list(only), dataset)
        asyncio.run(_bench_workload(session, suite, runs, topology, out, err, rate_scale))
        return
    if only is not None or dataset is not None:
        raise ConfigError("--only and --dataset pick tests of a --workload suite; give --workload too")
    served, summaries, warnings, notes = asyncio.run(_bench(session, levels, runs, topology, out, err))
    stdout = Console(highlight=False)
    if not stdout.is_terminal:
        stdout.width = max(stdout.width, 150)  # a piped table keeps one line per row
    stdout.print(summary_table(served, pp, tg, depth, summaries))
    for note in notes:
        err.print(f"note: {escape(note)}")
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if out is not None:
        folder = ResultsFolder(out)
        err.print(f"results: {folder.requests_path}, {folder.cells_path}, {folder.meta_path}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)

