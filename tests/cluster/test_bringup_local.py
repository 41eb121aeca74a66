"""The embedded local-twin shape (two local nodes, proxy on the controller) brought up for real with the
twin, on free ports and private workdirs; and `topo down` stopping what a crashed run left behind."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cluster.bringup import BringUpSettings, bring_up, open_cluster
from cluster.connector import LocalConnector
from cluster.supervise import group_alive, step_paths
from topo.cli import app
from topology.inventory import Cluster, load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.recipe import load_recipe


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def local_cluster(tmp_path: Path) -> Path:
    """configs/clusters/local-twin.yaml with free ports and workdirs under tmp_path (tests run in parallel)."""
    data = yaml.safe_load(Path("configs/clusters/local-twin.yaml").read_text())
    engine1, engine2, master1, master2, proxy = free_ports(5)
    for node, engine, master in zip(data["nodes"], (engine1, engine2), (master1, master2)):
        node["engine"]["port"] = engine
        node["master_port"] = master
        node["workdir"] = str(tmp_path / node["name"])
    data["proxy"].update(port=proxy, workdir=str(tmp_path / "controller"))
    data["timeouts"]["stop_grace_s"] = 10
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def our_processes(tmp_path: Path) -> list[str]:
    """Live processes whose command line mentions this test's directory or ports: nothing may be left."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(tmp_path) in args and stat.rsplit(")", 1)[1].split()[0] != "Z" and "pytest" not in args:
            found.append(args)
    return found


@pytest.mark.parametrize("topology", ["solo", "tp2-mp"])
async def test_local_twin_comes_up_serves_and_is_torn_down(tmp_path: Path, topology: str) -> None:
    cluster: Cluster = load_cluster(local_cluster(tmp_path))
    launch = plan(parse_topology(topology), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    async with open_cluster(cluster) as nodes:
        async with bring_up(launch, nodes, settings=BringUpSettings(poll_s=0.2)) as running:
            async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                response = await client.post(
                    f"{running.endpoint}/completions",
                    json={"model": launch.served_model_name, "prompt": "Hello", "max_tokens": 4, "ignore_eos": True},
                )
            assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4
            pgids = {name: process.pgid for name, process in running.processes.items()}
            local = LocalConnector()
            assert all([await group_alive(local, pgid) for pgid in pgids.values()])
    for pgid in pgids.values():
        assert not await group_alive(local, pgid)
    assert not list(tmp_path.glob("*/run/*.pid"))
    assert (tmp_path / "node1" / "logs").is_dir()  # logs stay for the post-mortem


def test_topo_down_stops_what_a_crashed_run_left(tmp_path: Path) -> None:
    import asyncio

    cluster_file = local_cluster(tmp_path)
    workdir = str(tmp_path / "node2")
    paths = step_paths(workdir, "engine-rank1")
    pgid = asyncio.run(
        LocalConnector("node2").start([sys.executable, "-c", "import time; time.sleep(600)", str(tmp_path)], log_path=paths.log, pidfile=paths.pidfile)
    )
    runner = CliRunner()
    result = runner.invoke(app, ["down", "--cluster", str(cluster_file), "--grace", "5"])
    assert result.exit_code == 0, result.output
    assert f"stopped engine-rank1 on node2 (process group {pgid})" in result.output
    assert our_processes(tmp_path) == []
    assert not Path(paths.pidfile).exists()
    again = runner.invoke(app, ["down", "--cluster", str(cluster_file)])
    assert again.exit_code == 0 and "nothing left over" in again.output
