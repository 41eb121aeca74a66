"""The cluster inventory: which nodes exist, how to reach them, and how an engine is launched on each.

A cluster file (configs/clusters/<name>.yaml) is loaded by `load_cluster`. Node 0 is the head: rank 0,
the Ray head and solo's node. Paths:

- controller-side files (SSH key, known_hosts) and every path of a `local` node: `~` is the controller
  user's home, a relative path is relative to the YAML file;
- paths on an `ssh` node (workdir, vllm, ray, litellm, twin argv) must be absolute: argv is quoted with
  shlex.join at the SSH boundary, so the remote shell would not expand `~` (and pyenv shims are slow);
- the placeholders `{python}` (the controller's interpreter, sys.executable) and `{python_bin}` (its
  directory, e.g. the venv's bin/) are replaced everywhere a path or argv element is accepted, so the
  embedded local-twin cluster runs from whatever venv topo runs from.

Pure data: the only I/O is reading the YAML in `load_cluster`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from common.config import EnvMap, StrictModel, read_yaml, resolve_config, validate_model
from common.errors import ConfigError

CONTROLLER = "controller"  # proxy.node value: run the proxy on the machine running topo, locally
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # used in file names, docker container names, Ray resources
# A twin node's emulated GPU telemetry lives in <workdir>/twin-gpu: the twin's ranks on the node write their
# modeled power there and install an `nvidia-smi` stand-in in its bin/ (twin/power.py); the sampler puts
# that bin/ first on PATH (telemetry/node.py), so on a real node the real nvidia-smi answers.
TWIN_GPU_SUBDIR = "twin-gpu"
TWIN_GPU_DIR_ENV = "TOPO_TWIN_GPU_DIR"

Port = Annotated[int, Field(ge=1, le=65535)]


class SshConnect(StrictModel):
    """Reach the node over SSH (asyncssh). Host keys are verified against `known_hosts`."""

    kind: Literal["ssh"]
    host: str
    port: Port = 22
    user: str = "root"
    key: str | None = None  # private key on the controller; None: the SSH agent / default keys
    known_hosts: str | None = "~/.ssh/known_hosts"  # None is NOT "no checking": it is refused
    connect_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_s: float = Field(default=15.0, ge=0)

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts_required(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("host keys are always verified: give a known_hosts file")
        return value


class LocalConnect(StrictModel):
    """The node is the controller itself: processes are started locally (the embedded local-twin)."""

    kind: Literal["local"]


Connect = Annotated[Union[SshConnect, LocalConnect], Field(discriminator="kind")]


class FastLink(StrictModel):
    """The node-to-node link engines talk over: VLLM_HOST_IP and the *_SOCKET_IFNAME variables.

    `rdma` names the RoCE devices of the link (on a DGX Spark both PCIe twins of the cabled port, e.g.
    [rocep1s0f1, roceP2p1s0f1]): NCCL then uses RDMA over both (~200 Gb/s); one device gives ~100 Gb/s;
    none: NCCL picks the RoCE device it detects, one twin (~100 Gb/s), or falls back to its TCP socket
    transport over `interface` when it sees none (a container without /dev/infiniband).
    """

    ip: str
    interface: str  # may differ per node (enp1s0f0np0 on one, enP2p1s0f1np1 on the other)
    rdma: tuple[str, ...] = ()
    mtu: int | None = Field(default=None, ge=576, le=65536)  # expected MTU (9000 on a Spark link); doctor checks it

    @field_validator("rdma")
    @classmethod
    def _distinct_devices(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"rdma devices repeat: {', '.join(value)}")
        for device in value:
            if not re.fullmatch(r"[A-Za-z0-9_.:-]+", device):
                raise ValueError(f"rdma device {device!r} is not a device name")
        return value


class DockerLaunch(StrictModel):
    """How an engine runs under the docker launcher (`launcher: docker`); ignored by `process`."""

    image: str | None = None  # overrides the recipe's container image
    docker: str = "docker"  # the docker CLI on the node
    volumes: tuple[str, ...] = ()  # `-v` mounts, e.g. "/data/hf:/data/hf" for HF_HOME
    # `--gpus VALUE`; None: no GPU is handed to the container (a node without one, the twin)
    gpus: str | None = "all"
    shm_size: str | None = None  # `--shm-size`; with `--ipc host` the host's /dev/shm is used anyway
    docker_args: tuple[str, ...] = ()  # further `docker run` options, placed before the image


class VllmEngine(DockerLaunch):
    """The real `vllm serve`: a bare process from an absolute path, or inside a container."""

    kind: Literal["vllm"]
    launcher: Literal["process", "docker"] = "process"
    vllm: str | None = None  # process launcher: absolute path of the vllm executable on the node
    port: Port = 8000  # engine HTTP port on this node
    # the node's hardware profile (configs/hardware/<name>.yaml): the report's roofline ceilings; None: none
    hardware: str | None = None

    @model_validator(mode="after")
    def _launcher_needs(self) -> VllmEngine:
        if self.launcher == "process" and not self.vllm:
            raise ValueError("launcher 'process' needs `vllm:` (absolute path of the vllm executable)")
        return self


class TwinEngine(DockerLaunch):
    """The emulated engine (`python -m twin serve MODEL --hardware H ...`), taking vLLM's flags.

    Under the docker launcher `twin` is the argv inside the container (its first element the entrypoint)."""

    kind: Literal["twin"]
    launcher: Literal["process", "docker"] = "process"
    gpus: str | None = None  # the twin needs no GPU
    twin: tuple[str, ...] = ("{python}", "-m", "twin")  # how to start the twin on the node
    hardware: str = "gb10"  # the twin's --hardware profile
    port: Port = 8000
    noise_cv: float | None = Field(default=None, ge=0, le=2)  # the twin's --noise-cv (None: the profile's)

    @field_validator("twin")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("the twin argv is empty")
        return value


Engine = Annotated[Union[VllmEngine, TwinEngine], Field(discriminator="kind")]


class RayNode(StrictModel):
    """How Ray runs on this node (only for tp2-ray). `port` is the GCS port when the node is the head."""

    bin: str = "ray"
    port: Port = 6379
    num_cpus: int | None = Field(default=None, ge=0)
    num_gpus: int | None = Field(default=None, ge=0)
    memory_bytes: int | None = Field(default=None, gt=0)
    object_store_bytes: int | None = Field(default=None, gt=0)
    # Custom resources (`--resources JSON`), e.g. {"node-spark2": 1} to pin an actor to this node.
    resources: dict[str, float] = Field(default_factory=dict)
    include_dashboard: bool = False
    disable_usage_stats: bool = True


class Node(StrictModel):
    """One inference box."""

    name: str = Field(pattern=NAME_PATTERN)
    connect: Connect
    fast_link: FastLink
    # Address the controller's clients (bench, probes, a proxy on the controller) use for this node's
    # HTTP ports. Default: the SSH host, or 127.0.0.1 for a local node.
    client_host: str | None = None
    workdir: str = "/tmp/topo"  # logs, pidfiles, rendered configs on that node
    env: EnvMap = Field(default_factory=dict)  # extra env for every process on the node
    engine: Engine
    ray: RayNode = Field(default_factory=RayNode)
    master_port: Port = 29501  # torch distributed rendezvous, used on the head (rank 0's node)

    @property
    def is_local(self) -> bool:
        return self.connect.kind == "local"

    @property
    def host_identity(self) -> str:
        """Nodes with the same identity share one host: their listening ports must not collide."""
        return "local" if isinstance(self.connect, LocalConnect) else f"ssh:{self.connect.host}"

    @property
    def reachable_host(self) -> str:
        """Where the controller reaches this node's HTTP ports."""
        if self.client_host:
            return self.client_host
        return "127.0.0.1" if isinstance(self.connect, LocalConnect) else self.connect.host

    @property
    def twin_gpu_dir(self) -> str:
        return twin_gpu_dir(self.workdir)

    @property
    def ray_temp_dir(self) -> str:
        """Per-node --temp-dir (two Ray nodes on one host must not share one)."""
        return f"{self.workdir.rstrip('/')}/ray"


