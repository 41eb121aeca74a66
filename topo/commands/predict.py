"""`topo predict`: what each topology would give, from the twin's scheduler and cost model in virtual time."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from reports.console import print_report
from reports.tables import DEFAULT_MARGIN_PCT
from reports.results import write_report
from topo.options import (
    ConcurrencyOption,
    GeneratedTokensOption,
    PromptTokensOption,
    TopologiesOption,
    parse_concurrency,
    parse_topologies,
)
from bench.results_folder import ResultsFolder
from topo.predict import PredictSpec, run_predict
from topo.sweep import DEFAULT_CONCURRENCY
from topology.registry import COMPARED_ON_NODES


def predict_command(
    model: str = typer.Option("gemma4-26b", "--model", "-m", help="Model card of the twin: a name under "
                              "configs/cards/ or a YAML path."),
    hardware: str = typer.Option("gb10", "--hardware", help="Hardware profile: a name under configs/hardware/ "
                                 "(gb10, fast) or a YAML path — e.g. a copy with other bandwidth or link figures."),
    topologies: TopologiesOption = None,  # type: ignore[assignment]
    nodes: int = typer.Option(2, "--nodes", "-n", help="Nodes to lay out; compares " + "; ".join(
                              f"{count}: {', '.join(names)}" for count, names in COMPARED_ON_NODES.items()) + "."),
    concurrency: ConcurrencyOption = ",".join(map(str, DEFAULT_CONCURRENCY)),
    runs: int = typer.Option(3, "--runs", "-r", help="Simulated runs per cell (they differ by the router's "
                             "random split)."),
    pp: PromptTokensOption = 1024,
    tg: GeneratedTokensOption = 128,
    quantization: str = typer.Option(None, "--quantization", "-q", help="Weight format of the card (fp8, nvfp4, "
                                     "bf16) or bytes per weight as a number; default: the card's."),
    max_num_batched_tokens: int = typer.Option(8192, "--max-num-batched-tokens", help="Token budget per step."),
    gpu_memory_utilization: float = typer.Option(0.70, "--gpu-memory-utilization", help="Share of memory the "
                                                 "engine may use for weights and KV cache."),
    seed: int = typer.Option(0, "--seed", help="Seed of the router's random split."),
    link: str = typer.Option(None, "--link", help="What-if: the NCCL transport between TP ranks, roce2 (both "
                             "RoCE twins), roce1 (one) or sockets (TCP). Default: what the env a TP=2 plan "
                             "renders implies (NCCL_IB_HCA / NCCL_IB_DISABLE), as the twin engine decides it."),
    cluster: str = typer.Option(None, "--cluster", help="Cluster whose rendered engine env decides the default "
                                "--link (default: the recipe's env alone)."),
    margin: float = typer.Option(DEFAULT_MARGIN_PCT, "--margin", help="The smallest difference, in %, that makes "
                                 "a winner; smaller ones are ties that name both."),
    out: Path = typer.Option(None, "--out", "-o", help="Write DIR/cells.parquet (the sweep's columns), "
                             "meta.json, report.md and report.html."),
) -> None:
    """Predict decode, prefill and TTFT per topology and concurrency, in seconds, without any node.

    Runs the twin's continuous-batching scheduler and its cost model of the hardware in virtual time —
    the same code `topo twin serve` runs in wall-clock time — and prints the winner tables, the Ray vs
    no-Ray table and the recommendations a sweep prints. Only the solo figures of the hardware profile are
    calibrated against a measurement; multi-node behaviour (weights split across nodes, all-reduce over
    the link, executor overhead, the router's random split and its latency) comes out of the model.
    Without --topologies it predicts the layouts worth comparing on --nodes nodes.
    """
    console = Console()
    prediction = run_predict(PredictSpec(
        model=model, hardware=hardware, topologies=tuple(parse_topologies(topologies, default=())), nodes=nodes,
        concurrency=tuple(parse_concurrency(concurrency)), runs=runs, pp=pp, tg=tg, quantization=quantization,
        max_num_batched_tokens=max_num_batched_tokens, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
        link=link, cluster=cluster, margin_pct=margin,
    ))
    cells, meta, report = prediction.cells, prediction.meta, prediction.report
    print_report(console, report)
    console.print(f"\n[dim]predicted {len(cells)} runs in {prediction.elapsed_s:.1f} s "
                  f"(virtual time; hardware {hardware}, card {model}, link {prediction.link} from {prediction.link_why})[/]")
    if out is not None:
        folder = ResultsFolder(out)
        folder.write_cells(cells)
        folder.write_meta(meta)
        md_path, html_path = write_report(folder, report)
        console.print(f"wrote [bold]{folder.cells_path}[/], {md_path.name} and {html_path.name}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)


__all__ = ["predict_command", "register"]
