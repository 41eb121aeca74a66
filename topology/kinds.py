"""`plan()`: which processes run where, in which order, for one topology of the registry.

The topology (topology/registry.py) says how many engine replicas, of which tensor-parallel size, with
which executor, behind which router. plan() lays that out on the cluster's nodes in order:

    one engine, TP=1           the engine on the head node                            (solo)
    one engine, TP=N, mp       headless ranks 1..N-1 first, then rank 0               (tp2-mp)
    one engine, TP=N, ray      Ray head, Ray workers, then the engine                 (tp2-ray)
    R replicas behind a router each replica on its own K nodes, then the LiteLLM proxy (2x-solo-shuffle,
                               2x-tp2-shuffle)

`plan()` is pure: the cluster and recipe are already loaded, secrets are passed in, nothing is read or
started.

Per engine process (and per Ray node process, whose workers run the engine's ranks): VLLM_HOST_IP is the
node's fast-link IP and GLOO/NCCL/TP_SOCKET_IFNAME its fast-link interface, then the recipe's env, then
the node's env. HTTP probe URLs and the endpoint are addresses as seen from the controller.
"""

from __future__ import annotations

import json
import secrets as secrets_module
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from common.errors import PlanError
from topology.inventory import CONTROLLER, TWIN_GPU_DIR_ENV, Cluster, Node, TwinEngine
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
    StopByProcessGroup,
    StopContainer,
    config_env,
)
from topology.recipe import Recipe
from topology.registry import STUDY_TOPOLOGIES, RouterStrategy, Topology, parse_topology

# The planner's callers name these here too; they live in the registry.
__all__ = ["STUDY_TOPOLOGIES", "PlanSecrets", "Topology", "parse_topology", "plan", "render_router_config"]

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
# Always from the node's fast_link. The RoCE variables fast_link.rdma renders (NCCL_IB_HCA, ...) may be
# overridden by a recipe's or node's env (e.g. `mlx5_0:1`-style HCA lists): later wins.
_NETWORK_ENV = ("VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME")
# Ray's OOM killer misreads unified memory (a Spark's GPU and CPU share it) and kills healthy workers.
RAY_MEMORY_MONITOR_ENV = "RAY_memory_monitor_refresh_ms"


def _link_env(node: Node, *, ray: bool) -> dict[str, str]:
    """The fast link as the engine's libraries read it: gloo/NCCL/TP sockets always, RoCE when named."""
    link = node.fast_link
    env = {
        "VLLM_HOST_IP": link.ip,
        "GLOO_SOCKET_IFNAME": link.interface,
        "NCCL_SOCKET_IFNAME": link.interface,
        "TP_SOCKET_IFNAME": link.interface,
    }
    if link.rdma:
        env.update({
            "NCCL_IB_HCA": ",".join(link.rdma),  # both twins: NCCL stripes over them (~200 Gb/s, one ~100)
            "NCCL_IB_DISABLE": "0",
            "UCX_NET_DEVICES": link.interface,
            "OMPI_MCA_btl_tcp_if_include": link.interface,
        })
        if ray:
            env[RAY_MEMORY_MONITOR_ENV] = "0"
    return env


def _node_env(node: Node, recipe: Recipe, extra: dict[str, str] | None = None, *,
              ray: bool = False) -> dict[str, ArgOrSecret]:
    """The fast-link variables, then the recipe's env, then the node's (a node may override the recipe)."""
    env = _link_env(node, ray=ray)
    for source, values in ((f"recipe {recipe.name!r}", recipe.env), (f"node {node.name!r}", node.env)):
        clashes = sorted(set(values) & set(_NETWORK_ENV))
        if clashes:
            raise PlanError(
                f"{source} sets {', '.join(clashes)}: these come from the node's fast_link (ip, interface); "
                "set them there instead"
            )
    if isinstance(node.engine, TwinEngine):
        # every twin rank on this node (server, headless rank, Ray actor) reports its modeled power there
        env[TWIN_GPU_DIR_ENV] = node.twin_gpu_dir
    merged: dict[str, ArgOrSecret] = {**env, **config_env(recipe.env, f"recipe {recipe.name!r}"),
                                      **config_env(node.env, f"node {node.name!r}")}
    if extra:
        merged.update(extra)
    return merged


def _link_notes(nodes: Sequence[Node]) -> tuple[str, ...]:
    """What the plan of an engine spanning `nodes` should tell the operator about NCCL's transport."""
    notes = []
    for node in nodes:
        link = node.fast_link
        if not link.rdma:
            notes.append(
                f"node {node.name}: fast_link names no RoCE devices (rdma): NCCL picks the RoCE device it "
                f"detects, one twin (~100 Gb/s), or its TCP sockets over {link.interface} when none is visible "
                "(a container without /dev/infiniband); list both twins of the port in fast_link.rdma for the "
                "full 200 Gb/s"
            )
        elif len(link.rdma) == 1:
            notes.append(
                f"node {node.name}: NCCL will use one RoCE device ({link.rdma[0]}), about half of a Spark "
                "cable's bandwidth; list both twins of the port in fast_link.rdma for the full 200 Gb/s"
            )
    return tuple(notes)


