"""The docker launcher against a real Docker engine: the twin in containers started the way vLLM's are
(`--network host --ipc host`, volumes, an env file, a container name topo owns), readiness through HTTP,
teardown by `docker stop` then `docker rm` with no container left, and a container killed from outside
seen as a dead engine. Skips with the reason when no Docker daemon answers (scripts/setup --test starts one).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cluster.bringup import BringUpSettings, bring_up, open_cluster
from common.errors import BringUpError
from support.docker_twin import containers_labelled, docker_unavailable, twin_container_env, twin_docker_engine, twin_image
from support.local_cluster import write_local_cluster
from topo.cli import app
from topology.inventory import load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.recipe import load_recipe

pytestmark = pytest.mark.docker

_REASON = docker_unavailable()
if _REASON is not None:
    pytestmark = [pytest.mark.docker, pytest.mark.skip(reason=f"Docker cannot run here: {_REASON}")]


def docker_cluster(directory: Path, name: str) -> Path:
    """The local two-node twin cluster with both twins in containers of the local test image."""
    path = write_local_cluster(directory, name=name)
    data = yaml.safe_load(path.read_text())
    engine = twin_docker_engine(twin_image())
    for node in data["nodes"]:
        node["engine"].update(engine)
        node["env"] = twin_container_env()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def inspect(container: str) -> dict:
    done = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)[0]


async def complete(endpoint: str, headers: dict[str, str], model: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        return await client.post(f"{endpoint}/completions", headers=headers,
                                 json={"model": model, "prompt": "Hello", "max_tokens": 4, "ignore_eos": True})


@pytest.mark.parametrize("topology", [
    "solo",
    "tp2-mp",  # ~9 s
    pytest.param("2x-solo-shuffle", marks=pytest.mark.slow),  # ~60 s: the LiteLLM proxy starts slowly on 2 busy cores
])
async def test_twin_in_containers_serves_and_leaves_no_container(tmp_path: Path, topology: str) -> None:
    cluster_name = f"dk-{topology}-{tmp_path.name[-8:]}".replace("_", "-")
    cluster = load_cluster(docker_cluster(tmp_path, cluster_name))
    launch = plan(parse_topology(topology), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    async with open_cluster(cluster) as nodes:
        async with bring_up(launch, nodes, settings=BringUpSettings(poll_s=0.2, stop_grace_s=5)) as running:
            response = await complete(running.endpoint, running.endpoint_headers(), launch.served_model_name)
            assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4
            names = containers_labelled(cluster_name)
            engines = [step for step in launch.steps() if step.role.startswith("engine")]
            assert sorted(names) == sorted(step.stop.container for step in engines)  # type: ignore[union-attr]
            for name in names:
                config = inspect(name)
                assert config["State"]["Running"]
                assert config["HostConfig"]["NetworkMode"] == "host" and config["HostConfig"]["IpcMode"] == "host"
                assert config["HostConfig"]["DeviceRequests"] in (None, [])  # no GPU here: no --gpus
                assert any(entry.startswith("VLLM_HOST_IP=127.0.0.1") for entry in config["Config"]["Env"])
                assert any(bind.endswith(":ro") for bind in config["HostConfig"]["Binds"])
                node = next(n for n in cluster.nodes if name.endswith(f"-{n.name}"))
                # the twin's modeled power lands where the node's telemetry reads it
                assert f"{node.twin_gpu_dir}:{node.twin_gpu_dir}" in config["HostConfig"]["Binds"]
    assert containers_labelled(cluster_name) == []
    assert sorted(str(p) for p in tmp_path.rglob("run/*.pid")) == []
    ready_lines = [line for step in engines for line in (Path(running.processes[step.name].log_path).read_text().splitlines())]
    assert ready_lines  # the container's output reached the step's log through the foreground `docker run`


async def test_container_killed_from_outside_is_a_dead_engine(tmp_path: Path) -> None:
    cluster_name = f"dk-kill-{tmp_path.name[-8:]}".replace("_", "-")
    cluster = load_cluster(docker_cluster(tmp_path, cluster_name))
    launch = plan(parse_topology("solo"), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    container = launch.steps()[0].stop.container  # type: ignore[union-attr]
    async with open_cluster(cluster) as nodes:
        async with bring_up(launch, nodes, settings=BringUpSettings(poll_s=0.2, stop_grace_s=5)) as running:
            await running.check_alive()
            subprocess.run(["docker", "kill", container], capture_output=True, timeout=30, check=True)
            deadline = time.monotonic() + 30
            with pytest.raises(BringUpError, match=f"engine on node 'node1' exited while the topology was up"):
                while time.monotonic() < deadline:
                    await running.check_alive()
                    await asyncio.sleep(0.2)
    assert containers_labelled(cluster_name) == []  # the killed container was removed too


async def test_a_leftover_container_blocks_bring_up_and_topo_down_removes_it(tmp_path: Path) -> None:
    cluster_name = f"dk-left-{tmp_path.name[-8:]}".replace("_", "-")
    cluster_file = docker_cluster(tmp_path, cluster_name)
    cluster = load_cluster(cluster_file)
    launch = plan(parse_topology("solo"), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    container = launch.steps()[0].stop.container  # type: ignore[union-attr]
    subprocess.run(["docker", "create", "--name", container, "--label", f"topo.cluster={cluster_name}", twin_image(),
                    "/bin/true"], capture_output=True, timeout=30, check=True)
    try:
        async with open_cluster(cluster) as nodes:
            with pytest.raises(BringUpError, match=f"a container named {container} already exists"):
                async with bring_up(launch, nodes):
                    pass
        assert not list(tmp_path.rglob("run/*.pid"))
        down = await asyncio.to_thread(CliRunner().invoke, app, ["down", "--cluster", str(cluster_file)])
        assert down.exit_code == 0 and f"removed container node1: {container}" in down.output, down.output
        assert containers_labelled(cluster_name) == []
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=30)