def twin_gpu_dir(workdir: str) -> str:
    """Where a twin node keeps its nvidia-smi stand-in and power state (plan, twin and sampler agree)."""
    return f"{workdir.rstrip('/')}/{TWIN_GPU_SUBDIR}"


class ProxyPlacement(StrictModel):
    """Where the LiteLLM proxy of 2x-solo-shuffle runs and how it is started."""

    node: str = CONTROLLER  # a node name, or "controller"
    litellm: str = "litellm"
    port: Port = 4000
    workdir: str | None = None  # where router.yaml goes; default: the node's workdir (controller: /tmp/topo)


class Timeouts(StrictModel):
    engine_ready_s: float = Field(default=900.0, gt=0)  # weights load ~90 s and more on unified memory
    ray_ready_s: float = Field(default=120.0, gt=0)
    proxy_ready_s: float = Field(default=120.0, gt=0)
    stop_grace_s: float = Field(default=30.0, gt=0)
    # Ray's gcs_server can ignore TERM for ~25 s; its state is throwaway, so KILL comes sooner.
    ray_stop_grace_s: float = Field(default=10.0, gt=0)


class Costs(StrictModel):
    """Prices for the report's cost per million output tokens (reports/telemetry.py); every one optional."""

    currency: str = "USD"
    box_price: float | None = Field(default=None, ge=0)  # one inference node
    kwh_price: float | None = Field(default=None, ge=0)  # electricity
    amortization_years: float = Field(default=3.0, gt=0)  # the boxes' price spread over this many years


