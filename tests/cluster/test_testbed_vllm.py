"""The real `vllm serve` (CPU build, tiny offline model) brought up over real SSH on the namespace test bed,
from the very argv topo renders: solo, tp2-mp (rank 1 headless on the other node) and 2x-solo-shuffle
behind the real LiteLLM proxy. One streamed request each, then nothing of it left on any node.
(tp2-ray is the twin's: vLLM's CPU platform does not support the ray executor.)
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from bed_support import foreign_processes
from cluster.bringup import BringUpSettings, bring_up, open_cluster
from cluster.testbed import Testbed, missing_requirements
from support.fixtures import VllmServers, tiny_vllm_recipe
from support.vllm_server import VLLM_VENV
from topology.inventory import Cluster, VllmEngine, load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(bool(missing_requirements()), reason="; ".join(missing_requirements()) or "ok"),
]


def vllm_cluster(bed: Testbed) -> Cluster:
    """The bed's cluster with the real vLLM CPU build as each node's engine."""
    cluster = load_cluster(bed.cluster_yaml)
    nodes = []
    for index, node in enumerate(cluster.nodes):
        engine = VllmEngine(kind="vllm", launcher="process", vllm=str(VLLM_VENV / "bin" / "vllm"), port=node.engine.port)
        env = {
            "PATH": f"{VLLM_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "VIRTUAL_ENV": str(VLLM_VENV),
            "PYTHONUNBUFFERED": "1",
            "VLLM_CPU_OMP_THREADS_BIND": str(index % 2),  # one core each (two cores here)
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        }
        nodes.append(node.model_copy(update={"engine": engine, "env": env}))
    timeouts = cluster.timeouts.model_copy(update={"engine_ready_s": 900, "stop_grace_s": 30})
    return cluster.model_copy(update={"nodes": tuple(nodes), "timeouts": timeouts})


# tp2-mp in the default run: it is the one of the three whose argv spans nodes (rank 1 headless over SSH);
# solo's and the proxy's way over SSH is the twin's test-bed test's too
@pytest.mark.parametrize("topology", [pytest.param("solo", marks=pytest.mark.long), "tp2-mp",
                                      pytest.param("2x-solo-shuffle", marks=pytest.mark.long)])
async def test_real_vllm_topology_over_ssh(bed: Testbed, vllm_servers: VllmServers, tiny_model_dir: Path, topology: str) -> None:
    vllm_servers.stop()  # one vLLM at a time on this machine: the session's loopback server goes first
    cluster = vllm_cluster(bed)
    launch = plan(parse_topology(topology), cluster, tiny_vllm_recipe(tiny_model_dir), secrets=PlanSecrets.generate())
    assert all(str(VLLM_VENV / "bin" / "vllm") == step.argv[0] for step in launch.steps() if step.role.startswith("engine"))
    async with open_cluster(cluster) as access:
        async with bring_up(launch, access, settings=BringUpSettings(poll_s=1.0)) as running:
            body = {
                "model": launch.served_model_name,
                "messages": [{"role": "user", "content": "Say hello"}],
                "max_tokens": 8,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            usage = None
            async with httpx.AsyncClient(trust_env=False, timeout=300) as client:
                async with client.stream(
                    "POST", f"{running.endpoint}/chat/completions", json=body, headers=running.endpoint_headers()
                ) as response:
                    assert response.status_code == 200, await response.aread()
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            usage = json.loads(line[6:]).get("usage") or usage
            assert usage is not None and usage["completion_tokens"] == 8
            assert set(foreign_processes(bed)) == {step.node for step in launch.steps()}
    assert foreign_processes(bed) == {}
