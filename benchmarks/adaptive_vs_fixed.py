"""Adaptive runs against a fixed count on a noisy twin: the same winner calls, for how many requests?

    .venv/bin/python benchmarks/adaptive_vs_fixed.py                      # a few minutes
    .venv/bin/python benchmarks/adaptive_vs_fixed.py --fixed-runs 20 -t solo,tp2-mp,2x-solo-shuffle -c 1,4

Sweeps the same topologies twice on a local twin cluster (private ports) whose every step jitters
(--noise-cv, default 0.05): once with `--runs N` (the study's way, N = --fixed-runs), once with `--runs auto`.
Prints the winner call of every (metric, level) and every recommendation from both, the requests each
sweep sent, and each sweep's wall time against the time it spent serving measured requests. Also, from the
fixed sweep: each cell's first measured run against its later runs (the warm-up is a short batch; a cold
first run would show here as a ratio well off 1). Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results_folder import ResultsFolder  # noqa: E402
from reports.report import Report, build_report  # noqa: E402
from reports.tables import METRICS  # noqa: E402
from tests.support.local_cluster import write_local_cluster  # noqa: E402


def sweep(out: Path, cluster: Path, args: argparse.Namespace, runs: str) -> Path:
    command = [sys.executable, "-m", "topo", "sweep", "--cluster", str(cluster), "-t", args.topologies,
               "-c", args.concurrency, "--pp", str(args.pp), "--tg", str(args.tg), "--twin-hardware", args.hardware,
               "--twin-noise-cv", f"{args.noise_cv:g}", "--runs", runs, "--max-runs", str(args.max_runs),
               "--seed", "1", "--out", str(out)]
    print(f"$ {' '.join(command)}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the sweep failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return out


def calls(report: Report) -> dict[str, tuple[str, str]]:
    """(the call, as the report words it): the call is who wins, or a tie and whom it names, not the margin."""
    found = {}
    for metric in METRICS:
        for row in report.winners[metric.key].rows:
            verdict = row.verdict
            if verdict is None:
                found[f"{metric.title} c{row.concurrency}"] = ("—", "—")
                continue
            call = (f"tie: {' / '.join(sorted((verdict.winner_name, verdict.runner_up_name)))}" if verdict.tie
                    else verdict.winner_name)
            found[f"{metric.title} c{row.concurrency}"] = (call, verdict.label())
    for r in report.recommendations:
        call = " or ".join(sorted(filter(None, (r.winner, r.runner_up if r.tie else None, r.executor_alternative))))
        found[f"Use: {r.use_case}"] = (call or "—", r.choice())
    return found


def summary(directory: Path) -> tuple[Report, int, dict[str, float], dict[str, str]]:
    folder = ResultsFolder(directory)
    cells, meta = folder.read_cells(), folder.read_meta()
    return build_report(cells, meta), int(cells["requests"].sum()), meta.timing, meta.cell_stops


def first_run_ratios(directory: Path) -> list[str]:
    cells = ResultsFolder(directory).read_cells()
    lines = []
    for (topology, load), rows in cells.groupby(["topology", "load"], sort=False):
        rows = rows.sort_values("run")
        if len(rows) < 3:
            continue
        first, later = rows.iloc[0], rows.iloc[1:]
        parts = []
        for key in ("decode_tps", "ttft_ms"):
            median = statistics.median(later[key])
            spread = (later[key].quantile(0.9) - later[key].quantile(0.1)) / median
            parts.append(f"{key} {first[key] / median:.3f} (later runs' p10-p90 spread {spread:.1%})")
        lines.append(f"  {topology:>16} {load:<4} first run / median of later runs: {'; '.join(parts)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-t", "--topologies", default="solo,tp2-mp,2x-solo-shuffle")
    parser.add_argument("-c", "--concurrency", default="1,4")
    parser.add_argument("--pp", type=int, default=256)
    parser.add_argument("--tg", type=int, default=32)
    parser.add_argument("--hardware", default="gb10", help="twin hardware profile (gb10: steps of ~20 ms)")
    parser.add_argument("--noise-cv", type=float, default=0.05)
    parser.add_argument("--fixed-runs", type=int, default=20)
    parser.add_argument("--max-runs", type=int, default=10)
    parser.add_argument("--keep", type=Path, default=None, help="keep the results folders here")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="adaptive-vs-fixed-"))
    cluster = write_local_cluster(root / "cluster")
    fixed = summary(sweep(root / "fixed", cluster, args, str(args.fixed_runs)))
    auto = summary(sweep(root / "auto", cluster, args, "auto"))

    fixed_calls, auto_calls = calls(fixed[0]), calls(auto[0])
    width = max(len(k) for k in fixed_calls)
    print(f"\nwinner calls: --runs {args.fixed_runs} | --runs auto")
    same = 0
    for key, (call, words) in fixed_calls.items():
        other_call, other_words = auto_calls.get(key, ("—", "—"))
        mark = "  " if call == other_call else "≠ "
        same += call == other_call
        print(f"{mark}{key:<{width}}  {words}  |  {other_words}")
    print(f"same call in {same} of {len(fixed_calls)}")
    print(f"\nrequests: --runs {args.fixed_runs}: {fixed[1]}; --runs auto: {auto[1]} "
          f"({auto[1] / fixed[1]:.0%} of the fixed sweep's)")
    for name, (_, _, timing, _) in ((f"--runs {args.fixed_runs}", fixed), ("--runs auto", auto)):
        print(f"{name}: wall {timing['wall_s']:.0f} s, serving measured requests {timing['serving_s']:.0f} s, "
              f"serving / wall = {timing['serving_share']:.0%}")
    print("\nwhy each adaptive cell stopped:")
    for cell, reason in auto[3].items():
        print(f"  {cell}: {reason}")
    print("\nwarm-up check (fixed sweep, a short warm-up batch before each cell):")
    print("\n".join(first_run_ratios(root / "fixed")))
    print(f"\nresults in {root}")


if __name__ == "__main__":
    main()
