"""`topo calibrate`: measure a few cells on your nodes, fit the twin's hardware constants, write a profile."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from common.config import validate_model
from common.errors import ConfigError
from topo.calibrate import (
    KNOBS,
    MeasuredCell,
    calibrated_data,
    default_cells,
    engine_config,
    fit_constants,
    measure,
    write_profile,
)
from topo.sweep import with_twin_hardware
from topo.transport import planned_transport
from topology.inventory import load_cluster
from topology.recipe import load_recipe
from twin.profiles import HardwareProfile, hardware_data


class _Milestones:
    """Bring-up milestones on the console (not the log lines of waiting steps)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def event(self, step: str | None, message: str, *, log_line: bool = False) -> None:
        if not log_line:
            self.console.print(f"[dim]{escape(step + ': ' if step else '')}{escape(message)}[/]")


def calibrate_command(
    cluster: str = typer.Option(..., "--cluster", help="Cluster inventory (a name under configs/clusters/ or a "
                                "YAML path): solo and tp2-mp are brought up on it."),
    model: str = typer.Option("gemma4-26b", "--model", "-m", help="Model recipe (configs/models/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the calibrated hardware profile (YAML); "
                             "use it with `topo predict --hardware PATH`."),
    base: str = typer.Option("gb10", "--base", help="Profile whose other constants (FLOP peaks, memory size, "
                             "executors, router, the other links) the calibrated one keeps."),
    runs: int = typer.Option(2, "--runs", "-r", help="Measured runs per cell (after one warm-up)."),
    name: str = typer.Option(None, "--name", help="Name of the written profile (default: CLUSTER-calibrated)."),
    router: bool = typer.Option(True, "--router/--no-router", help="Also bring up 2x-solo-shuffle and fit the "
                                "proxy's costs (request latency, per-request burst cost, per-chunk relay) from three "
                                "cells."),
    twin_hardware: str = typer.Option(None, "--twin-hardware", help="Override the hardware profile of every "
                                      "twin node (twin clusters, e.g. to calibrate against a hidden profile)."),
) -> None:
    """Calibrate the twin on your own nodes: a few minutes of measuring instead of a full sweep.

    Brings up solo, tp2-mp and 2x-solo-shuffle once each and measures eight small cells whose metrics each
    pin one constant (solo decode at c1 and c16: step overhead and memory bandwidth, their TTFT the engine's
    pickup and per-request frontend cost; a full solo prefill step: compute efficiency; tp2-mp decode at c1
    and a full tp2-mp prefill step: latency and bandwidth of the link the plan's env selects; TTFT through
    the router at c1 and c8 and its decode at c32: the proxy's request latency, per-request burst cost and
    per-chunk relay cost),
    fits them with the twin's own model in virtual time and writes a profile whose calibrated constants
    name the cluster, the date and the cells. Then `topo predict --hardware PROFILE.yaml` predicts every
    topology and load of these nodes, including layouts never brought up.
    """
    console = Console()
    began = time.perf_counter()
    inventory = load_cluster(cluster)
    if twin_hardware:
        inventory = with_twin_hardware(inventory, twin_hardware)
    recipe = load_recipe(model)
    rendered = planned_transport(model, cluster)
    base_data, base_source = hardware_data(base)
    base_profile = validate_model(HardwareProfile, base_data, source=base_source)
    config = engine_config(recipe, base_profile, rendered.transport)
    cells = default_cells(config.max_num_batched_tokens, router=router)
    if len(inventory.nodes) < 2:
        raise ConfigError(f"cluster {inventory.name!r} has {len(inventory.nodes)} node(s); calibrating the link "
                          "needs two (tp2-mp)")
    console.print(f"calibrating [bold]{base_profile.name}[/] constants on cluster [bold]{inventory.name}[/] with "
                  f"{recipe.name}; TP link [bold]{rendered.transport}[/] ({escape(rendered.why)})")
    for cell in cells:
        pins = ", ".join(f"{metric} -> {KNOBS[knob].name(rendered.transport)}" for metric, knob in cell.targets)
        console.print(f"  {cell.label:<36} {pins}")

    def shown(done: MeasuredCell) -> None:
        console.print(f"  measured {done.cell.label}: {done.shown()} ({len(done.rows)} runs)")

    measured = asyncio.run(measure(inventory, recipe, cells, runs, _Milestones(console), on_cell=shown))
    measured_s = time.perf_counter() - began
    requests = sum(m.requests for m in measured)
    fit = fit_constants(config, measured)
    console.print("\n[bold]fitted[/] (base -> calibrated)")
    for knob_name, value in fit.values.items():
        unseen = f"  (not seen: {fit.not_seen[knob_name]})" if knob_name in fit.not_seen else ""
        console.print(f"  {KNOBS[knob_name].name(rendered.transport):<28} {fit.before[knob_name]:>10.4g} -> "
                      f"{value:.4g}{unseen}")
    console.print("[bold]cells[/] (measured, predicted with the fit)")
    for m in measured:
        for metric, _ in m.cell.targets:
            got, want = m.value(metric), fit.predicted[(m.cell.label, metric)]
            console.print(f"  {m.cell.label:<36} {metric:<12} {got:>10.1f} {want:>10.1f} {100 * (want / got - 1):+6.1f}%")
    when = datetime.now(timezone.utc)
    profile_name = name or f"{inventory.name}-calibrated"
    data = calibrated_data(base_data, fit, measured, transport=rendered.transport, cluster=inventory.name,
                           name=profile_name, when=when)
    took = time.perf_counter() - began
    header = (f"Written by `topo calibrate` on {when:%Y-%m-%d %H:%M} UTC: cluster {inventory.name}, model "
              f"{recipe.name}, base profile {base_profile.name}.\n"
              f"TP link {rendered.transport} ({rendered.why}); the other links and the executors are the "
              f"base's.\nCells: " + "; ".join(f"{m.cell.label}: {m.shown()}" for m in measured)
              + f".\nMeasuring took {measured_s:.0f} s and {requests} requests; worst cell after the fit "
              f"{100 * fit.worst:.1f}%.")
    validate_model(HardwareProfile, data, source=str(out))  # what predict will load must load
    write_profile(out, data, header)
    console.print(f"\nwrote [bold]{out}[/] (profile {profile_name}); calibration took {took:.0f} s and "
                  f"{requests} requests ({measured_s:.0f} s measuring); worst cell {100 * fit.worst:.1f}%")
    console.print(f"next: topo predict --hardware {out}")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)


__all__ = ["calibrate_command", "register"]
