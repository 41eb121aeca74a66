"""`topo predict --workload`: a suite's closed, open and rate-sweep tests through the twin, reported per test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]


def topo(*args: str) -> subprocess.CompletedProcess[str]:
    # A subprocess with this tree first on the path: under pytest, tests/reports/ (a package named
    # `reports`) shadows the real one, so an in-process import of reports.workloads finds the installed copy.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "topo", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600, check=False)

SUITE = """
name: small
think_time_s: 20
tests:
  - id: chat
    shape: {kind: fixed, prompt: 256, output: 32}
    load: {mode: closed, concurrency: [1, 4], runs: 2}
    decides: {use: Chat, metric: decode_tps_req, at: c4}
  - id: peak
    shape: {kind: random, prompt: 2000, output: 64}
    load: {mode: open, rate: 8, requests: 40, max_concurrency: 4}
    slo: {ttft_ms: 2000}
    decides: {use: Peak, metric: ttft_p99_ms}
  - id: sweep
    shape: {kind: random, prompt: 2000, output: 64}
    load: {mode: rate-sweep, rates: [0.5, 2, 8], min_requests: 20, limits_s: [1, 5]}
    decides: {use: Capacity, metric: capacity}
"""


def test_predict_a_suite(tmp_path: Path) -> None:
    suite = tmp_path / "small.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    result = topo("predict", "--workload", str(suite), "-t", "solo,2x-solo-shuffle", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    cells = pd.read_parquet(out / "cells.parquet")
    assert set(zip(cells.workload, cells.load)) == {("chat", "c1"), ("chat", "c4"), ("peak", "8rps"),
                                                   ("sweep", "0.5rps"), ("sweep", "2rps"), ("sweep", "8rps")}
    assert len(cells[(cells.workload == "chat")]) == 2 * 2 * 2  # the test's own 2 runs per point
    peak = cells[cells.workload == "peak"]
    assert (peak.peak_in_flight <= 4).all()  # the cap held
    assert (peak.ttft_user_p99_ms >= peak.ttft_p99_ms).all()  # the user's clock starts at the due time
    sweep = cells[cells.workload == "sweep"].sort_values("rate")
    assert list(sweep[sweep.topology == "solo"].rate) == [0.5, 2, 8]
    report = (out / "report.md").read_text()
    for heading in ("When to use which topology", "chat:", "peak:", "Capacity (sweep)", "p95 TTFT ≤ 5 s", "users"):
        assert heading in report
    assert "rate-sweep" in (out / "meta.json").read_text()
    html = (out / "report.html").read_text()
    assert "p95 TTFT vs achieved rate" in html


def test_only_needs_a_workload(tmp_path: Path) -> None:
    result = topo("predict", "--only", "01-chat")
    assert result.returncode != 0 and "--workload" in result.stdout + result.stderr


def test_topo_report_re_renders_a_workload_folder(tmp_path: Path) -> None:
    suite = tmp_path / "small.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    assert topo("predict", "--workload", str(suite), "-t", "solo", "--only", "chat", "--out", str(out)).returncode == 0
    (out / "report.md").unlink()
    result = topo("report", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chat:" in (out / "report.md").read_text() and "chat:" in result.stdout
