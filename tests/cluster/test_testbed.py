"""Over real SSH on the namespace test bed: connectors, bad credentials, and all four topologies with the twin.

Needs root, `ip` and sshd (skipped otherwise). The bed uses its own prefix and subnet, so it does not touch
a bed someone made with `topo testbed up`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cluster.bringup import BringUpSettings, open_cluster, bring_up
from cluster.connector import SshConnector
from cluster.supervise import Supervised, group_alive, listening_ports, log_tail, step_paths, stop_group
from cluster.testbed import Testbed, missing_requirements
from bed_support import foreign_processes
from common.errors import BringUpError, ConnectError
from topology.inventory import Cluster, load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.recipe import load_recipe

SETTINGS = BringUpSettings(poll_s=0.5, stop_grace_s=10.0)

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(bool(missing_requirements()), reason="; ".join(missing_requirements()) or "ok"),
]


@pytest.fixture
def cluster(bed: Testbed) -> Cluster:
    return load_cluster(bed.cluster_yaml)


async def test_ssh_run_start_and_provable_stop(cluster: Cluster, bed: Testbed) -> None:
    node = cluster.nodes[1]
    ssh = SshConnector(node.name, node.connect)  # type: ignore[arg-type]
    try:
        done = await ssh.run(["sh", "-c", 'echo "$TOPO_NODE $GREETING"'], env={"GREETING": "it is me"})
        assert done.stdout == "node2 it is me\n"
        paths = step_paths(node.workdir, "listener")
        server = "import socket,time;s=socket.socket();s.bind(('%s',7777));s.listen();print('up',flush=True);time.sleep(600)"
        pgid = await ssh.start([sys.executable, "-c", server % node.fast_link.ip], log_path=paths.log, pidfile=paths.pidfile)
        deadline = time.monotonic() + 20
        while 7777 not in await listening_ports(ssh):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert "up" in await log_tail(ssh, paths.log)
        assert (await ssh.read_file(paths.pidfile)).splitlines()[0] == str(pgid)
        assert foreign_processes(bed).get("node2")
        outcome = await stop_group(ssh, Supervised("listener", "node2", pgid, paths.log, paths.pidfile), grace_s=5, ports=(7777,))
        assert not outcome.killed and not await group_alive(ssh, pgid)
        assert foreign_processes(bed) == {}
    finally:
        await ssh.close()


async def test_unknown_host_key_is_refused(cluster: Cluster, bed: Testbed, tmp_path: Path) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{bed.nodes[0].ip} {' '.join(Path(str(other) + '.pub').read_text().split()[:2])}\n")
    connect = cluster.nodes[0].connect.model_copy(update={"known_hosts": str(known_hosts)})
    with pytest.raises(ConnectError, match=f"host key of root@{bed.nodes[0].ip}:22 is not verified"):
        await SshConnector("node1", connect).run(["true"])  # type: ignore[arg-type]
    known_hosts.write_text("")  # a node missing from known_hosts entirely
    with pytest.raises(ConnectError, match="not verified"):
        await SshConnector("node1", connect).run(["true"])  # type: ignore[arg-type]


async def test_wrong_client_key_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    connect = cluster.nodes[0].connect.model_copy(update={"key": str(stranger)})
    with pytest.raises(ConnectError, match="refused our key"):
        await SshConnector("node1", connect).run(["true"])  # type: ignore[arg-type]


async def test_unreachable_node_and_closed_port_fail_quickly(cluster: Cluster) -> None:
    nobody = cluster.nodes[0].connect.model_copy(update={"host": f"{cluster.nodes[0].connect.host.rsplit('.', 1)[0]}.99", "connect_timeout_s": 3})
    began = time.monotonic()
    with pytest.raises(ConnectError, match=r"node 'ghost': (timed out connecting|cannot reach)"):
        await SshConnector("ghost", nobody).run(["true"])  # type: ignore[arg-type]
    assert time.monotonic() - began < 10
    closed = cluster.nodes[0].connect.model_copy(update={"port": 2222})
    with pytest.raises(ConnectError, match="refused the connection"):
        await SshConnector("node1", closed).run(["true"])  # type: ignore[arg-type]


async def test_a_bad_node_stops_the_bring_up_before_anything_starts(cluster: Cluster, bed: Testbed) -> None:
    nodes = list(cluster.nodes)
    nodes[1] = nodes[1].model_copy(update={"connect": nodes[1].connect.model_copy(update={"port": 2222})})
    broken = cluster.model_copy(update={"nodes": tuple(nodes)})
    launch = plan(parse_topology("tp2-mp"), broken, load_recipe("tiny"), secrets=PlanSecrets.generate())
    async with open_cluster(broken) as access:
        with pytest.raises(ConnectError, match="node 'node2'"):
            async with bring_up(launch, access, settings=SETTINGS):
                pytest.fail("must not come up")
    assert foreign_processes(bed) == {}


async def stream_one(client: httpx.AsyncClient, endpoint: str, headers: dict[str, str], model: str) -> list[dict]:
    chunks = []
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8, "stream": True}
    async with client.stream("POST", f"{endpoint}/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


@pytest.mark.parametrize(
    "topology",
    ["solo", "tp2-mp", "2x-solo-shuffle", pytest.param("tp2-ray", marks=pytest.mark.slow)],
)
async def test_topology_comes_up_serves_a_stream_and_leaves_nothing(cluster: Cluster, bed: Testbed, topology: str) -> None:
    launch = plan(parse_topology(topology), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    async with open_cluster(cluster) as access:
        async with bring_up(launch, access, settings=SETTINGS) as running:
            assert set(running.processes) == {step.name for step in launch.steps()}
            assert running.bring_up_s >= max(running.ready_s.values())
            async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                chunks = await stream_one(client, running.endpoint, running.endpoint_headers(), launch.served_model_name)
            assert len(chunks) >= 2 and "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            nodes_used = {step.node for step in launch.steps()}
            assert set(foreign_processes(bed)) == nodes_used
    assert [outcome.step for outcome in running.stopped] == [step.name for step in launch.teardown_order()]
    assert foreign_processes(bed) == {}


async def test_proxy_on_the_controller_reaches_the_nodes_over_the_bridge(cluster: Cluster, bed: Testbed, tmp_path: Path) -> None:
    proxy = cluster.proxy.model_copy(update={"node": "controller", "workdir": str(tmp_path / "controller")})
    with_controller_proxy = cluster.model_copy(update={"proxy": proxy})
    launch = plan(parse_topology("2x-solo-shuffle"), with_controller_proxy, load_recipe("tiny"), secrets=PlanSecrets.generate())
    assert next(step for step in launch.steps() if step.role == "proxy").node == "controller"
    async with open_cluster(with_controller_proxy) as access:
        async with bring_up(launch, access, settings=SETTINGS) as running:
            served_by = set()
            async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                for _ in range(6):
                    response = await client.post(
                        f"{running.endpoint}/chat/completions",
                        headers=running.endpoint_headers(),
                        json={"model": launch.served_model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                    )
                    assert response.status_code == 200, response.text
                    served_by.add(response.headers.get("x-litellm-model-id"))
            assert served_by <= {"node1", "node2"} and served_by
            proxy_pgid = running.processes["proxy"].pgid
    assert foreign_processes(bed) == {}
    assert not Path(f"/proc/{proxy_pgid}").exists() or Path(f"/proc/{proxy_pgid}/stat").read_text().split(")")[1].split()[0] == "Z"


async def test_an_engine_that_fails_to_start_reports_its_log_and_everything_is_torn_down(cluster: Cluster, bed: Testbed) -> None:
    nodes = list(cluster.nodes)
    nodes[1] = nodes[1].model_copy(update={"engine": nodes[1].engine.model_copy(update={"hardware": "no-such-hw"})})
    broken = cluster.model_copy(update={"nodes": tuple(nodes)})
    launch = plan(parse_topology("2x-solo-shuffle"), broken, load_recipe("tiny"), secrets=PlanSecrets.generate())
    async with open_cluster(broken) as access:
        with pytest.raises(BringUpError, match="engine-node2 on node 'node2' exited during bring-up") as caught:
            async with bring_up(launch, access, settings=SETTINGS):
                pytest.fail("must not come up")
    assert "no-such-hw" in str(caught.value)  # the twin's own complaint, from the node's log
    assert foreign_processes(bed) == {}


async def test_cancelled_bring_up_is_torn_down_on_the_nodes(cluster: Cluster, bed: Testbed) -> None:
    launch = plan(parse_topology("tp2-mp"), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    async with open_cluster(cluster) as access:
        started = asyncio.Event()

        class Watch:
            def event(self, step: str | None, message: str, *, log_line: bool = False) -> None:
                if step == "engine-rank0" and message.startswith("starting"):
                    started.set()

        async def run() -> None:
            async with bring_up(launch, access, progress=Watch(), settings=SETTINGS):
                await asyncio.sleep(600)

        task = asyncio.ensure_future(run())
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert foreign_processes(bed) == {}


def test_no_namespace_has_a_default_route_and_nodes_see_each_other(bed: Testbed) -> None:
    for node in bed.nodes:
        routes = subprocess.run(["ip", "-n", node.namespace, "route", "show"], capture_output=True, text=True, check=True).stdout
        assert "default" not in routes and f"{bed.subnet}.0/24" in routes
        assert subprocess.run(["ip", "-n", node.namespace, "-6", "route", "show", "default"], capture_output=True, text=True).stdout == ""
    # node1 reaches node2's sshd across the bridge (the fast link of the engines)
    reach = f"import socket; socket.create_connection(('{bed.nodes[1].ip}', 22), 5).close()"
    done = subprocess.run(["ip", "netns", "exec", bed.nodes[0].namespace, sys.executable, "-c", reach], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
