"""What ran, recorded: without it two sweeps cannot be compared (../shared/reference/spark_pair.md).

Once a topology is up, `what_ran()` asks the nodes and the engines, per node of the plan:

    engine_version / engine_commit   GET /version of the serving engine (vLLM and the twin answer it);
                                     the commit is the `+g<sha>` part of a development version
    image / image_id / image_digests the container image under the docker launcher (`docker image inspect`)
    nccl                             the NCCL version the engine logged (`vLLM is using nccl==X`, NCCL INFO)
    driver                           nvidia-smi's driver version, where a GPU is expected
    kernel                           `uname -r`
    env                              the NCCL/GLOO/... variables the plan rendered for its processes
                                     (secrets masked)

plus the topology's executor. Anything a node cannot say is None: this never fails a sweep.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import httpx

from cluster.connector import Connector
from cluster.doctor import gpu_expected
from common.errors import TopoError
from topology.inventory import Cluster, Node
from topology.plan import HttpProbe, LaunchPlan, Secret, Step, StopContainer
from topology.recipe import Recipe

# The variables that decide how ranks talk to each other; recorded per node as the plan rendered them.
LINK_ENV_PREFIXES = ("NCCL_", "GLOO_", "UCX_", "OMPI_MCA_", "TP_SOCKET_", "VLLM_HOST_IP", "RAY_memory_monitor")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.IGNORECASE)
_COMMIT = re.compile(r"\+g([0-9a-f]{7,40})")
_NCCL_IN_LOG = re.compile(r"nccl==(\d+(?:\.\d+)+)|NCCL version (\d+(?:\.\d+)+)")


def split_version(text: str | None) -> tuple[str | None, str | None]:
    """`0.11.1.dev42+g1a2b3c4d.d20260101` -> (that, "1a2b3c4d"); a release has no commit in its version."""
    if not text:
        return None, None
    match = _COMMIT.search(text)
    return text, match.group(1) if match else None


def nccl_from_log(text: str) -> str | None:
    match = _NCCL_IN_LOG.search(text)
    return (match.group(1) or match.group(2)) if match else None


def parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            env[key.strip()] = value
    return env


def step_env(step: Step) -> dict[str, str]:
    """The env a step's process gets: its own, or the env file a docker run reads. Secrets as ***."""
    if isinstance(step.stop, StopContainer) and "--env-file" in step.argv:
        path = step.argv[step.argv.index("--env-file") + 1]
        return parse_env_file(step.files.get(str(path), ""))
    return {key: "***" if isinstance(value, Secret) else value for key, value in step.env.items()}


def link_env(step: Step) -> dict[str, str]:
    """The link variables of a step, a secret-looking name masked whatever its value."""
    return {key: ("***" if _SECRET_NAME.search(key) else value) for key, value in sorted(step_env(step).items())
            if key.startswith(LINK_ENV_PREFIXES)}


def executor(plan: LaunchPlan) -> str:
    """vLLM's distributed executor of the plan's engines: mp, ray, or uni (one process, TP=1)."""
    for step in plan.steps():
        if step.role.startswith("engine") and "--distributed-executor-backend" in step.argv:
            return str(step.argv[step.argv.index("--distributed-executor-backend") + 1])
    return "uni"


async def _command(connector: Connector, argv: list[str]) -> str | None:
    try:
        done = await connector.run(argv, timeout=30)
    except TopoError:
        return None
    text = done.stdout.strip()
    return text if done.ok and text else None


async def _engine_version(client: httpx.AsyncClient, base: str) -> str | None:
    try:
        response = await client.get(f"{base}/version")
        version = response.json().get("version") if response.is_success else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(version) if version else None


async def _node_facts(node: Node, recipe: Recipe, connector: Connector, steps: list[Step],
                      logs: Mapping[str, str]) -> dict[str, Any]:
    engine = node.engine
    facts: dict[str, Any] = {"engine": engine.kind, "launcher": engine.launcher}
    kernel, driver, image, nccl = await asyncio.gather(
        _command(connector, ["uname", "-r"]),
        _command(connector, ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if gpu_expected(node) else asyncio.sleep(0, None),
        _command(connector, [engine.docker, "image", "inspect", "--format", "{{.Id}} {{join .RepoDigests \",\"}}",
                             engine.image or recipe.image or ""]) if engine.launcher == "docker" else asyncio.sleep(0, None),
        _command(connector, ["grep", "-m", "1", "-o", "-E", r"nccl==[0-9.]+|NCCL version [0-9.]+",
                             *[logs[step.name] for step in steps if step.name in logs]]) if logs else asyncio.sleep(0, None),
    )
    facts["kernel"] = kernel
    facts["driver"] = driver.splitlines()[0].strip() if driver else None
    if engine.launcher == "docker":
        image_id, _, digests = (image or "").partition(" ")
        facts["image"] = engine.image or recipe.image
        facts["image_id"] = image_id or None
        facts["image_digests"] = [d for d in digests.split(",") if d] if digests else []
    facts["nccl"] = nccl_from_log(nccl.splitlines()[0].split(":")[-1]) if nccl else None
    facts["env"] = {step.name: link_env(step) for step in steps}
    return facts


async def what_ran(plan: LaunchPlan, cluster: Cluster, recipe: Recipe, connectors: Mapping[str, Connector],
                   logs: Mapping[str, str], *, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """{executor, nodes: {node: facts}} of a topology that is up; `logs` maps step name -> its log path."""
    order = [node.name for node in cluster.nodes]  # the proxy may run on the controller: not a node
    engine_nodes = sorted({step.node for step in plan.steps() if step.node in order and step.node in connectors},
                          key=order.index)
    facts = await asyncio.gather(*(
        _node_facts(cluster.node(name), recipe, connectors[name], [s for s in plan.steps() if s.node == name],
                    {s.name: logs[s.name] for s in plan.steps() if s.node == name and s.name in logs})
        for name in engine_nodes
    ))
    nodes = dict(zip(engine_nodes, facts))
    serving = {step.node: step.probe.urls[0].removesuffix("/health") for step in plan.steps()
               if step.role == "engine" and isinstance(step.probe, HttpProbe)}
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=10) as client:
        versions = dict(zip(serving, await asyncio.gather(*(_engine_version(client, base) for base in serving.values()))))
    rank0 = next(iter(versions.values()), None)
    for name, node_facts in nodes.items():
        # a headless rank is part of rank 0's engine: same version
        version, commit = split_version(versions.get(name, rank0))
        node_facts["engine_version"], node_facts["engine_commit"] = version, commit
    return {"executor": executor(plan), "nodes": nodes}
