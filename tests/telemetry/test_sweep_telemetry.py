"""A real sweep on a local two-node twin cluster writes telemetry.parquet, and its report shows energy, the
roofline and the servers' view: the twin's engines answer /metrics, the twin's ranks on BOTH nodes (rank 0
and the headless rank) answer the nvidia-smi query through the node probe, runs take their cell keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.support.local_cluster import write_local_cluster
from twin.profiles import load_hardware


@pytest.mark.slow  # 30-65 s: two topologies brought up and measured at gb10 speed
def test_a_sweep_samples_engines_and_both_nodes_and_reports_energy(tmp_path: Path) -> None:
    # gb10 speed: a c1 run of 32 tokens takes about a second, several samples at 0.25 s
    cluster = write_local_cluster(tmp_path / "cluster", hardware="gb10")
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "topo", "sweep", "--cluster", str(cluster), "-t", "solo,tp2-mp",
                           "-c", "1,4", "--runs", "1", "--pp", "256", "--tg", "32", "--telemetry-interval", "0.25",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((out / "meta.json").read_text())["status"] == "complete"

    samples = pd.read_parquet(out / "telemetry.parquet")
    sources = {t: set(s) for t, s in samples.groupby("topology")["source"]}
    assert sources["solo"] == {"engine:node1", "node:node1"}  # solo runs on the first node only
    assert sources["tp2-mp"] == {"engine:node1", "node:node1", "node:node2"}  # rank 1 serves no HTTP
    # every measured run has samples carrying its cell keys
    keyed = samples.dropna(subset=["run"]).groupby(["topology", "concurrency"]).size()
    assert set(keyed.index) == {(t, c) for t in ("solo", "tp2-mp") for c in (1, 4)}

    idle = load_hardware("gb10").power.idle_w
    power = samples[(samples.metric == "gpu_power_w") & samples.run.notna()]
    busiest = power.groupby(["topology", "node"])["value"].max()
    assert busiest[("solo", "node1")] > idle + 10
    # the headless rank on node 2 takes part in every step: its node draws load power too
    assert busiest[("tp2-mp", "node2")] > idle + 10
    running = samples[(samples.metric == "requests_running") & samples.run.notna()]
    assert running[running.concurrency == 4]["value"].max() == 4

    report = (out / "report.md").read_text()
    for heading in ("Energy per output token (J)", "What the servers saw, per cell",
                    "Decode against the memory-bandwidth roofline", "Cost per million output tokens"):
        assert heading in report
    energy = report.split("## Energy per output token")[1].split("##")[0]
    assert energy.count(" J · ") == 4  # every cell has a J/token figure
    assert 'id="timeline-solo"' in (out / "report.html").read_text()
