"""`topo bench`: load against one OpenAI-compatible endpoint, with llama-benchy's semantics (docs/METRICS.md)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.client import Endpoint
from bench.results_folder import ResultsFolder
from bench.session import BenchSession, BenchSettings
from common.errors import ConfigError
from bench.suite import load_suites
from topo.bench import run_bench, run_bench_workload
from topo.options import (
    ConcurrencyOption,
    DatasetOption,
    GeneratedTokensOption,
    LatencyModeOption,
    OnlyOption,
    OutOption,
    PromptTokensOption,
    RateScaleOption,
    RunsOption,
    SeedOption,
    WorkloadOption,
    only_list,
    parse_concurrency,
)
from topo.exits import EXIT_CODES_HELP, EXIT_FAILURES


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


def bench_command(
    url: str = typer.Option(..., "--url", "-u", help="Base URL of the OpenAI-compatible server, e.g. "
                            "http://127.0.0.1:8000 (a trailing /v1 is accepted)."),
    model: str = typer.Option(None, "--model", "-m", help="Model name as the server lists it in /v1/models; "
                              "default: the server's only model."),
    pp: PromptTokensOption = 1024,
    tg: GeneratedTokensOption = 128,
    concurrency: ConcurrencyOption = "1,2,4",
    runs: RunsOption = 3,
    latency: LatencyModeOption = "api",
    depth: int = typer.Option(0, "--depth", help="Context tokens before the prompt (a system message), "
                              "like llama-benchy's --depth."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="tokenizer.json or a HuggingFace model folder to "
                                   "count prompt tokens locally; default: the built-in tokenizer when the "
                                   "server counts like it, else the server's POST /tokenize."),
    corpus: Path = typer.Option(None, "--corpus", help="Text file to cut prompts from (default: the built-in "
                                "natural-text corpus)."),
    api_key: str = typer.Option(None, "--api-key", envvar="TOPO_API_KEY", help="Bearer token, e.g. a LiteLLM "
                                "proxy's key (also read from TOPO_API_KEY). Never printed."),
    out: OutOption = None,  # type: ignore[assignment]
    topology: str = typer.Option("endpoint", "--topology", help="Label stored in the results' topology column."),
    timeout: float = typer.Option(600.0, "--timeout", help="Deadline on progress: a request that receives no "
                                  "generated token for this many seconds (whatever else the server sends, e.g. "
                                  "keep-alive comments) is recorded as timed out."),
    deadline: float = typer.Option(None, "--deadline", help="Seconds a whole request may take at most "
                                   "(default: 10 x --timeout)."),
    cache_bust: bool = typer.Option(True, "--cache-bust/--no-cache-bust", help="Start each prompt with a unique "
                                    "tag so a server's prefix cache cannot hit (on by default)."),
    seed: SeedOption = None,  # type: ignore[assignment]
    workload: WorkloadOption = None,  # type: ignore[assignment]
    only: OnlyOption = None,  # type: ignore[assignment]
    dataset: DatasetOption = None,  # type: ignore[assignment]
    rate_scale: RateScaleOption = 1.0,
) -> None:
    """Benchmark one OpenAI-compatible endpoint with llama-benchy's load shape and metrics.

    For each concurrency level: one discarded warm-up batch, then --runs closed batches of exactly c streamed
    chat requests (the server counts the prompt tokens; the prompt is adapted once to the chat template;
    max_tokens = min_tokens = tg with ignore_eos). Prints prefill (pp) and decode (tg) t/s as mean ±
    population std over runs, peak t/s, TTFT mean and p50/p90/p99, and failed requests. A wrong URL or
    model fails before any load. With --out, requests.parquet (one row per request, raw timestamps),
    cells.parquet (one row per concurrency x run) and meta.json are written as each run finishes.
    """
    if runs < 1:
        raise ConfigError(f"--runs must be at least 1 (got {runs})")
    levels = parse_concurrency(concurrency)
    settings = BenchSettings(pp=pp, tg=tg, depth=depth, latency_mode=latency,  # type: ignore[arg-type]
                             tokenizer=tokenizer, corpus=corpus, unique_prefix=cache_bust, request_timeout=timeout,
                             request_deadline=deadline,
                             seed=seed)
    session = BenchSession(Endpoint.from_url(url, api_key), model, settings)
    err = Console(stderr=True, highlight=False)
    if workload is not None:
        suite = load_suites(workload, only_list(only), dataset)
        asyncio.run(run_bench_workload(session, suite, runs, topology, out, err, rate_scale))
        return
    if only is not None or dataset is not None:
        raise ConfigError("--only and --dataset pick tests of a --workload suite; give --workload too")
    served, summaries, warnings, notes = asyncio.run(run_bench(session, levels, runs, topology, out, err))
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
    failed = sum(s["failed"] for s in summaries)
    if failed:
        err.print(f"[red]{failed} request(s) failed[/] (the table's `failed` column; the errors are in the "
                  "request rows)")
        raise typer.Exit(EXIT_FAILURES)


def register(app: typer.Typer) -> None:
    app.command("bench", epilog=EXIT_CODES_HELP)(bench_command)

