"""A wall-clock sweep of the twin next to `topo predict` for the same cells: do the two agree?

    .venv/bin/topo sweep --out /tmp/sweep                    # real processes, HTTP, Ray, LiteLLM (minutes)
    .venv/bin/python benchmarks/twin_vs_predict.py /tmp/sweep

For every (topology, concurrency) cell of the sweep, predicts the same cell in virtual time (same model
card, hardware profile, pp/tg, runs) and prints measured vs predicted decode t/s, prefill t/s and TTFT
with the difference per cell; cells off by more than --tolerance are marked. The twin engine and the
prediction share the scheduler and cost model, so what differs is what the model leaves out: the real
HTTP stack, the LiteLLM proxy beyond its measured constants (benchmarks/proxy_cost.py; the model does
not queue its chunks, and on a 2-core machine the proxy competes for CPU), and real coordination between
ranks. For routed topologies the prediction replays the
sweep's own split of each run (requests.parquet `served_by`), so the router's random draw is not what
differs. Not a test: it prints, it does not assert.

One thing the model cannot know: when the real proxy collects garbage. LiteLLM's heap is large, and on a
2-core host a full (generation 2) collection takes 0.6-0.8 s; when one starts while a burst is being
accepted, every request of that run reaches its engine that much later (seen: c32, TTFT +35% in one run of
three, with gc.callbacks logging the pause inside the proxy). `--statistic median` compares cells without
such a run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from bench.results_folder import ResultsFolder  # noqa: E402
from bench.stats import bound_columns  # noqa: E402
from common.config import CONFIGS_DIR  # noqa: E402
from topo.transport import planned_transport  # noqa: E402
from topology.inventory import cluster_from_data  # noqa: E402
from twin.engine import EngineConfig  # noqa: E402
from twin.predict import VirtualDeployment, cell_row, predict_cells, topology_model  # noqa: E402
from twin.profiles import TRANSPORTS  # noqa: E402

METRICS = ("decode_tps", "prefill_tps", "ttft_ms")


def sweep_settings(results: Path) -> dict[str, Any]:
    meta = ResultsFolder(results).read_meta()
    spec = meta.spec
    hardware = spec.get("twin_hardware")
    if not hardware:
        nodes = (meta.cluster or {}).get("nodes", [])
        hardware = next((n.get("engine", {}).get("hardware") for n in nodes if n.get("engine")), None) or "gb10"
    return {"model": spec.get("model", "gemma4-26b"), "hardware": hardware, "pp": int(spec.get("pp", 1024)),
            "tg": int(spec.get("tg", 128)), "runs": int(spec.get("runs") or 1)}  # None: adaptive


def replayed_cells(topology: str, config: EngineConfig, requests: pd.DataFrame, pp: int, tg: int) -> pd.DataFrame:
    """Predicted rows, one per measured run, each replaying that run's client send times and (routed) its
    measured split."""
    rows = []
    replicas = topology_model(topology).replicas
    for (concurrency, run), batch in requests[requests["topology"] == topology].groupby(["concurrency", "run"]):
        batch = batch.sort_values("index")
        assignment = None
        if replicas > 1:
            names = sorted(batch["served_by"].dropna().unique()) if "served_by" in batch else []
            if not names or len(names) > replicas or batch["served_by"].isna().any():
                continue  # the split is not known for every request
            index = {name: i for i, name in enumerate(names)}
            assignment = [index[name] for name in batch["served_by"]]
        sends = (batch["start"] - batch["batch_start"]).clip(lower=0).tolist()
        deployment = VirtualDeployment(topology, config, seed=1)
        deployment.run_batch(int(concurrency), pp, tg, run=-1)  # warm-up, as the sweep did
        rows.append(cell_row(deployment.run_batch(int(concurrency), pp, tg, run=int(run), assignment=assignment,
                                                  sends=sends)))
    return pd.DataFrame(rows)


def median_run(
    measured: pd.Series, predicted_runs: pd.DataFrame | None, concurrency: int, metric: str, cell_prediction: float
) -> tuple[float, float]:
    """(measured, predicted) of the run whose ratio is the median (the lower one of an even count)."""
    pairs = []
    for run, got in measured.items():
        want = cell_prediction
        if predicted_runs is not None and (concurrency, run) in predicted_runs.index:
            want = predicted_runs.loc[(concurrency, run), metric]
        pairs.append((got / want, got, want))
    pairs.sort()
    _, got, want = pairs[(len(pairs) - 1) // 2]
    return got, want


def sweep_link(results: Path, model: str) -> str:
    """The TP link the sweep's engines had: what the env its TP=2 plan rendered implies (topo/transport.py)."""
    data = ResultsFolder(results).read_meta().cluster
    if not data:
        return planned_transport(model, None).transport
    cluster = cluster_from_data(data, source=f"{results} meta cluster", base_dir=results)
    return planned_transport(model, cluster).transport


class Agreement(NamedTuple):
    worst: float  # largest |measured / predicted - 1|
    off: int  # values beyond the tolerance
    compared: int
    resolved: int  # values whose measured 95% interval is narrower than the tolerance
    resolved_off: int  # of those, beyond the tolerance