class Cluster(StrictModel):
    """The nodes of one installation. Node 0 is the head."""

    name: str = Field(pattern=NAME_PATTERN)
    nodes: tuple[Node, ...]
    proxy: ProxyPlacement = Field(default_factory=ProxyPlacement)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    costs: Costs | None = None

    @field_validator("nodes")
    @classmethod
    def _at_least_one(cls, value: tuple[Node, ...]) -> tuple[Node, ...]:
        # Checked here rather than with min_length, which pydantic also reports when one node is invalid.
        if not value:
            raise ValueError("a cluster needs at least one node")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Cluster:
        names = [node.name for node in self.nodes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"node names must be unique; repeated: {', '.join(duplicates)}")
        if CONTROLLER in names:
            raise ValueError(f"{CONTROLLER!r} is reserved (proxy.node: controller means this machine)")
        if self.proxy.node != CONTROLLER and self.proxy.node not in names:
            raise ValueError(
                f"proxy.node {self.proxy.node!r} is neither a node name ({', '.join(names)}) nor {CONTROLLER!r}"
            )
        return self

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------------------
# Loading: YAML -> validated Cluster -> paths and placeholders resolved.

_PLACEHOLDER = re.compile(r"\{(python|python_bin)\}")


def substitute_placeholders(value: str, python: str) -> str:
    """`{python}` -> the controller's interpreter, `{python_bin}` -> its directory."""
    replacements = {"python": python, "python_bin": str(Path(python).parent)}
    return _PLACEHOLDER.sub(lambda match: replacements[match.group(1)], value)


def _controller_path(value: str, base_dir: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path))


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith("~")


