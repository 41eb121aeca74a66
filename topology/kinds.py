"""The topology kinds and `plan()`: which processes run where, in which order, for one topology.

    Solo                  one TP=1 engine on the head node                     name: solo
    TensorParallelMp      one engine over N nodes, PyTorch distributed (mp)     name: tp2-mp
    TensorParallelRay     one engine over N nodes of a Ray cluster             name: tp2-ray
    SoloShuffle           one TP=1 engine per node behind a LiteLLM proxy       name: 2x-solo-shuffle

A plain discriminated union (`Topology`), parameterised by node count, so tp4-mp or 4x-solo-shuffle are
the same classes with `nodes=4`. `plan()` is pure: the cluster and recipe are already loaded, secrets are
passed in, nothing is read or started.

Per engine process (and per Ray node process, whose workers run the engine's ranks): VLLM_HOST_IP is the
node's fast-link IP and GLOO/NCCL/TP_SOCKET_IFNAME its fast-link interface, then the recipe's env, then
the node's env. HTTP probe URLs and the endpoint are addresses as seen from the controller.
"""

from __future__ import annotations

import json
import re
import secrets as secrets_module
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Union

import yaml
from pydantic import Field

from common.config import StrictModel
from common.errors import PlanError
from topology.inventory import CONTROLLER, Cluster, Node, TwinEngine, VllmEngine
from topology.plan import (
    ArgOrSecret,
    CommandProbe,
    HttpProbe,
    LaunchPlan,
    NoProbe,
    Probe,
    Secret,
    Stage,
    Step,
    Stop,
    StopByCommand,
    StopByProcessGroup,
)
from topology.recipe import Recipe

# ---------------------------------------------------------------------------------------------------------
# The kinds


class Solo(StrictModel):
    """One TP=1 engine on the head node."""

    kind: Literal["solo"] = "solo"

    @property
    def name(self) -> str:
        return "solo"

    @property
    def nodes_needed(self) -> int:
        return 1


class TensorParallelMp(StrictModel):
    """One engine spanning `nodes` nodes over PyTorch distributed: headless ranks first, then rank 0."""

    kind: Literal["tp-mp"] = "tp-mp"
    nodes: int = Field(default=2, ge=2)

    @property
    def name(self) -> str:
        return f"tp{self.nodes}-mp"

    @property
    def nodes_needed(self) -> int:
        return self.nodes


class TensorParallelRay(StrictModel):
    """One engine spanning `nodes` nodes of a Ray cluster started for it (head on node 0)."""

    kind: Literal["tp-ray"] = "tp-ray"
    nodes: int = Field(default=2, ge=2)

    @property
    def name(self) -> str:
        return f"tp{self.nodes}-ray"

    @property
    def nodes_needed(self) -> int:
        return self.nodes


class SoloShuffle(StrictModel):
    """One TP=1 engine on each of `nodes` nodes, behind a LiteLLM proxy that picks one at random."""

    kind: Literal["solo-shuffle"] = "solo-shuffle"
    nodes: int = Field(default=2, ge=2)

    @property
    def name(self) -> str:
        return f"{self.nodes}x-solo-shuffle"

    @property
    def nodes_needed(self) -> int:
        return self.nodes


Topology = Annotated[
    Union[Solo, TensorParallelMp, TensorParallelRay, SoloShuffle], Field(discriminator="kind")
]

# The four topologies of the published study, in the order a sweep runs them.
STUDY_TOPOLOGIES: tuple[str, ...] = ("solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle")

_NAME_FORMS: tuple[tuple[re.Pattern[str], type[StrictModel]], ...] = (
    (re.compile(r"^tp(\d+)-mp$"), TensorParallelMp),
    (re.compile(r"^tp(\d+)-ray$"), TensorParallelRay),
    (re.compile(r"^(\d+)x-solo-shuffle$"), SoloShuffle),
)


