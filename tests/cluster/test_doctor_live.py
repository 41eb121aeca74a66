"""`topo doctor` for real: on a local two-node twin cluster (ready, exit 0), and over SSH on the namespace
test bed, first ready, then with one node's MTU lowered so the MTU and do-not-fragment checks block."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.doctor import diagnose
from cluster.testbed import Testbed, missing_requirements
from common.config import REPO_ROOT
from support.local_cluster import write_local_cluster
from topo.cli import app
from topology.inventory import load_cluster
from topology.recipe import load_recipe


def test_doctor_on_the_local_twin_cluster_says_ready(tmp_path: Path) -> None:
    cluster_file = write_local_cluster(tmp_path)
    result = CliRunner().invoke(app, ["doctor", "--cluster", str(cluster_file), "--model", "tiny"],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "READY" in result.output
    for check in ("ssh", "sudo-less", "address", "mtu", "link", "engine", "memory", "ports", "clock", "disk", "leftovers"):
        assert f" {check} " in result.output, check
    assert "127.0.0.1 on lo" in result.output and "twin 0.1.0" in result.output


@pytest.mark.testbed
@pytest.mark.skipif(bool(missing_requirements()), reason="; ".join(missing_requirements()) or "ok")
async def test_doctor_on_the_test_bed_blocks_on_an_mtu_mismatch(bed: Testbed) -> None:
    cluster = load_cluster(bed.cluster_yaml)
    # the nodes run this source tree's twin (over SSH the controller's PYTHONPATH is not inherited)
    nodes = tuple(node.model_copy(update={"env": {"PYTHONPATH": str(REPO_ROOT)}}) for node in cluster.nodes)
    cluster = cluster.model_copy(update={"nodes": nodes})
    recipe = load_recipe("tiny")
    ready = await diagnose(cluster, recipe)
    assert ready.exit_code == 0, ready.text()
    first, second = bed.nodes[0], bed.nodes[1]
    assert f"{second.name} reached, 1472 B unfragmented" in next(
        f.detail for f in ready.findings if f.node == first.name and f.check == "link")

    def set_mtu(mtu: int) -> None:
        subprocess.run(["ip", "netns", "exec", second.namespace, "ip", "link", "set", "dev", second.node_link,
                        "mtu", str(mtu)], check=True, capture_output=True, timeout=30)

    set_mtu(1400)
    try:
        blocked = await diagnose(cluster, recipe)
    finally:
        set_mtu(1500)
    print(blocked.text())  # the closing note quotes it
    assert blocked.exit_code == 2
    failed = {(f.node, f.check) for f in blocked.blocking}
    assert (second.name, "mtu") in failed and (first.name, "mtu") in failed
    assert (first.name, "link") in failed  # 1472 bytes unfragmented do not fit node 2's 1400
    assert "not a 1472-byte do-not-fragment ping" in next(
        f.detail for f in blocked.findings if f.node == first.name and f.check == "link")
    assert {check for _, check in failed} == {"mtu", "link"}  # nothing else blocks


def test_sweep_runs_the_blocking_checks_first_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    import yaml

    cluster_file = write_local_cluster(tmp_path)
    engine_port = yaml.safe_load(cluster_file.read_text())["nodes"][0]["engine"]["port"]
    out = tmp_path / "results"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", engine_port))
        squatter.listen()
        result = CliRunner().invoke(app, ["sweep", "--cluster", str(cluster_file), "--model", "tiny", "-t", "solo",
                                          "-c", "1", "--out", str(out)])
    assert result.exit_code != 0
    assert "is not ready, nothing was started" in str(result.exception)
    assert f"node1: ports: in use: {engine_port} (engine)" in str(result.exception)
    assert not out.exists() and not list(tmp_path.rglob("run/*.pid"))