class _Resolver:
    """Applies the path rules of the module docstring to one loaded cluster."""

    def __init__(self, source: str, base_dir: Path, python: str) -> None:
        self.source = source
        self.base_dir = base_dir
        self.python = python

    def controller_path(self, value: str) -> str:
        return _controller_path(substitute_placeholders(value, self.python), self.base_dir)

    def node_path(self, node: Node, key: str, value: str, *, bare_name_ok: bool) -> str:
        value = substitute_placeholders(value, self.python)
        if bare_name_ok and not _looks_like_path(value):
            return value  # a command looked up in PATH (e.g. `docker`, `ray`)
        if node.is_local:
            return _controller_path(value, self.base_dir)
        if not value.startswith("/"):
            raise ConfigError(
                f"{self.source}: {key}: a path on ssh node {node.name!r} must be absolute (got {value!r}); "
                "the remote shell does not expand `~` inside a quoted command"
            )
        return value

    def node(self, index: int, node: Node) -> Node:
        where = f"nodes.{index}"
        update: dict[str, object] = {
            "workdir": self.node_path(node, f"{where}.workdir", node.workdir, bare_name_ok=False),
            "env": {key: substitute_placeholders(val, self.python) if isinstance(val, str) else val
                    for key, val in node.env.items()},
            "ray": node.ray.model_copy(
                update={"bin": self.node_path(node, f"{where}.ray.bin", node.ray.bin, bare_name_ok=True)}
            ),
        }
        if isinstance(node.connect, SshConnect):
            connect_update = {}
            if node.connect.key is not None:
                connect_update["key"] = self.controller_path(node.connect.key)
            if node.connect.known_hosts is not None:
                connect_update["known_hosts"] = self.controller_path(node.connect.known_hosts)
            update["connect"] = node.connect.model_copy(update=connect_update)
        engine = node.engine
        docker = self.node_path(node, f"{where}.engine.docker", engine.docker, bare_name_ok=True)
        if isinstance(engine, VllmEngine):
            engine_update: dict[str, object] = {"docker": docker}
            if engine.vllm is not None:
                engine_update["vllm"] = self.node_path(
                    node, f"{where}.engine.vllm", engine.vllm, bare_name_ok=engine.launcher == "docker"
                )
            update["engine"] = engine.model_copy(update=engine_update)
        else:
            program, *args = engine.twin
            if engine.launcher == "process":
                program = self.node_path(node, f"{where}.engine.twin.0", program, bare_name_ok=True)
            else:  # a path inside the container: not resolved against this machine
                program = substitute_placeholders(program, self.python)
            update["engine"] = engine.model_copy(
                update={"twin": (program, *(substitute_placeholders(arg, self.python) for arg in args)), "docker": docker}
            )
        return node.model_copy(update=update)

    def cluster(self, cluster: Cluster) -> Cluster:
        nodes = tuple(self.node(index, node) for index, node in enumerate(cluster.nodes))
        proxy = cluster.proxy
        proxy_local = proxy.node == CONTROLLER or cluster.node(proxy.node).is_local
        litellm = substitute_placeholders(proxy.litellm, self.python)
        workdir = substitute_placeholders(proxy.workdir, self.python) if proxy.workdir else None
        if proxy_local:
            if _looks_like_path(litellm):
                litellm = _controller_path(litellm, self.base_dir)
            if workdir:
                workdir = _controller_path(workdir, self.base_dir)
        else:
            for key, value in (("proxy.litellm", litellm), ("proxy.workdir", workdir)):
                if value and _looks_like_path(value) and not value.startswith("/"):
                    raise ConfigError(
                        f"{self.source}: {key}: a path on ssh node {proxy.node!r} must be absolute (got {value!r})"
                    )
        proxy = proxy.model_copy(update={"litellm": litellm, "workdir": workdir})
        return cluster.model_copy(update={"nodes": nodes, "proxy": proxy})


def cluster_from_data(data: object, *, source: str, base_dir: Path, python: str | None = None) -> Cluster:
    """Validate and resolve an already-parsed cluster mapping (tests and embedded configs use this)."""
    if data is None:
        raise ConfigError(f"{source}: the file is empty (expected a mapping for Cluster)")
    cluster = validate_model(Cluster, data, source=source)
    return _Resolver(source, base_dir, python or sys.executable).cluster(cluster)


def load_cluster(name_or_path: str | Path = "local-twin", *, python: str | None = None) -> Cluster:
    """Load configs/clusters/<name>.yaml or a YAML path; every problem is a ConfigError naming file and key."""
    path = resolve_config("clusters", str(name_or_path))
    return cluster_from_data(read_yaml(path), source=str(path), base_dir=path.resolve().parent, python=python)
