"""Calibrate the twin's gb10 profile against the published solo column, and show what it predicts.

    .venv/bin/python benchmarks/calibrate_gb10.py            # predicted vs published, % error per cell,
                                                            # then tp2-mp / tp2-ray / 2x-solo-shuffle
    .venv/bin/python benchmarks/calibrate_gb10.py --fit      # search the `calibrated:` constants again
    .venv/bin/python benchmarks/calibrate_gb10.py --measured DIR   # also: what `topo bench --out DIR`
                                                            # measured against `topo twin serve --hardware gb10`

Only the solo column is a fitting target (../shared/reference/gb10_solo_gemma4_26b_fp8.csv). The
multi-node columns printed at the end come out of the model (link, executor and router constants that
are published facts or estimates); nothing multi-node is fitted. Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from topology.registry import STUDY_TOPOLOGIES  # noqa: E402
from twin.engine import EngineConfig  # noqa: E402
from twin.predict import predict_cells  # noqa: E402
from twin.profiles import HardwareProfile, ModelCard, describe_sources  # noqa: E402

# the published solo column, kept in the repo so the calibration guard runs wherever the tests do
REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "reference" / "gb10_solo_gemma4_26b_fp8.csv"
METRICS = ("decode_tps", "prefill_tps", "ttft_ms")
# The constants marked `calibrated:` in configs/hardware/gb10.yaml, with the bounds that keep them physical.
FITTED: dict[str, tuple[float, float]] = {
    "bandwidth_efficiency": (0.5, 1.0),
    "compute_efficiency": (0.05, 0.8),
    "compute_memory_overlap": (0.0, 1.0),
    "step_overhead_ms": (0.5, 15.0),
    # Kept well above the twin server's own HTTP jitter (~1 ms), so that which requests share the first
    # step does not hinge on it when the wall-clock twin replays the model.
    "frontend_ms_per_request": (5.0, 12.0),
    "engine_pickup_ms": (6.0, 20.0),
}
# ... and in configs/cards/gemma4-26b.yaml (how the model's router spreads a batch over experts)
FITTED_CARD: dict[str, tuple[float, float]] = {
    "expert_popularity_skew": (0.0, 2.0),
}


def load_reference(path: Path = REFERENCE) -> dict[int, dict[str, float]]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {int(row["concurrency"]): {k: float(row[k]) for k in METRICS} for row in csv.DictReader(lines)}


def mean_by_concurrency(rows: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        cell = out.setdefault(int(row["concurrency"]), {k: [] for k in METRICS})
        for key in METRICS:
            cell[key].append(float(row[key]))
    return {c: {k: sum(v) / len(v) for k, v in cell.items()} for c, cell in out.items()}


def predict(config: EngineConfig, topology: str, levels: list[int], runs: int) -> dict[int, dict[str, float]]:
    return mean_by_concurrency(predict_cells(topology, config, levels, runs=runs, seed=1))


def errors(pred: dict[int, dict[str, float]], ref: dict[int, dict[str, float]]) -> list[float]:
    return [pred[c][k] / ref[c][k] - 1 for c in ref for k in METRICS]


def with_constants(config: EngineConfig, values: dict[str, float]) -> EngineConfig:
    hardware: HardwareProfile = config.hardware.model_copy(update={k: v for k, v in values.items() if k in FITTED})
    card: ModelCard = config.card.model_copy(update={k: v for k, v in values.items() if k in FITTED_CARD})
    return config.with_(hardware=hardware, card=card)


def current(config: EngineConfig, name: str) -> float:
    return getattr(config.card if name in FITTED_CARD else config.hardware, name)


def fit(config: EngineConfig, ref: dict[int, dict[str, float]]) -> dict[str, float]:
    """Minimise the worst |log(predicted / published)| over the 21 solo cells (then the mean square)."""
    from scipy.optimize import minimize

    bounds = {**FITTED, **FITTED_CARD}
    names = list(bounds)
    levels = sorted(ref)

    def objective(x: list[float]) -> float:
        values = {n: min(max(v, bounds[n][0]), bounds[n][1]) for n, v in zip(names, x)}
        logs = [math.log1p(e) for e in errors(predict(with_constants(config, values), "solo", levels, 1), ref)]
        worst = max(abs(v) for v in logs)
        return worst + 0.5 * math.sqrt(sum(v * v for v in logs) / len(logs))

    start = [current(config, n) for n in names]
    best = minimize(objective, start, method="Nelder-Mead", options={"maxiter": 600, "xatol": 1e-4, "fatol": 1e-5})
    values = {n: min(max(v, bounds[n][0]), bounds[n][1]) for n, v in zip(names, best.x)}
    print(f"fit: objective {best.fun:.4f} after {best.nfev} evaluations")
    return values


def print_solo(pred: dict[int, dict[str, float]], ref: dict[int, dict[str, float]]) -> float:
    header = f"{'c':>3} | " + " | ".join(f"{k + ' pred':>16} {'published':>9} {'err':>6}" for k in METRICS)
    print(header)
    print("-" * len(header))
    worst = 0.0
    for c in sorted(ref):
        cells = []
        for key in METRICS:
            err = pred[c][key] / ref[c][key] - 1
            worst = max(worst, abs(err))
            cells.append(f"{pred[c][key]:>16.1f} {ref[c][key]:>9.1f} {100 * err:>+5.1f}%")
        print(f"{c:>3} | " + " | ".join(cells))
    print(f"worst cell: {100 * worst:.1f}% (target: within 10% on every cell)")
    return worst


def load_measured(path: Path) -> dict[int, dict[str, float]]:
    """Mean per concurrency of a `topo bench --out DIR` folder's cells, or of one cells file (one endpoint)."""
    import pandas as pd

    from bench.results_folder import ResultsFolder

    cells = ResultsFolder(path).read_cells() if path.is_dir() else pd.read_parquet(path)
    return mean_by_concurrency(cells.to_dict("records"))


