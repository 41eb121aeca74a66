"""The command-line options several `topo` commands share, declared once, and their parsing.

One spelling means one thing in every command: `-c` is the concurrency (`--cluster` has no short form),
`-m` the model, `-t` the topologies, `-r` the runs, `-o` the output folder. Each command sets its own
default in its signature; the name, the short form and the help live here.

`topo plan` and `topo up` once took `-c FILE` for the cluster; `deprecated_cluster_flag` keeps that
spelling working with a note, and says so when the value looks like concurrency levels instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console

from common.errors import ConfigError
from reports.regress import RegressionPolicy, TestName, parse_threshold
from topology.registry import REGISTERED, STUDY_TOPOLOGIES, parse_topology

CONFIGS_HINT = "a name under configs/{folder}/ or a YAML path"
TOPOLOGY_NAMES = (f"{', '.join(REGISTERED)} (or any tpN-mp, tpN-ray, Nx-solo-shuffle, Nx-tpK-shuffle); "
                  "see docs/DESIGN.md")

ClusterOption = Annotated[str, typer.Option(
    "--cluster", help=f"Cluster inventory: {CONFIGS_HINT.format(folder='clusters')}. local-twin: two emulated "
    "DGX Spark on this machine (no root, no GPU); local-twin-4: four.")]
RecipeOption = Annotated[str, typer.Option(
    "--model", "-m", help=f"Model recipe: {CONFIGS_HINT.format(folder='models')}.")]
TopologiesOption = Annotated[str, typer.Option(
    "--topologies", "-t", help=f"Comma-separated topologies, in this order: {TOPOLOGY_NAMES}.")]
ConcurrencyOption = Annotated[str, typer.Option(
    "--concurrency", "-c", help="Concurrency levels, comma-separated: each is a closed batch of exactly c "
    "requests sent at once.")]
RunsOption = Annotated[int, typer.Option(
    "--runs", "-r", min=1, help="Measured runs per cell, after one discarded warm-up batch.")]
PromptTokensOption = Annotated[int, typer.Option("--pp", min=1, help="Prompt tokens per request.")]
GeneratedTokensOption = Annotated[int, typer.Option("--tg", min=1, help="Generated tokens per request.")]
LatencyModeOption = Annotated[str, typer.Option(
    "--latency-mode", help="Network/API offset subtracted from the time to first response for est_ppt and "
    "prefill t/s (req): api = mean of 3 GET /v1/models, generation = mean of 3 one-token requests, none = 0 "
    "(docs/METRICS.md).")]
TwinHardwareOption = Annotated[str, typer.Option(
    "--twin-hardware", help="Override the hardware profile of every twin node (e.g. `fast` for a quick check, "
    "or a profile YAML path).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for prompt offsets (default: random).")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Results folder.")]
ThresholdOption = Annotated[str, typer.Option(
    "--threshold", help="A cell regresses only when it is worse by more than this (3% or 3; the winner tables' "
    "margin) AND by more than its history's spread allows or, without history, the test says so.")]
AlphaOption = Annotated[float, typer.Option(
    "--alpha", help="One-sided level of the history's tolerance (shared by the cells it judges) and of "
    "welch / mannwhitney.")]
TestOption = Annotated[str, typer.Option(
    "--test", help="How a cell without history is judged: intervals (its 95% interval clear of the "
    "baseline's, as the winner tables), welch (Welch's t-test on the per-run values; 2+ runs a side) or "
    "mannwhitney (rank test; 4+ runs a side for α = 0.05).")]
GateHistoryOption = Annotated[int, typer.Option(
    "--gate-history", min=0, help="Judge each cell by the sweep-to-sweep spread of up to this many earlier "
    "sweeps under --root (same cluster, model and load; 3+ needed per cell); 0 = never.")]
MarginOption = Annotated[float, typer.Option(
    "--margin", min=0, help="The smallest difference, in %, that makes a winner; smaller ones are ties that "
    "name both.")]
JunitOption = Annotated[Path, typer.Option(
    "--junit", help="Write JUnit XML here: one test case per (topology, concurrency, metric) cell, regressions "
    "as failures.")]
MarkdownVerdictOption = Annotated[Path, typer.Option(
    "--md", help="Write the verdict as Markdown here (fit for a chat or an issue).")]
DeprecatedClusterFlag = Annotated[str, typer.Option(
    "-c", hidden=True, help="Deprecated spelling of --cluster (-c is --concurrency elsewhere).")]

def parse_concurrency(text: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4]; anything else is a ConfigError naming the option."""
    try:
        levels = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise ConfigError(f"-c {text!r}: expected comma-separated integers such as 1,2,4") from exc
    if not levels or any(level < 1 for level in levels):
        raise ConfigError(f"-c {text!r}: expected one or more integers >= 1")
    return levels


def parse_topologies(values: str | list[str] | None, default: tuple[str, ...] = STUDY_TOPOLOGIES) -> list[str]:
    """Comma-separated (or repeated) topology names, each checked against the registry's name forms."""
    texts = [values] if isinstance(values, str) else list(values or [])
    names = [name.strip() for text in texts for name in text.split(",") if name.strip()]
    for name in names:
        parse_topology(name)  # an unknown name fails here, before anything is loaded or started
    return names or list(default)


def regression_policy(threshold: str, alpha: float, test: str) -> RegressionPolicy:
    # RegressionPolicy checks the test's name and says which ones exist
    return RegressionPolicy(threshold_pct=parse_threshold(threshold), alpha=alpha, test=cast(TestName, test))


def deprecated_cluster_flag(command: str, cluster: str, old_flag: str | None, console: Console) -> str:
    """The cluster to use when `-c VALUE` (the old spelling of --cluster in plan/up) may have been given."""
    if old_flag is None:
        return cluster
    try:
        parse_concurrency(old_flag)
    except ConfigError:
        console.print(f"[yellow]note:[/] `topo {command} -c {old_flag}` is deprecated: -c means --concurrency in "
                      f"every command now; write `--cluster {old_flag}`", highlight=False)
        return old_flag
    raise ConfigError(f"topo {command} -c {old_flag}: -c is --concurrency, which `topo {command}` does not take "
                      "(the cluster is --cluster)")
