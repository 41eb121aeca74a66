"""The options that pick a workload suite, shared by `topo sweep`, `topo bench` and `topo predict`."""

from __future__ import annotations

import typer

WORKLOAD = typer.Option(None, "--workload", "-w", help="Workload suite(s) instead of -c/--pp/--tg: names under "
                        "configs/workloads/ (arena, default) or YAML paths, comma-separated.")
ONLY = typer.Option(None, "--only", help="Tests of the suite, e.g. 01-chat,10-monday-peak.")
DATASET = typer.Option(None, "--dataset", help="A ShareGPT JSON for the suite's sharegpt test (default: a synthetic "
                       "stand-in with ShareGPT's published length statistics).")
RATE_SCALE = typer.Option(1.0, "--rate-scale", help="Multiply open-loop request rates (and divide durations) by "
                          "this: 50 with `--twin-hardware fast`, which is gb10 x50.")


def only_list(only: str | None) -> list[str]:
    return [part.strip() for part in (only or "").split(",") if part.strip()]
