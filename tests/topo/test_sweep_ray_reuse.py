"""tp2-ray then tp4-ray on the local twin of four nodes share one real Ray cluster: `ray start --head` runs
once, both topologies are measured, and no Ray process is left afterwards."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.support.local_cluster import write_local_cluster
from tests.support.sweep_process import assert_nothing_left, interrupt_sweep, topo


@pytest.mark.slow
def test_tp2_ray_and_tp4_ray_run_on_one_ray_cluster(tmp_path: Path) -> None:
    """About 2-3 minutes on a busy two-core machine (two Ray bring-ups of the twin). At a load average of
    ~11 on two cores it failed: `ray start` gives a raylet a hard-coded 30 s to register with the GCS
    (ray/_private/node.py), which a joining worker then missed; any tp4-ray bring-up shares that limit."""
    cluster = write_local_cluster(tmp_path / "cluster", source="local-twin-4")
    out = tmp_path / "results"
    # given the other way round: the sweep runs the smaller Ray cluster first so the larger one can grow from it
    # --no-doctor: its do-not-fragment ping between the emulated nodes misses at a load average of ~10 here
    done = topo("sweep", "--no-doctor", "--cluster", str(cluster), "--model", "tiny", "-t", "tp4-ray,tp2-ray",
                "-c", "1", "--runs", "1", "--pp", "256", "--tg", "16", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())

    cells = pd.read_parquet(out / "cells.parquet")
    assert sorted(cells.topology) == ["tp2-ray", "tp4-ray"]
    assert (cells.failed == 0).all() and (cells.decode_tps > 0).all()
    assert meta["ray_kept_from"] == {"tp4-ray": "tp2-ray"}
    assert list(meta["startup_s"]) == ["tp2-ray", "tp4-ray"]  # the order they ran in
    assert "Cluster TP=4 (Ray): Ray cluster kept up from Cluster TP=2 (Ray)" in (out / "report.md").read_text()

    # every `ray start --head` opens a new session folder in the head's --temp-dir: one, shared by all four
    # nodes (node3 and node4 joined the cluster tp2-ray started)
    workdirs = node_workdirs(cluster)
    head_sessions = sorted(p.name for p in (workdirs["node1"] / "ray").glob("session_2*"))
    assert len(head_sessions) == 1, head_sessions
    for node in ("node3", "node4"):
        assert sorted(p.name for p in (workdirs[node] / "ray").glob("session_2*")) == head_sessions

    timing = meta["timing"]
    assert 0 < timing["serving_s"] < timing["wall_s"]
    assert timing["serving_share"] == pytest.approx(timing["serving_s"] / timing["wall_s"], abs=1e-3)
    assert_nothing_left(cluster)


def node_workdirs(cluster: Path) -> dict[str, Path]:
    return {node["name"]: Path(node["workdir"]) for node in yaml.safe_load(cluster.read_text())["nodes"]}


@pytest.mark.slow
@pytest.mark.long  # the interrupt paths of a plain sweep and the kept cluster's stop are tested in the default run
def test_sigterm_on_the_kept_cluster_leaves_nothing_and_resume_finishes(tmp_path: Path) -> None:
    """SIGTERM while tp4-ray grows the Ray cluster tp2-ray kept up: the adopted head and worker are stopped
    too; `--resume` then brings tp4-ray up on a Ray cluster of its own (about 3-4 minutes)."""
    cluster = write_local_cluster(tmp_path / "cluster", source="local-twin-4")
    out = tmp_path / "results"
    node3_worker = node_workdirs(cluster)["node3"] / "run" / "ray-worker-node3.pid"
    args = ["sweep", "--no-doctor", "--cluster", str(cluster), "--model", "tiny", "-t", "tp2-ray,tp4-ray",
            "-c", "1", "--runs", "1", "--pp", "256", "--tg", "16", "--out", str(out)]
    returncode, output = interrupt_sweep(args, out, lambda _: node3_worker.exists(),
                                         lambda process: os.killpg(process.pid, signal.SIGTERM), timeout=600)
    assert returncode == 143, output[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted" and "tp4-ray" not in meta["startup_s"]
    assert_nothing_left(cluster)

    done = topo("sweep", "--resume", str(out), "--no-doctor")
    meta = json.loads((out / "meta.json").read_text())
    assert done.returncode == 0, f"{meta['errors']}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    assert meta["status"] == "complete" and meta["ray_kept_from"] == {}  # tp2-ray was done: nothing to keep
    assert sorted(pd.read_parquet(out / "cells.parquet").topology) == ["tp2-ray", "tp4-ray"]
    assert_nothing_left(cluster)