def print_measured(measured: dict[int, dict[str, float]], pred: dict[int, dict[str, float]],
                   ref: dict[int, dict[str, float]]) -> None:
    print("\nwall-clock twin over HTTP (topo bench) vs published, and vs the virtual-time prediction")
    header = f"{'c':>3} | " + " | ".join(f"{k + ' measured':>20} {'vs pub':>7} {'vs pred':>7}" for k in METRICS)
    print(header)
    print("-" * len(header))
    for c in sorted(set(measured) & set(ref)):
        cells = [
            f"{measured[c][k]:>20.1f} {100 * (measured[c][k] / ref[c][k] - 1):>+6.1f}% "
            f"{100 * (measured[c][k] / pred[c][k] - 1):>+6.1f}%"
            for k in METRICS
        ]
        print(f"{c:>3} | " + " | ".join(cells))


def print_topologies(config: EngineConfig, levels: list[int], runs: int) -> None:
    names = list(STUDY_TOPOLOGIES)
    table = {name: predict(config, name, levels, runs) for name in names}
    for key in METRICS:
        print(f"\n{key} (model prediction, mean of {runs} runs)")
        print(f"{'c':>3} | " + " | ".join(f"{n:>15}" for n in names))
        for c in levels:
            print(f"{c:>3} | " + " | ".join(f"{table[n][c][key]:>15.1f}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hardware", default="gb10")
    parser.add_argument("--model", default="gemma4-26b")
    parser.add_argument("--fit", action="store_true", help="search the calibrated constants again")
    parser.add_argument("--runs", type=int, default=3, help="runs per multi-node cell (router splits are random)")
    parser.add_argument("--measured", type=Path, help="a `topo bench --out` folder (or its cells.parquet) to compare")
    args = parser.parse_args()

    ref = load_reference()
    config = EngineConfig.from_names(args.hardware, args.model)
    if args.fit:
        values = fit(config, ref)
        for name, value in values.items():
            print(f"  {name}: {value:.4g}   (was {current(config, name):.4g})")
        config = with_constants(config, values)
    print(f"calibrated constants ({config.hardware.name}, {config.card.name}):")
    for section in (config.hardware, config.card):
        for key, value, source in describe_sources(section):
            if source.startswith("calibrated:"):
                print(f"  {key} = {value:g}  -- {source}")
    print()
    started = time.perf_counter()
    solo = predict(config, "solo", sorted(ref), 1)
    worst = print_solo(solo, ref)
    if args.measured is not None:
        print_measured(load_measured(args.measured), solo, ref)
    print_topologies(config, sorted(ref), args.runs)
    print(f"\n(predictions took {time.perf_counter() - started:.1f} s of virtual-time simulation)")
    if worst > 0.10:
        print("NOTE: at least one solo cell is off by more than 10%")


if __name__ == "__main__":
    main()