def compare(results: Path, *, card: str | None = None, hardware: str | None = None, link: str | None = None,
            tolerance: float = 0.05, statistic: str = "mean", replay: bool = True) -> Agreement:
    """Print the table; returns how well measured and predicted agree."""
    settings = sweep_settings(results)
    card = card or settings["model"]
    if not (CONFIGS_DIR / "cards" / f"{card}.yaml").exists() and not Path(card).exists():
        raise SystemExit(f"no model card {card!r}; pass --card")
    hardware = hardware or settings["hardware"]
    link = link or sweep_link(results, settings["model"])
    config = EngineConfig.from_names(hardware, card, link=link)
    folder = ResultsFolder(results)
    cells = folder.read_cells()
    cells = cells[cells["failed"] == 0] if "failed" in cells else cells
    measured_runs = cells.set_index(["topology", "concurrency", "run"])[list(METRICS)].sort_index()
    measured = measured_runs.groupby(level=["topology", "concurrency"]).mean()
    spread = interval_halfwidths(cells)
    requests = folder.read_requests() if folder.requests_path.exists() else None

    print(f"{results}: card {card}, hardware {hardware}, link {link}, pp{settings['pp']} tg{settings['tg']}, "
          f"{settings['runs']} run(s) per cell, their {statistic}; marked (*) when off by more than "
          f"{100 * tolerance:.0f}%, (~) when the sweep's own 95% interval is wider than that")
    header = f"{'topology':<16} {'c':>3} | " + " | ".join(f"{m + ' meas':>17} {'pred':>9} {'diff':>7}" for m in METRICS)
    print(header)
    print("-" * len(header))
    worst = 0.0
    off = 0
    compared = 0
    resolved = [0, 0]  # values whose measured interval is narrower than the tolerance: (compared, within)
    unresolved = [0, 0, 0]  # the others: (compared, within the tolerance, prediction inside the interval)
    for topology in dict.fromkeys(measured.index.get_level_values(0)):
        levels = sorted(int(c) for c in measured.loc[topology].index)
        replayed = pd.DataFrame()
        if requests is not None and replay:
            replayed = replayed_cells(topology, config, requests, settings["pp"], settings["tg"])
        if not replayed.empty:
            predicted = replayed.groupby("concurrency")[list(METRICS)].mean()
            predicted_runs = replayed.set_index(["concurrency", "run"])[list(METRICS)]
        else:
            rows = predict_cells(topology, config, levels, prompt_tokens=settings["pp"], max_tokens=settings["tg"],
                                 runs=max(settings["runs"], 3), seed=1)
            predicted = pd.DataFrame(rows).groupby("concurrency")[list(METRICS)].mean()
            predicted_runs = None  # every run is predicted alike: the cell's mean stands for each
        for c in levels:
            parts = []
            for metric in METRICS:
                if statistic == "mean":
                    got, want = measured.loc[(topology, c), metric], predicted.loc[c, metric]
                else:
                    got, want = median_run(measured_runs.loc[(topology, c), metric], predicted_runs, c, metric,
                                           predicted.loc[c, metric])
                diff = got / want - 1
                worst = max(worst, abs(diff))
                mark = "*" if abs(diff) > tolerance else " "
                off += mark == "*"
                compared += 1
                half = spread.get((topology, c, metric), float("nan"))
                if half < tolerance:
                    resolved[0] += 1
                    resolved[1] += abs(diff) <= tolerance
                else:
                    mark += "~"
                    unresolved[0] += 1
                    unresolved[1] += abs(diff) <= tolerance
                    unresolved[2] += abs(diff) <= half  # NaN (no interval): never inside
                parts.append(f"{got:>17.1f} {want:>9.1f} {100 * diff:>+6.1f}%{mark:<2}")
            print(f"{topology:<16} {c:>3} | " + " | ".join(parts))
    print(f"\nworst cell: {100 * worst:.1f}%; {off} value(s) of {compared} beyond {100 * tolerance:.0f}%")
    print(f"the sweep resolves {resolved[0]} value(s) to +-{100 * tolerance:.0f}% (95% interval narrower): "
          f"{resolved[1]} within {100 * tolerance:.0f}%; {unresolved[0]} it does not (wider or no interval): "
          f"{unresolved[1]} within {100 * tolerance:.0f}%, {unresolved[2]} with the prediction inside the interval")
    return Agreement(worst, off, compared, resolved[0], resolved[0] - resolved[1])


def interval_halfwidths(cells: pd.DataFrame) -> dict[tuple[str, int, str], float]:
    """(topology, concurrency, metric) -> half the measured 95% interval, relative to the value: the runs'
    within-run intervals (bench/stats.py; a run of one request has none: NaN), averaged over the cell's runs
    and narrowed by sqrt(runs) as for a mean of independent runs."""
    out: dict[tuple[str, int, str], float] = {}
    for metric in METRICS:
        lo, hi = bound_columns(metric)
        if lo not in cells or hi not in cells:
            continue
        relative = (cells[hi] - cells[lo]) / 2 / cells[metric]
        frame = cells.assign(relative=relative)
        for (topology, concurrency), group in frame.groupby(["topology", "concurrency"]):
            out[(str(topology), int(concurrency), metric)] = float(group["relative"].mean() / len(group) ** 0.5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a `topo sweep --out` folder of a twin cluster")
    parser.add_argument("--card", help="model card (default: the sweep's model name under configs/cards/)")
    parser.add_argument("--hardware", help="hardware profile (default: what the sweep's twin nodes ran)")
    parser.add_argument("--link", choices=TRANSPORTS, help="TP link (default: what the env the sweep's TP=2 plan "
                        "rendered implies, as the twin engines decided it)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="mark cells off by more than this")
    parser.add_argument("--statistic", choices=("mean", "median"), default="mean",
                        help="a cell's figure: the mean over its runs on both sides (llama-benchy's cell), or its "
                             "median run (the run whose measured/predicted ratio is the median; one stalled run "
                             "cannot move it)")
    parser.add_argument("--no-replay", action="store_true",
                        help="predict every request as sent at once and routed by the model's own draw, instead of "
                             "replaying each measured run's send times and router split")
    args = parser.parse_args()
    compare(args.results, card=args.card, hardware=args.hardware, link=args.link, tolerance=args.tolerance,
            statistic=args.statistic, replay=not args.no_replay)


if __name__ == "__main__":
    main()
