"""`topo predict`: what each topology would give, from the twin's scheduler and cost model in virtual time."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from bench.records import CELL_COLUMNS
from bench.results_folder import FolderMeta, ResultsFolder
from common.errors import ConfigError
from bench.suite import load_suites
from reports.console import print_report, print_tables
from reports.report import build_report
from reports.results import write_report
from topo.commands.bench import parse_concurrency
from topo.commands import workload_options as options
from topo.sweep import DEFAULT_CONCURRENCY, now_utc
from topology.registry import COMPARED_ON_NODES
from twin.engine import EngineConfig
from twin.predict import predict_sweep, topologies_for_nodes, topology_model
from twin.workloads import predict_suite


def predict_command(
    model: str = typer.Option("gemma4-26b", "--model", "-m", help="Model card of the twin: a name under "
                              "configs/cards/ or a YAML path."),
    hardware: str = typer.Option("gb10", "--hardware", help="Hardware profile: a name under configs/hardware/ "
                                 "(gb10, fast) or a YAML path — e.g. a copy with other bandwidth or link figures."),
    topologies: str = typer.Option(None, "--topologies", "-t", help="Comma-separated topologies (default: the "
                                   "layouts worth comparing on --nodes nodes)."),
    nodes: int = typer.Option(2, "--nodes", "-n", help="Nodes to lay out; compares " + "; ".join(
                              f"{count}: {', '.join(names)}" for count, names in COMPARED_ON_NODES.items()) + "."),
    concurrency: str = typer.Option(",".join(map(str, DEFAULT_CONCURRENCY)), "--concurrency", "-c",
                                    help="Concurrency levels (closed batches of exactly c requests)."),
    runs: int = typer.Option(3, "--runs", "-r", help="Simulated runs per cell (they differ by the router's "
                             "random split)."),
    pp: int = typer.Option(1024, "--pp", help="Prompt tokens per request."),
    tg: int = typer.Option(128, "--tg", help="Generated tokens per request."),
    quantization: str = typer.Option(None, "--quantization", "-q", help="Weight format of the card (fp8, nvfp4, "
                                     "bf16) or bytes per weight as a number; default: the card's."),
    max_num_batched_tokens: int = typer.Option(8192, "--max-num-batched-tokens", help="Token budget per step."),
    gpu_memory_utilization: float = typer.Option(0.70, "--gpu-memory-utilization", help="Share of memory the "
                                                 "engine may use for weights and KV cache."),
    seed: int = typer.Option(0, "--seed", help="Seed of the router's random split."),
    out: Path = typer.Option(None, "--out", "-o", help="Write DIR/cells.parquet (the sweep's columns), "
                             "meta.json, report.md and report.html."),
    workload: str = options.WORKLOAD,
    only: str = options.ONLY,
    dataset: Path = options.DATASET,
) -> None:
    """Predict decode, prefill and TTFT per topology and concurrency, in seconds, without any node.

    Runs the twin's continuous-batching scheduler and its cost model of the hardware in virtual time —
    the same code `topo twin serve` runs in wall-clock time — and prints the winner tables, the Ray vs
    no-Ray table and the recommendations a sweep prints. Only the solo figures of the hardware profile are
    calibrated against a measurement; multi-node behaviour (weights split across nodes, all-reduce over
    the link, executor overhead, the router's random split and its latency) comes out of the model.
    """
    console = Console()
    names = [t.strip() for t in topologies.split(",") if t.strip()] if topologies else topologies_for_nodes(nodes)
    for name in names:
        model_of = topology_model(name)
        if model_of.nodes > nodes and topologies:
            raise ConfigError(f"--topologies {name} needs {model_of.nodes} nodes; --nodes is {nodes}")
    config = EngineConfig.from_names(
        hardware, model, max_num_batched_tokens=max_num_batched_tokens, gpu_memory_utilization=gpu_memory_utilization,
        weight_bytes_per_param=_bytes_per_weight(quantization, model) if quantization else None,
    )
    if workload is not None:
        _predict_workloads(console, config, names, workload, only, dataset, runs=runs, seed=seed, out=out,
                           spec={"model": model, "hardware": hardware, "topologies": names, "runs": runs,
                                 "quantization": quantization, "nodes": nodes, "seed": seed})
        return
    if only is not None:
        raise ConfigError("--only picks tests of a --workload suite; give --workload too")
    levels = parse_concurrency(concurrency)
    began = time.perf_counter()
    rows = predict_sweep(names, config, levels, prompt_tokens=pp, max_tokens=tg, runs=runs, seed=seed)
    cells = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    meta = FolderMeta(
        kind="prediction", status="complete", started_at=now_utc(),
        spec={"model": model, "hardware": hardware, "topologies": names, "concurrency": levels, "runs": runs,
              "pp": pp, "tg": tg, "quantization": quantization, "nodes": nodes, "seed": seed},
        title=f"Prediction: {model} on {hardware} (twin, virtual time)",
    )
    report = build_report(cells, meta)
    print_report(console, report)
    console.print(f"\n[dim]predicted {len(cells)} runs in {time.perf_counter() - began:.1f} s "
                  f"(virtual time; hardware {hardware}, card {model})[/]")
    if out is not None:
        folder = ResultsFolder(out)
        folder.write_cells(cells)
        folder.write_meta(meta)
        md_path, html_path = write_report(folder, report)
        console.print(f"wrote [bold]{folder.cells_path}[/], {md_path.name} and {html_path.name}")


def _predict_workloads(console: Console, config: EngineConfig, names: list[str], workload: str, only: str | None,
                       dataset: Path | None, *, runs: int, seed: int, out: Path | None, spec: dict[str, object]) -> None:
    from reports.workloads import WorkloadReport  # see tests/topo/test_predict_workload.py

    suite = load_suites(workload, options.only_list(only), dataset)
    began = time.perf_counter()
    with console.status("predicting") as status:
        rows = predict_suite(names, config, suite, runs=runs, seed=seed,
                             on_point=lambda topology, point: status.update(f"{topology} {point.workload} {point.label}"))
    cells = pd.DataFrame(rows)
    title = f"Prediction: {spec['model']} on {config.hardware.name}, workload {suite.name} (twin, virtual time)"
    report = WorkloadReport(suite, cells)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a piped report keeps one line per row
    console.print(f"[bold]{title}[/]")
    print_tables(console, report.sections())
    console.print(f"\n[dim]predicted {len(cells)} runs of {len(suite.tests)} tests in "
                  f"{time.perf_counter() - began:.1f} s (virtual time)[/]")
    if out is not None:
        folder = ResultsFolder(out)
        folder.write_cells(cells)
        meta = FolderMeta(kind="prediction", status="complete", started_at=now_utc(), title=title,
                          spec={**spec, "workload": workload, "only": only}, workloads=suite.model_dump(mode="json"))
        folder.write_meta(meta)
        folder.write_report(report.to_markdown(meta), report.to_html(meta))
        console.print(f"wrote [bold]{folder.cells_path}[/], report.md and report.html")


def _bytes_per_weight(quantization: str, card: str) -> float:
    try:
        value = float(quantization)
    except ValueError:
        from twin.profiles import load_card

        known = load_card(card).quantization_bytes
        if quantization not in known:
            raise ConfigError(f"--quantization {quantization!r}: card {card} knows {', '.join(known)} "
                              "(or give bytes per weight as a number)") from None
        return known[quantization]
    if not 0.1 <= value <= 4:
        raise ConfigError(f"--quantization {quantization}: bytes per weight must be between 0.1 and 4")
    return value


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)


__all__ = ["predict_command", "register"]