def parse_topology(name: str) -> Topology:
    """`solo`, `tpN-mp`, `tpN-ray`, `Nx-solo-shuffle` (N >= 2) -> the topology."""
    if name == "solo":
        return Solo()
    for pattern, kind in _NAME_FORMS:
        match = pattern.match(name)
        if match and int(match.group(1)) >= 2:
            return kind(nodes=int(match.group(1)))  # type: ignore[call-arg]
    raise PlanError(
        f"unknown topology {name!r}: expected solo, tpN-mp, tpN-ray or Nx-solo-shuffle with N >= 2 "
        f"(the study's four: {', '.join(STUDY_TOPOLOGIES)})"
    )


# ---------------------------------------------------------------------------------------------------------
# Secrets


@dataclass(frozen=True)
class PlanSecrets:
    """Values a plan needs and must never print. Generate fresh ones per bring-up."""

    litellm_master_key: Secret

    @classmethod
    def generate(cls) -> PlanSecrets:
        # LiteLLM expects master keys to start with "sk-".
        return cls(litellm_master_key=Secret(secret=f"sk-topo-{secrets_module.token_urlsafe(24)}"))


# ---------------------------------------------------------------------------------------------------------
# Building blocks

ROUTER_CONFIG_NAME = "router.yaml"
ENGINE_API_KEY_PLACEHOLDER = "none"  # engines run without --api-key; LiteLLM's openai client wants some key
_NETWORK_ENV = ("VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME")


