"""`topo sweep` over real SSH on the namespace test bed: a multi-node topology measured, reported, torn down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bed_support import foreign_processes
from cluster.testbed import Testbed, missing_requirements

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(bool(missing_requirements()), reason="; ".join(missing_requirements()) or "ok"),
]


def test_sweep_of_tp2_mp_and_shuffle_over_ssh(bed: Testbed, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "topo", "sweep", "--cluster", bed.cluster_yaml, "--model", "tiny",
         "-t", "tp2-mp,2x-solo-shuffle", "-c", "1,2", "--runs", "2", "--pp", "128", "--tg", "16",
         "--twin-hardware", "fast", "--out", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    meta = json.loads((out / "meta.json").read_text())
    assert done.returncode == 0, f"{meta.get('errors')}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert meta["status"] == "complete"
    assert meta["cluster"]["nodes"][0]["connect"]["kind"] == "ssh"

    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == 2 * 2 * 2 and (cells.failed == 0).all()
    requests = pd.read_parquet(out / "requests.parquet")
    # each request through the proxy (which ran on a node, not on the controller) names a node's engine;
    # six requests are too few to demand both (all on one node: 1 in 32)
    shuffled = requests[requests.topology == "2x-solo-shuffle"].served_by
    assert shuffled.notna().all() and set(shuffled) <= {n.name for n in bed.nodes}
    assert "When to use" in (out / "report.md").read_text()
    # telemetry over SSH: the agent's own connections probed both nodes, whose twins answer nvidia-smi
    samples = pd.read_parquet(out / "telemetry.parquet")
    power = samples[samples.metric == "gpu_power_w"]
    assert set(power.source) == {f"node:{n.name}" for n in bed.nodes}
    assert "Energy per output token" in (out / "report.md").read_text()
    assert foreign_processes(bed) == {}  # nothing of either topology is left on any node
