"""The sweep end to end on a local two-node twin cluster (fast profile): real processes, real Ray, the real
LiteLLM proxy, real HTTP streaming; then interrupt-and-resume without losing or re-measuring a run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from bench.results_folder import ResultsFolder, runs_per_cell
from common.errors import ConfigError, ResultsError
from tests.support.local_cluster import write_local_cluster
from tests.support.sweep_process import assert_nothing_left, interrupt_sweep, topo
from topo.sweep import SweepSpec, plan_sweep, resume_spec

def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="runs"):
        SweepSpec(runs=0)
    with pytest.raises(ConfigError, match="concurrency"):
        SweepSpec(concurrency=(1, 0))
    with pytest.raises(ConfigError, match="twice"):
        SweepSpec(topologies=("solo", "solo"))


def test_plan_sweep_plans_every_topology_before_anything_runs(tmp_path: Path) -> None:
    cluster = write_local_cluster(tmp_path)
    sweep = plan_sweep(SweepSpec(cluster=str(cluster), concurrency=(1, 4), twin_hardware="gb10"))
    assert [t.topology for t in sweep.topologies] == ["solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle"]
    assert len(sweep.cells()) == 8
    plan_sweep(SweepSpec(cluster=str(cluster), twin_hardware="fast"))  # the cluster's own profile is fine too
    # --twin-hardware reaches every twin engine's argv
    for item in sweep.topologies:
        for step in item.launch.steps():
            if "twin" in step.argv:
                assert step.argv[step.argv.index("--hardware") + 1] == "gb10"


def test_unknown_topology_fails_before_anything_starts(tmp_path: Path) -> None:
    cluster = write_local_cluster(tmp_path)
    done = topo("sweep", "--cluster", str(cluster), "-t", "solo,tp3-mpx", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "unknown topology 'tp3-mpx'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_commands_and_starts_nothing(tmp_path: Path) -> None:
    cluster = write_local_cluster(tmp_path)
    done = topo("sweep", "--cluster", str(cluster), "-c", "1,2", "--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "8 cells, at most 80 measured runs" in " ".join(done.stdout.split())  # --runs auto: up to 10 a cell
    fixed = topo("sweep", "--cluster", str(cluster), "-c", "1,2", "--runs", "2", "--dry-run", "--out", str(tmp_path / "o"))
    assert "8 cells, 16 measured runs" in " ".join(fixed.stdout.split())
    assert "--distributed-executor-backend" in done.stdout and "litellm" in done.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_full_sweep_of_the_four_topologies(tmp_path: Path) -> None:
    cluster = write_local_cluster(tmp_path / "cluster")
    out = tmp_path / "results"
    done = topo("sweep", "--cluster", str(cluster), "-c", "1,2", "--runs", "2", "--pp", "256", "--tg", "16",
                "--out", str(out))
    meta = json.loads((out / "meta.json").read_text())
    assert done.returncode == 0, f"{meta['errors']}\n{done.stderr[-3000:]}"

    cells = pd.read_parquet(out / "cells.parquet")
    topologies = ["solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle"]
    assert sorted(cells.topology.unique()) == sorted(topologies)
    assert len(cells) == 4 * 2 * 2  # topology x concurrency x run
    assert (cells.failed == 0).all()
    assert (cells.decode_tps > 0).all() and (cells.prefill_tps > 0).all() and (cells.ttft_ms > 0).all()
    requests = pd.read_parquet(out / "requests.parquet")
    assert len(requests) == 4 * (1 + 2) * 2  # sum of c over levels, x runs, x topologies
    assert requests.error.isna().all()
    # every request through the proxy names the engine that served it (that the shuffle really spreads
    # requests is shown with enough of them in tests/topology/test_topology_local_twin_up.py)
    shuffled = requests[requests.topology == "2x-solo-shuffle"].served_by
    assert shuffled.notna().all() and set(shuffled) <= {"node1", "node2"}

    assert meta["status"] == "complete"
    assert set(meta["startup_s"]) == set(topologies) and all(v > 0 for v in meta["startup_s"].values())
    assert meta["spec"]["runs"] == 2 and meta["command_line"][0]
    report = (out / "report.md").read_text()
    for heading in ("Decode", "Prefill", "TTFT", "Ray", "When to use"):
        assert heading in report
    assert "plotly" in (out / "report.html").read_text()[:2_000_000].lower()
    assert_nothing_left(cluster)


@pytest.mark.slow
@pytest.mark.long  # the same path runs by default in tests/faults: SIGINT mid-sweep, then a --resume that re-measures nothing
def test_interrupted_sweep_resumes_without_losing_or_remeasuring(tmp_path: Path) -> None:
    # gb10 speed at low concurrency: each run takes about a second, slow enough to interrupt mid-sweep
    cluster = write_local_cluster(tmp_path / "cluster", hardware="gb10")
    out = tmp_path / "results"
    args = ["sweep", "--cluster", str(cluster), "-t", "solo,tp2-mp", "-c", "1,2,4", "--runs", "2",
            "--pp", "256", "--tg", "32", "--out", str(out)]
    store = ResultsFolder(out)
    # Ctrl-C once a few runs are stored but before the sweep is through.
    returncode, output = interrupt_sweep(args, out, lambda cells: sum(runs_per_cell(cells).values()) >= 3,
                                         lambda process: os.killpg(process.pid, signal.SIGINT))
    assert returncode == 130, output[-3000:]
    assert f"topo sweep --resume {out}" in output
    assert json.loads((out / "meta.json").read_text())["status"] == "interrupted"
    assert_nothing_left(cluster)

    before = store.read_cells()
    stored = runs_per_cell(before)
    assert 3 <= sum(stored.values()) < 2 * 3 * 2

    # The spec comes back from meta.json: the resumed sweep measures the same cells.
    assert resume_spec(out).concurrency == (1, 2, 4)
    done = topo("sweep", "--resume", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = store.read_cells()
    assert runs_per_cell(after) == {(t, "default", f"c{c}"): 2 for t in ("solo", "tp2-mp") for c in (1, 2, 4)}
    assert len(after) == 12
    key = ["topology", "concurrency", "run"]
    kept = before.merge(after, on=key, suffixes=("_before", "_after"))
    assert len(kept) == len(before)  # nothing measured before the interruption was lost ...
    assert (kept.decode_tps_before == kept.decode_tps_after).all()  # ... nor measured again
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and len(meta["resumed_at"]) == 1
    assert_nothing_left(cluster)


def test_resume_of_a_folder_that_is_not_a_sweep(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no meta.json"):
        resume_spec(tmp_path)


@pytest.mark.slow
def test_a_node_lost_mid_sweep_costs_only_that_topology(tmp_path: Path) -> None:
    cluster = write_local_cluster(tmp_path / "cluster", hardware="gb10")
    out = tmp_path / "results"
    args = ["sweep", "--cluster", str(cluster), "-t", "tp2-mp,solo", "-c", "1,2,4", "--runs", "1",
            "--pp", "256", "--tg", "48", "--out", str(out)]
    store = ResultsFolder(out)
    rank1_pidfile = cluster.parent / "node2" / "run" / "engine-rank1.pid"
    returncode, output = interrupt_sweep(
        args, out, lambda cells: bool(runs_per_cell(cells).get(("tp2-mp", "default", "c1"))),
        lambda _: os.killpg(int(rank1_pidfile.read_text().splitlines()[0]), signal.SIGKILL),  # node 2 is lost
    )
    assert returncode == 3, output[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "incomplete"
    assert "engine-rank1" in meta["errors"]["tp2-mp"]  # the error names what died
    cells = store.read_cells()
    done = runs_per_cell(cells)
    assert done[("tp2-mp", "default", "c1")] == 1  # measured before the loss: kept
    assert all(done.get(("solo", "default", f"c{c}")) == 1 for c in (1, 2, 4))  # the next topology still ran
    assert (cells[cells.topology == "solo"].failed == 0).all()
    assert_nothing_left(cluster)


@pytest.mark.slow
def test_four_node_layouts_sweep_on_the_local_twin_of_four(tmp_path: Path) -> None:
    """Every kind of four-node layout comes up and is measured on local-twin-4 (about 100 s)."""
    cluster = write_local_cluster(tmp_path / "cluster", source="local-twin-4")
    out = tmp_path / "results"
    topologies = ["tp4-mp", "2x-tp2-shuffle", "4x-solo-shuffle"]
    done = topo("sweep", "--cluster", str(cluster), "--model", "tiny", "-t", ",".join(topologies), "-c", "1,4",
                "--runs", "1", "--pp", "256", "--tg", "16", "--out", str(out))
    meta = json.loads((out / "meta.json").read_text())
    assert done.returncode == 0, f"{meta['errors']}\n{done.stderr[-3000:]}"
    cells = pd.read_parquet(out / "cells.parquet")
    assert sorted(cells.topology.unique()) == sorted(topologies) and len(cells) == 3 * 2
    assert (cells.failed == 0).all() and (cells.decode_tps > 0).all()
    requests = pd.read_parquet(out / "requests.parquet")
    served = requests[requests.topology == "2x-tp2-shuffle"].served_by
    assert served.notna().all() and set(served) <= {"node1", "node3"}  # the replicas' rank-0 nodes
    assert_nothing_left(cluster)