def _node_env(node: Node, recipe: Recipe, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The fast-link variables, then the recipe's env, then the node's (a node may override the recipe)."""
    env = {
        "VLLM_HOST_IP": node.fast_link.ip,
        "GLOO_SOCKET_IFNAME": node.fast_link.interface,
        "NCCL_SOCKET_IFNAME": node.fast_link.interface,
        "TP_SOCKET_IFNAME": node.fast_link.interface,
    }
    for source, values in ((f"recipe {recipe.name!r}", recipe.env), (f"node {node.name!r}", node.env)):
        clashes = sorted(set(values) & set(_NETWORK_ENV))
        if clashes:
            raise PlanError(
                f"{source} sets {', '.join(clashes)}: these come from the node's fast_link (ip, interface); "
                "set them there instead"
            )
    merged = {**env, **recipe.env, **node.env}
    if extra:
        merged.update(extra)
    return merged


def _joined_workdir(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _container_name(topology: Topology, node: Node, suffix: str = "") -> str:
    return f"topo-{topology.name}-{node.name}{suffix}"


def _docker_image(node: Node, recipe: Recipe) -> str:
    assert isinstance(node.engine, VllmEngine)
    image = node.engine.image or recipe.image
    if not image:
        raise PlanError(
            f"node {node.name!r} uses the docker launcher but neither its engine.image nor recipe "
            f"{recipe.name!r} names a container image"
        )
    return image


def _docker_run(
    node: Node,
    recipe: Recipe,
    *,
    container: str,
    env: dict[str, str],
    entrypoint: str,
    args: list[str],
    extra_volumes: tuple[str, ...] = (),
) -> tuple[list[str], dict[str, str]]:
    """`docker run --rm -d ... --entrypoint PROGRAM IMAGE ARGS`: argv and the (empty) env of the docker CLI.

    The entrypoint is set explicitly because the vLLM images set their own (`vllm serve` or the API
    server module): `IMAGE vllm serve ...` would otherwise run `vllm serve vllm serve ...`.
    """
    engine = node.engine
    assert isinstance(engine, VllmEngine)
    argv = [engine.docker, "run", "--rm", "-d", "--name", container, "--gpus", "all", "--network", "host",
            "--ipc", "host"]
    for volume in (*engine.volumes, *extra_volumes):
        argv += ["-v", volume]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    argv += ["--entrypoint", entrypoint, _docker_image(node, recipe), *args]
    return argv, {}


def _serve_argv(node: Node, recipe: Recipe, parallel_flags: list[str], tensor_parallel: int) -> list[str]:
    """`serve MODEL -tp N [parallel flags] --port P [recipe flags]`, without the program in front."""
    return [
        "serve",
        recipe.weights,
        "-tp",
        str(tensor_parallel),
        *parallel_flags,
        "--port",
        str(node.engine.port),
        *recipe.serve_flags(tensor_parallel),
    ]


def _engine_step(
    topology: Topology,
    cluster: Cluster,
    recipe: Recipe,
    node: Node,
    *,
    name: str,
    role: str,
    tensor_parallel: int,
    parallel_flags: list[str],
    probe: Probe,
    listen_ports: tuple[int, ...],
    extra_env: dict[str, str] | None = None,
) -> Step:
    """One engine process on `node`, for whichever engine and launcher the node has."""
    env = _node_env(node, recipe, extra_env)
    serve = _serve_argv(node, recipe, parallel_flags, tensor_parallel)
    engine = node.engine
    grace = cluster.timeouts.stop_grace_s
    stop: Stop
    if isinstance(engine, TwinEngine):
        argv = [*engine.twin, *serve, "--hardware", engine.hardware, "--card", recipe.twin_card]
        if engine.noise_cv is not None:
            argv += ["--noise-cv", f"{engine.noise_cv:g}"]
        stop = StopByProcessGroup(grace_s=grace, ports=listen_ports)
    elif engine.launcher == "process":
        assert engine.vllm is not None  # the inventory requires it for the process launcher
        argv = [engine.vllm, *serve]
        stop = StopByProcessGroup(grace_s=grace, ports=listen_ports)
    else:
        container = _container_name(topology, node)
        argv, env = _docker_run(node, recipe, container=container, env=env, entrypoint="vllm", args=serve)
        stop = StopByCommand(argv=(engine.docker, "rm", "-f", container), ports=listen_ports)
    return Step(name=name, node=node.name, role=role, argv=tuple(argv), env=env, probe=probe, stop=stop)


def _engine_probe(cluster: Cluster, node: Node) -> HttpProbe:
    base = f"http://{node.reachable_host}:{node.engine.port}"
    return HttpProbe(urls=(f"{base}/health", f"{base}/v1/models"), timeout_s=cluster.timeouts.engine_ready_s)


def _endpoint(node: Node) -> str:
    return f"http://{node.reachable_host}:{node.engine.port}/v1"


def _same_engine_kind(topology: Topology, nodes: tuple[Node, ...]) -> None:
    kinds = {(node.engine.kind, getattr(node.engine, "launcher", "process")) for node in nodes}
    if len(kinds) > 1:
        described = ", ".join(f"{node.name}: {node.engine.kind}/{node.engine.launcher}" for node in nodes)
        raise PlanError(f"{topology.name}: every rank of one engine must run the same engine and launcher ({described})")


# ---------------------------------------------------------------------------------------------------------
# Per kind


def _plan_solo(topology: Solo, cluster: Cluster, recipe: Recipe) -> tuple[list[Stage], str, dict[str, ArgOrSecret]]:
    head = cluster.head
    step = _engine_step(
        topology, cluster, recipe, head, name="engine", role="engine", tensor_parallel=1, parallel_flags=[],
        probe=_engine_probe(cluster, head), listen_ports=(head.engine.port,),
    )
    return [Stage(steps=(step,))], _endpoint(head), {}


def _plan_tp_mp(
    topology: TensorParallelMp, cluster: Cluster, recipe: Recipe
) -> tuple[list[Stage], str, dict[str, ArgOrSecret]]:
    nodes = cluster.nodes[: topology.nodes]
    _same_engine_kind(topology, nodes)
    head = nodes[0]

    def rank_flags(rank: int) -> list[str]:
        flags = ["--distributed-executor-backend", "mp", "--nnodes", str(topology.nodes), "--node-rank", str(rank),
                 "--master-addr", head.fast_link.ip, "--master-port", str(head.master_port)]
        return flags + (["--headless"] if rank > 0 else [])

    headless = tuple(
        _engine_step(
            topology, cluster, recipe, node, name=f"engine-rank{rank}", role="engine-headless",
            tensor_parallel=topology.nodes, parallel_flags=rank_flags(rank), probe=NoProbe(), listen_ports=(),
        )
        for rank, node in enumerate(nodes)
        if rank > 0
    )
    rank0 = _engine_step(
        topology, cluster, recipe, head, name="engine-rank0", role="engine", tensor_parallel=topology.nodes,
        parallel_flags=rank_flags(0), probe=_engine_probe(cluster, head),
        listen_ports=(head.engine.port, head.master_port),
    )
    return [Stage(steps=headless), Stage(steps=(rank0,))], _endpoint(head), {}


# Ray puts AF_UNIX sockets at <temp-dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (~62
# characters after the temp dir) and a socket path may have at most 107 bytes.
RAY_TEMP_DIR_MAX_CHARS = 107 - len("/session_2026-11-23_19-35-37_784363_4219999/sockets/plasma_store")


def _ray_start(
    topology: TensorParallelRay, cluster: Cluster, recipe: Recipe, node: Node, *, head: Node, is_head: bool
) -> Step:
    ray = node.ray
    if len(node.ray_temp_dir) > RAY_TEMP_DIR_MAX_CHARS:
        raise PlanError(
            f"node {node.name!r}: Ray's --temp-dir {node.ray_temp_dir} (workdir + /ray) is "
            f"{len(node.ray_temp_dir)} characters; Ray's socket paths need it at most {RAY_TEMP_DIR_MAX_CHARS}: "
            "give the node a shorter `workdir`"
        )
    gcs = f"{head.fast_link.ip}:{head.ray.port}"
    if is_head:
        args = ["start", "--block", "--head", "--node-ip-address", node.fast_link.ip, "--port", str(ray.port)]
    else:
        args = ["start", "--block", "--address", gcs, "--node-ip-address", node.fast_link.ip]
    if ray.num_cpus is not None:
        args += ["--num-cpus", str(ray.num_cpus)]
    if ray.num_gpus is not None:
        args += ["--num-gpus", str(ray.num_gpus)]
    if ray.memory_bytes is not None:
        args += ["--memory", str(ray.memory_bytes)]
    if ray.object_store_bytes is not None:
        args += ["--object-store-memory", str(ray.object_store_bytes)]
    if ray.resources:
        amounts = {key: int(value) if value.is_integer() else value for key, value in ray.resources.items()}
        args += ["--resources", json.dumps(amounts, sort_keys=True, separators=(",", ":"))]
    args += ["--temp-dir", node.ray_temp_dir]
    if is_head:  # head-only flags: `ray start` refuses --include-dashboard on a worker
        args += [f"--include-dashboard={'true' if ray.include_dashboard else 'false'}"]
        if ray.disable_usage_stats:
            args += ["--disable-usage-stats"]

    # Every Ray node's processes host the engine's ranks, so they get the engine's env.
    env = _node_env(node, recipe)
    status = ["status", "--address", gcs]
    nodes_expected = 1 if is_head else topology.nodes
    listen_ports = (ray.port,) if is_head else ()
    name = "ray-head" if is_head else f"ray-worker-{node.name}"
    engine = node.engine
    stop: Stop
    if isinstance(engine, VllmEngine) and engine.launcher == "docker":
        container = _container_name(topology, node, "-ray")
        # the workdir holds Ray's --temp-dir: mounted at the same path, its logs stay readable on the node
        argv, env = _docker_run(node, recipe, container=container, env=env, entrypoint="ray", args=args,
                                extra_volumes=(f"{node.workdir}:{node.workdir}",))
        probe_argv = [engine.docker, "exec", container, "ray", *status]
        stop = StopByCommand(argv=(engine.docker, "rm", "-f", container), ports=listen_ports)
    else:
        argv = [ray.bin, *args]
        probe_argv = [ray.bin, *status]
        stop = StopByProcessGroup(grace_s=cluster.timeouts.ray_stop_grace_s, ports=listen_ports)
    probe = CommandProbe(
        argv=tuple(probe_argv),
        # `ray status` lists each active (or idle) node as " 1 node_<id>" under Active:/Idle:
        expect_pattern=r"^\s*1 node_[0-9a-f]+\s*$",
        expect_min_matches=nodes_expected,
        timeout_s=cluster.timeouts.ray_ready_s,
    )
    return Step(name=name, node=node.name, role="ray-head" if is_head else "ray-worker", argv=tuple(argv),
                env=env, probe=probe, stop=stop)


def _plan_tp_ray(
    topology: TensorParallelRay, cluster: Cluster, recipe: Recipe
) -> tuple[list[Stage], str, dict[str, ArgOrSecret]]:
    nodes = cluster.nodes[: topology.nodes]
    _same_engine_kind(topology, nodes)
    head = nodes[0]
    ray_head = _ray_start(topology, cluster, recipe, head, head=head, is_head=True)
    workers = tuple(_ray_start(topology, cluster, recipe, node, head=head, is_head=False) for node in nodes[1:])
    engine = _engine_step(
        topology, cluster, recipe, head, name="engine", role="engine", tensor_parallel=topology.nodes,
        parallel_flags=["--distributed-executor-backend", "ray"], probe=_engine_probe(cluster, head),
        listen_ports=(head.engine.port,),
        # the engine joins the Ray cluster started above (the per-node --temp-dir hides it from "auto")
        extra_env={"RAY_ADDRESS": f"{head.fast_link.ip}:{head.ray.port}"},
    )
    return [Stage(steps=(ray_head,)), Stage(steps=workers), Stage(steps=(engine,))], _endpoint(head), {}


def render_router_config(served_model_name: str, backends: list[tuple[str, str]]) -> str:
    """LiteLLM proxy config: every backend (id, api_base) under one model name, picked at random."""
    config = {
        "model_list": [
            {
                "model_name": served_model_name,
                "litellm_params": {
                    "model": f"openai/{served_model_name}",
                    "api_base": api_base,
                    "api_key": ENGINE_API_KEY_PLACEHOLDER,
                },
                "model_info": {"id": backend_id},
            }
            for backend_id, api_base in backends
        ],
        "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": 0},
    }
    return yaml.safe_dump(config, sort_keys=False)


# LiteLLM keeps an idle upstream connection for 120 s, vLLM (and the twin) close theirs after 5 s: a request
# the proxy sends down a connection the engine is closing fails ("Cannot write to closing transport"),
# which a CPU-bound proxy hits within minutes. The proxy must give idle connections up first.
PROXY_POOL_IDLE_ENV = "AIOHTTP_KEEPALIVE_TIMEOUT"
ENGINE_KEEP_ALIVE_ENV = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
ENGINE_DEFAULT_KEEP_ALIVE_S = 5


def _proxy_pool_idle_s(nodes: Sequence[Node], recipe: Recipe) -> int:
    """Half the shortest keep-alive of the engines behind the proxy (whole seconds, as LiteLLM reads it)."""
    keep_alives = []
    for node in nodes:
        raw = {**recipe.env, **node.env}.get(ENGINE_KEEP_ALIVE_ENV, str(ENGINE_DEFAULT_KEEP_ALIVE_S))
        try:
            keep_alives.append(int(raw))
        except ValueError:
            raise PlanError(f"node {node.name!r}: {ENGINE_KEEP_ALIVE_ENV}={raw!r} is not a whole number of seconds")
    idle = min(keep_alives) // 2
    if idle < 1:
        raise PlanError(
            f"{ENGINE_KEEP_ALIVE_ENV}={min(keep_alives)} is too short for an engine behind the proxy: the proxy "
            "must drop idle connections at least a second before the engine does; use 2 or more"
        )
    return idle


def _plan_solo_shuffle(
    topology: SoloShuffle, cluster: Cluster, recipe: Recipe, plan_secrets: PlanSecrets
) -> tuple[list[Stage], str, dict[str, ArgOrSecret]]:
    nodes = cluster.nodes[: topology.nodes]
    proxy = cluster.proxy
    proxy_node = None if proxy.node == CONTROLLER else cluster.node(proxy.node)
    if proxy_node is not None and proxy_node not in nodes:
        raise PlanError(f"proxy.node {proxy.node!r} is not one of the {topology.nodes} nodes {topology.name} uses")
    engines = tuple(
        _engine_step(
            topology, cluster, recipe, node, name=f"engine-{node.name}", role="engine", tensor_parallel=1,
            parallel_flags=[], probe=_engine_probe(cluster, node), listen_ports=(node.engine.port,),
        )
        for node in nodes
    )

    def api_base(node: Node) -> str:
        # from the controller: the address clients use; from a node: the fast link between nodes
        host = node.reachable_host if proxy_node is None else node.fast_link.ip
        return f"http://{host}:{node.engine.port}/v1"

    router_yaml = render_router_config(recipe.served_model_name, [(node.name, api_base(node)) for node in nodes])
    workdir = proxy.workdir or (proxy_node.workdir if proxy_node is not None else "/tmp/topo")
    config_path = _joined_workdir(workdir, topology.name, ROUTER_CONFIG_NAME)
    env: dict[str, ArgOrSecret] = dict(proxy_node.env) if proxy_node is not None else {}
    env.update({
        "LITELLM_MASTER_KEY": plan_secrets.litellm_master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        PROXY_POOL_IDLE_ENV: str(_proxy_pool_idle_s(nodes, recipe)),
    })
    proxy_host = "127.0.0.1" if proxy_node is None else proxy_node.reachable_host
    proxy_step = Step(
        name="proxy",
        node=proxy.node,
        role="proxy",
        argv=(proxy.litellm, "--config", config_path, "--port", str(proxy.port)),
        env=env,
        files={config_path: router_yaml},
        probe=HttpProbe(
            urls=(f"http://{proxy_host}:{proxy.port}/health/liveliness",), timeout_s=cluster.timeouts.proxy_ready_s
        ),
        stop=StopByProcessGroup(grace_s=cluster.timeouts.stop_grace_s, ports=(proxy.port,)),
    )
    headers: dict[str, ArgOrSecret] = {
        "Authorization": Secret(secret=f"Bearer {plan_secrets.litellm_master_key.secret}")
    }
    return [Stage(steps=engines), Stage(steps=(proxy_step,))], f"http://{proxy_host}:{proxy.port}/v1", headers


# ---------------------------------------------------------------------------------------------------------
# plan()


def _host_of(cluster: Cluster, node_name: str) -> str:
    return "local" if node_name == CONTROLLER else cluster.node(node_name).host_identity


def _check_port_collisions(cluster: Cluster, topology: Topology, stages: list[Stage]) -> None:
    """Processes sharing a host (local-twin: all of them) must listen on different ports."""
    owners: dict[tuple[str, int], str] = {}
    for stage in stages:
        for step in stage.steps:
            for port in step.stop.ports:
                key = (_host_of(cluster, step.node), port)
                if key in owners:
                    raise PlanError(
                        f"{topology.name}: {owners[key]} and {step.name} (node {step.node}) would both listen "
                        f"on port {port} of the same host; give the nodes different ports in the cluster file"
                    )
                owners[key] = f"{step.name} (node {step.node})"


def plan(topology: Topology, cluster: Cluster, recipe: Recipe, *, secrets: PlanSecrets) -> LaunchPlan:
    """The ordered steps that bring `topology` up on `cluster` serving `recipe`. Pure: nothing runs."""
    if len(cluster.nodes) < topology.nodes_needed:
        raise PlanError(
            f"{topology.name} needs {topology.nodes_needed} nodes but cluster {cluster.name!r} has "
            f"{len(cluster.nodes)} ({', '.join(node.name for node in cluster.nodes)})"
        )
    if isinstance(topology, Solo):
        stages, endpoint, headers = _plan_solo(topology, cluster, recipe)
    elif isinstance(topology, TensorParallelMp):
        stages, endpoint, headers = _plan_tp_mp(topology, cluster, recipe)
    elif isinstance(topology, TensorParallelRay):
        stages, endpoint, headers = _plan_tp_ray(topology, cluster, recipe)
    else:
        stages, endpoint, headers = _plan_solo_shuffle(topology, cluster, recipe, secrets)
    _check_port_collisions(cluster, topology, stages)
    return LaunchPlan(
        topology=topology.name,
        cluster=cluster.name,
        model=recipe.name,
        served_model_name=recipe.served_model_name,
        stages=tuple(stages),
        endpoint=endpoint,
        endpoint_headers=headers,
    )