def _joined_workdir(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


CONTAINER_LABEL = "topo.cluster"  # every container topo starts carries it: leftovers are found by it


def _container_name(topology: Topology, node: Node, suffix: str = "") -> str:
    return f"topo-{topology.name}-{node.name}{suffix}"


def _docker_image(node: Node, recipe: Recipe) -> str:
    image = node.engine.image or recipe.image
    if not image:
        raise PlanError(
            f"node {node.name!r} uses the docker launcher but neither its engine.image nor recipe "
            f"{recipe.name!r} names a container image"
        )
    return image


def render_env_file(env: dict[str, str]) -> str:
    """`docker run --env-file` content: one KEY=VALUE a line, taken literally (no quotes, no expansion)."""
    for key, value in env.items():
        if "\n" in value or "\n" in key:
            raise PlanError(f"env {key} holds a line break, which a docker env file cannot carry")
    return "".join(f"{key}={value}\n" for key, value in env.items())


def _docker_run(
    cluster: Cluster,
    topology: Topology,
    node: Node,
    recipe: Recipe,
    *,
    container: str,
    env: dict[str, ArgOrSecret],
    entrypoint: str,
    args: list[str],
    extra_volumes: tuple[str, ...] = (),
) -> tuple[list[str], dict[str, ArgOrSecret], dict[str, str]]:
    """`docker run --name NAME ... --entrypoint PROGRAM IMAGE ARGS`, in the foreground: argv, the env of
    the docker CLI, and the env file it reads (path -> content). Secrets stay out of both the file and the
    argv: `-e KEY` without a value passes the CLI's own variable (the CLI env holds only the secrets), so
    neither `ps` on the node nor the file on its disk shows one.

    Foreground, so the supervised process is the container's life: a container that dies (or is killed
    from outside) ends `docker run` and bring-up sees a dead engine. No `--rm`: teardown stops, then
    removes, then proves the name gone. The entrypoint is set explicitly because the vLLM images set their
    own (`vllm serve` or the API server module): `IMAGE vllm serve ...` would run `vllm serve vllm serve`.
    """
    engine = node.engine
    env_file = _joined_workdir(node.workdir, topology.name, f"{container}.env")
    argv = [engine.docker, "run", "--name", container, "--label", f"{CONTAINER_LABEL}={cluster.name}",
            "--network", "host", "--ipc", "host"]
    if engine.gpus is not None:
        argv += ["--gpus", engine.gpus]
    if engine.shm_size is not None:
        argv += ["--shm-size", engine.shm_size]
    if node.fast_link.rdma:  # NCCL opens the RoCE devices' verbs and pins (registers) its buffers
        argv += ["--device", "/dev/infiniband", "--ulimit", "memlock=-1:-1"]
    for volume in (*engine.volumes, *extra_volumes):
        argv += ["-v", volume]
    plain = {key: value for key, value in env.items() if not isinstance(value, Secret)}
    cli_env = {key: value for key, value in env.items() if isinstance(value, Secret)}
    argv += ["--env-file", env_file, *(arg for key in cli_env for arg in ("-e", key)), *engine.docker_args]
    argv += ["--entrypoint", entrypoint, _docker_image(node, recipe), *args]
    return argv, cli_env, {env_file: render_env_file(plain)}


def _container_stop(cluster: Cluster, node: Node, container: str, ports: tuple[int, ...]) -> StopContainer:
    return StopContainer(docker=node.engine.docker, container=container, grace_s=cluster.timeouts.stop_grace_s,
                         ports=ports)


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
    ray: bool = False,
) -> Step:
    """One engine process on `node`, for whichever engine and launcher the node has."""
    env = _node_env(node, recipe, extra_env, ray=ray)
    serve = _serve_argv(node, recipe, parallel_flags, tensor_parallel)
    engine = node.engine
    if isinstance(engine, TwinEngine):
        command = [*engine.twin, *serve, "--hardware", engine.hardware, "--card", recipe.twin_card]
        if engine.noise_cv is not None:
            command += ["--noise-cv", f"{engine.noise_cv:g}"]
    else:
        command = [engine.vllm or "vllm", *serve]
    files: dict[str, str] = {}
    stop: Stop
    if engine.launcher == "docker":
        container = _container_name(topology, node)
        # a twin reports its modeled power into the node's twin GPU dir: mounted, the node's telemetry reads it
        volumes = (f"{node.twin_gpu_dir}:{node.twin_gpu_dir}",) if isinstance(engine, TwinEngine) else ()
        argv, env, files = _docker_run(cluster, topology, node, recipe, container=container, env=env,
                                       entrypoint=command[0], args=command[1:], extra_volumes=volumes)
        stop = _container_stop(cluster, node, container, listen_ports)
    else:
        argv = command
        stop = StopByProcessGroup(grace_s=cluster.timeouts.stop_grace_s, ports=listen_ports)
    return Step(name=name, node=node.name, role=role, argv=tuple(argv), env=env, files=files, probe=probe, stop=stop)


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


