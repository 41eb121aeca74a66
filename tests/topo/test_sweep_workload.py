"""`topo sweep --workload` on a local twin cluster (fast profile): a suite's closed, open and rate-sweep
tests measured per topology, keyed (topology, test, load), reported per test; a resume measures only what
is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.results_folder import ResultsFolder
from tests.support.local_cluster import write_local_cluster
from topo.sweep import SweepSpec, plan_sweep

SUITE = """
name: small
tests:
  - id: chat
    shape: {kind: random, prompt: 512, output: 24}
    load: {mode: closed, concurrency: [1, 3], runs: 2}
    decides: {use: Chat, metric: decode_tps_req, at: c3}
  - id: peak
    shape: {kind: fixed, prompt: 1500, output: 32}
    load: {mode: open, rate: 0.5, requests: 12, max_concurrency: 2}
    slo: {ttft_ms: 10000}
  - id: sweep
    shape: {kind: fixed, prompt: 1500, output: 32}
    load: {mode: rate-sweep, rates: [0.2, 1], min_requests: 8, limits_s: [1, 5]}
"""


def test_a_suite_is_planned_as_one_cell_per_point(tmp_path: Path) -> None:
    suite = tmp_path / "small.yaml"
    suite.write_text(SUITE)
    cluster = write_local_cluster(tmp_path)
    sweep = plan_sweep(SweepSpec(cluster=str(cluster), topologies=("solo", "tp2-mp"), suite=str(suite),
                                 only=("chat", "sweep")))
    assert [(c.workload, c.label, c.runs) for c in sweep.points] == [
        ("chat", "c1", 2), ("chat", "c3", 2), ("sweep", "0.2rps", 1), ("sweep", "1rps", 1)]
    assert sweep.total_runs == 2 * (2 + 2 + 1 + 1)


@pytest.mark.slow  # ~90 s: brings the twin up, twice (the resume)
def test_sweep_a_suite_on_the_local_twin(tmp_path: Path) -> None:
    suite = tmp_path / "small.yaml"
    suite.write_text(SUITE)
    cluster = write_local_cluster(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "topo", "sweep", "--cluster", str(cluster), "-t", "solo",
                           "--workload", str(suite), "--rate-scale", "20", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    contents = ResultsFolder(out).load()
    cells = contents.cells
    assert sorted(set(zip(cells.workload, cells.load))) == [
        ("chat", "c1"), ("chat", "c3"), ("peak", "0.5rps"), ("sweep", "0.2rps"), ("sweep", "1rps")]
    assert len(cells[cells.workload == "chat"]) == 2 * 2
    peak = cells[cells.workload == "peak"].iloc[0]
    assert peak.rate == 10.0 and peak.peak_in_flight <= 2 and peak.requests == 12 and peak.failed == 0
    assert peak.ttft_user_p99_ms >= peak.ttft_p99_ms
    report = (out / "report.md").read_text()
    assert "chat:" in report and "Capacity (sweep)" in report and "rates × 20" in report
    # the folder re-renders, and a resume finds nothing left to measure
    again = subprocess.run([sys.executable, "-m", "topo", "sweep", "--resume", str(out)], capture_output=True,
                           text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert len(ResultsFolder(out).read_cells()) == len(cells)
