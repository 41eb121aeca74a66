"""tp2-ray then tp4-ray on the local twin of four nodes share one real Ray cluster: `ray start --head` runs
once, both topologies are measured, and no Ray process is left afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.support.local_cluster import write_local_cluster
from tests.support.sweep_process import assert_nothing_left, topo


@pytest.mark.slow
def test_tp2_ray_and_tp4_ray_run_on_one_ray_cluster(tmp_path: Path) -> None:
    """About 2-3 minutes on a busy two-core machine (two Ray bring-ups of the twin)."""
    cluster = write_local_cluster(tmp_path / "cluster", source="local-twin-4")
    out = tmp_path / "results"
    # given the other way round: the sweep runs the smaller Ray cluster first so the larger one can grow from it
    done = topo("sweep", "--cluster", str(cluster), "--model", "tiny", "-t", "tp4-ray,tp2-ray", "-c", "1",
                "--runs", "1", "--pp", "256", "--tg", "16", "--out", str(out))
    meta = json.loads((out / "meta.json").read_text())
    assert done.returncode == 0, f"{meta['errors']}\n{done.stderr[-3000:]}"

    cells = pd.read_parquet(out / "cells.parquet")
    assert sorted(cells.topology) == ["tp2-ray", "tp4-ray"]
    assert (cells.failed == 0).all() and (cells.decode_tps > 0).all()
    assert meta["ray_kept_from"] == {"tp4-ray": "tp2-ray"}
    assert list(meta["startup_s"]) == ["tp2-ray", "tp4-ray"]  # the order they ran in

    # every `ray start --head` opens a new session folder in the head's --temp-dir: one, shared by all four
    # nodes (node3 and node4 joined the cluster tp2-ray started)
    workdirs = {node["name"]: Path(node["workdir"]) for node in yaml.safe_load(cluster.read_text())["nodes"]}
    head_sessions = sorted(p.name for p in (workdirs["node1"] / "ray").glob("session_2*"))
    assert len(head_sessions) == 1, head_sessions
    for node in ("node3", "node4"):
        assert sorted(p.name for p in (workdirs[node] / "ray").glob("session_2*")) == head_sessions

    timing = meta["timing"]
    assert 0 < timing["serving_s"] < timing["wall_s"]
    assert timing["serving_share"] == pytest.approx(timing["serving_s"] / timing["wall_s"], abs=1e-3)
    assert_nothing_left(cluster)