def _single_node_engine(topology: Topology, cluster: Cluster, recipe: Recipe, node: Node, *, name: str) -> Step:
    return _engine_step(
        topology, cluster, recipe, node, name=name, role="engine", tensor_parallel=1, parallel_flags=[],
        probe=_engine_probe(cluster, node), listen_ports=(node.engine.port,),
    )


def _plan_solo(topology: Topology, cluster: Cluster, recipe: Recipe) -> tuple[list[Stage], str, dict[str, ArgOrSecret]]:
    head = cluster.head
    return [Stage(steps=(_single_node_engine(topology, cluster, recipe, head, name="engine"),))], _endpoint(head), {}


def _tp_mp_ranks(
    topology: Topology, cluster: Cluster, recipe: Recipe, nodes: Sequence[Node], *, name: str
) -> tuple[tuple[Step, ...], Step]:
    """One engine over `nodes` with PyTorch distributed: its headless ranks (started first) and rank 0."""
    _same_engine_kind(topology, tuple(nodes))
    head = nodes[0]
    size = len(nodes)

    def rank_flags(rank: int) -> list[str]:
        flags = ["--distributed-executor-backend", "mp", "--nnodes", str(size), "--node-rank", str(rank),
                 "--master-addr", head.fast_link.ip, "--master-port", str(head.master_port)]
        return flags + (["--headless"] if rank > 0 else [])

    headless = tuple(
        _engine_step(
            topology, cluster, recipe, node, name=f"{name}-rank{rank}", role="engine-headless",
            tensor_parallel=size, parallel_flags=rank_flags(rank), probe=NoProbe(), listen_ports=(),
        )
        for rank, node in enumerate(nodes)
        if rank > 0
    )
    rank0 = _engine_step(
        topology, cluster, recipe, head, name=f"{name}-rank0", role="engine", tensor_parallel=size,
        parallel_flags=rank_flags(0), probe=_engine_probe(cluster, head),
        listen_ports=(head.engine.port, head.master_port),
    )
    return headless, rank0


def _plan_tp_mp(
    topology: Topology, cluster: Cluster, recipe: Recipe
) -> tuple[list[Stage], str, dict[str, ArgOrSecret]]:
    nodes = cluster.nodes[: topology.nodes]
    headless, rank0 = _tp_mp_ranks(topology, cluster, recipe, nodes, name="engine")
    return [Stage(steps=headless), Stage(steps=(rank0,))], _endpoint(nodes[0]), {}


# Ray puts AF_UNIX sockets at <temp-dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (~62
# characters after the temp dir) and a socket path may have at most 107 bytes.
RAY_TEMP_DIR_MAX_CHARS = 107 - len("/session_2026-11-23_19-35-37_784363_4219999/sockets/plasma_store")


def _ray_start(
    topology: Topology, cluster: Cluster, recipe: Recipe, node: Node, *, head: Node, is_head: bool
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
    env = _node_env(node, recipe, ray=True)
    status = ["status", "--address", gcs]
    nodes_expected = 1 if is_head else topology.tensor_parallel
    listen_ports = (ray.port,) if is_head else ()
    name = "ray-head" if is_head else f"ray-worker-{node.name}"
    engine = node.engine
    stop: Stop
    files: dict[str, str] = {}
    if engine.launcher == "docker":
        container = _container_name(topology, node, "-ray")
        # the workdir holds Ray's --temp-dir: mounted at the same path, its logs stay readable on the node
        argv, env, files = _docker_run(cluster, topology, node, recipe, container=container, env=env,
                                       entrypoint="ray", args=args, extra_volumes=(f"{node.workdir}:{node.workdir}",))
        probe_argv = [engine.docker, "exec", container, "ray", *status]
        stop = _container_stop(cluster, node, container, listen_ports)
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
                env=env, files=files, probe=probe, stop=stop)


def _plan_tp_ray(
    topology: Topology, cluster: Cluster, recipe: Recipe
) -> tuple[list[Stage], str, dict[str, ArgOrSecret]]:
    nodes = cluster.nodes[: topology.nodes]
    _same_engine_kind(topology, nodes)
    head = nodes[0]
    ray_head = _ray_start(topology, cluster, recipe, head, head=head, is_head=True)
    workers = tuple(_ray_start(topology, cluster, recipe, node, head=head, is_head=False) for node in nodes[1:])
    engine = _engine_step(
        topology, cluster, recipe, head, name="engine", role="engine", tensor_parallel=topology.tensor_parallel,
        parallel_flags=["--distributed-executor-backend", "ray"], probe=_engine_probe(cluster, head),
        listen_ports=(head.engine.port,),
        # the engine joins the Ray cluster started above (the per-node --temp-dir hides it from "auto")
        extra_env={"RAY_ADDRESS": f"{head.fast_link.ip}:{head.ray.port}"}, ray=True,
    )
    return [Stage(steps=(ray_head,)), Stage(steps=workers), Stage(steps=(engine,))], _endpoint(head), {}


def render_router_config(
    served_model_name: str, backends: list[tuple[str, str]], strategy: RouterStrategy = "simple-shuffle"
) -> str:
    """LiteLLM proxy config: every backend (id, api_base) under one model name, routed by `strategy`."""
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
        "router_settings": {"routing_strategy": strategy, "num_retries": 0},
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


def _plan_routed(
    topology: Topology, cluster: Cluster, recipe: Recipe, plan_secrets: PlanSecrets
) -> tuple[list[Stage], str, dict[str, ArgOrSecret]]:
    """Each replica on its own consecutive nodes (all engines, headless ranks first), then the proxy."""
    assert topology.router is not None
    nodes = cluster.nodes[: topology.nodes]
    proxy = cluster.proxy
    proxy_node = None if proxy.node == CONTROLLER else cluster.node(proxy.node)
    if proxy_node is not None and proxy_node not in nodes:
        raise PlanError(f"proxy.node {proxy.node!r} is not one of the {topology.nodes} nodes {topology.name} uses")
    size = topology.tensor_parallel
    replicas = [nodes[index : index + size] for index in range(0, len(nodes), size)]
    heads = [replica[0] for replica in replicas]  # where each replica serves HTTP
    engine_stages: list[Stage]
    if size == 1:
        engines = tuple(_single_node_engine(topology, cluster, recipe, node, name=f"engine-{node.name}") for node in nodes)
        engine_stages = [Stage(steps=engines)]
    else:
        ranks = [_tp_mp_ranks(topology, cluster, recipe, replica, name=f"engine-{replica[0].name}") for replica in replicas]
        engine_stages = [
            Stage(steps=tuple(step for headless, _ in ranks for step in headless)),
            Stage(steps=tuple(rank0 for _, rank0 in ranks)),
        ]

    def api_base(node: Node) -> str:
        # from the controller: the address clients use; from a node: the fast link between nodes
        host = node.reachable_host if proxy_node is None else node.fast_link.ip
        return f"http://{host}:{node.engine.port}/v1"

    router_yaml = render_router_config(
        recipe.served_model_name, [(head.name, api_base(head)) for head in heads], topology.router
    )
    workdir = proxy.workdir or (proxy_node.workdir if proxy_node is not None else "/tmp/topo")
    config_path = _joined_workdir(workdir, topology.name, ROUTER_CONFIG_NAME)
    env = config_env(proxy_node.env, f"node {proxy_node.name!r}") if proxy_node is not None else {}
    env.update({
        "LITELLM_MASTER_KEY": plan_secrets.litellm_master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        PROXY_POOL_IDLE_ENV: str(_proxy_pool_idle_s(heads, recipe)),
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
    return [*engine_stages, Stage(steps=(proxy_step,))], f"http://{proxy_host}:{proxy.port}/v1", headers


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
    if len(cluster.nodes) < topology.nodes:
        raise PlanError(
            f"{topology.name} needs {topology.nodes} nodes but cluster {cluster.name!r} has "
            f"{len(cluster.nodes)} ({', '.join(node.name for node in cluster.nodes)})"
        )
    if topology.routed:
        stages, endpoint, headers = _plan_routed(topology, cluster, recipe, secrets)
    elif topology.tensor_parallel == 1:
        stages, endpoint, headers = _plan_solo(topology, cluster, recipe)
    elif topology.executor == "mp":
        stages, endpoint, headers = _plan_tp_mp(topology, cluster, recipe)
    else:
        stages, endpoint, headers = _plan_tp_ray(topology, cluster, recipe)
    _check_port_collisions(cluster, topology, stages)
    spanning = topology.tensor_parallel > 1  # an engine across nodes: NCCL between them
    return LaunchPlan(
        notes=_link_notes(cluster.nodes[: topology.nodes]) if spanning else (),
        topology=topology.name,
        cluster=cluster.name,
        model=recipe.name,
        served_model_name=recipe.served_model_name,
        stages=tuple(stages),
        endpoint=endpoint,
        endpoint_headers=headers,
    )
