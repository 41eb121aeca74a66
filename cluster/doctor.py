"""`topo doctor`: is every node ready for a sweep? Checked before anything starts, over the connectors.

Each check is one small async function `check(ctx) -> list[Finding]` (one finding per node it looked at).
A finding's verdict is `ok`, `warn` (worth knowing, does not stop a sweep), `fail` (blocking: a sweep
would not come up or would measure something else) or `skip` (does not apply, or an earlier check failed
on that node). Checks only read: nothing is started, the only thing created is the node's workdir.

    ssh         the node answers a command (SSH or local) and as which user
    sudo-less   its workdir is writable and, under the docker launcher, docker works, all without sudo
    address     the fast-link interface carries the fast-link IP
    mtu         the interface's MTU: as configured (fast_link.mtu) and the same on every node
    link        every node reaches every other on the fast link, and a do-not-fragment ping at the MTU passes
    engine      the engine's version (vllm/twin --version) or container image id, the same on every node
    memory      MemAvailable (/proc/meminfo; NVML reports none on unified memory) covers what vLLM claims
    gpu         nvidia-smi sees a GPU where the engine expects one (real vLLM, not `gpus: null`)
    ports       the ports the topologies listen on are free
    clock       the node's clock against the controller's (warn beyond a threshold)
    disk        free space where the workdir lives
    leftovers   no process or container of an earlier topo run is alive

Exit code of `topo doctor`: 0 when nothing fails (warnings allowed), 2 when something blocks.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cluster.bringup import open_cluster
from cluster.connector import Completed, Connector
from cluster.supervise import listening_ports, live_leftovers
from common.errors import ConnectError, NodesNotReady, RemoteCommandError, TopoError
from topology.inventory import CONTROLLER, Cluster, Node, TwinEngine, VllmEngine
from topology.kinds import CONTAINER_LABEL
from topology.plan import ArgOrSecret, config_env
from topology.recipe import Recipe

Verdict = Literal["ok", "warn", "fail", "skip"]
VERDICT_ORDER: dict[str, int] = {"fail": 3, "warn": 2, "ok": 1, "skip": 0}
IPV4_ICMP_OVERHEAD = 28  # IP (20) + ICMP (8) headers: a ping of MTU-28 payload bytes fills the MTU exactly
MAX_IPV4_PING_PAYLOAD = 65507


@dataclass(frozen=True)
class Finding:
    node: str
    check: str
    verdict: Verdict
    detail: str

    @property
    def blocking(self) -> bool:
        return self.verdict == "fail"


@dataclass(frozen=True)
class DoctorSettings:
    command_timeout_s: float = 20.0
    ping_timeout_s: int = 2  # per ping reply (ping -W)
    clock_warn_s: float = 0.5  # timestamps are taken on the controller; a drift this large confuses logs/Ray
    disk_fail_bytes: int = 1 << 30  # logs, rendered configs, Ray's temp dir
    disk_warn_bytes: int = 10 << 30


@dataclass
class DoctorContext:
    cluster: Cluster
    recipe: Recipe
    connectors: Mapping[str, Connector]
    settings: DoctorSettings = field(default_factory=DoctorSettings)
    clock: Callable[[], float] = time.time  # the controller's wall clock (injected by tests)
    unreachable: set[str] = field(default_factory=set)  # filled by check_ssh: later checks skip these

    def nodes(self) -> list[Node]:
        return [node for node in self.cluster.nodes if node.name not in self.unreachable]

    async def run(self, node: Node, argv: Sequence[str], timeout: float | None = None,
                  env: Mapping[str, ArgOrSecret] | None = None) -> Completed:
        return await self.connectors[node.name].run(argv, env=env, timeout=timeout or self.settings.command_timeout_s)


Check = Callable[[DoctorContext], Awaitable[list[Finding]]]


def _gib(value: float) -> str:
    return f"{value / (1 << 30):.1f} GiB"


async def _per_node(ctx: DoctorContext, one: Callable[[Node], Awaitable[Finding]]) -> list[Finding]:
    """Run `one` on every reachable node in parallel; an error of ours becomes that node's failure."""
    async def guarded(node: Node) -> Finding:
        try:
            return await one(node)
        except TopoError as exc:
            return Finding(node.name, "?", "fail", str(exc).splitlines()[0])
    return list(await asyncio.gather(*(guarded(node) for node in ctx.nodes())))


def _missing_tool(done: Completed) -> bool:
    return done.exit_status == 127 or "not found" in done.stderr


# ---------------------------------------------------------------------------------------------------------
# The checks


async def check_ssh(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        try:
            done = await ctx.run(node, ["id", "-un"])
        except (ConnectError, RemoteCommandError) as exc:
            ctx.unreachable.add(node.name)
            return Finding(node.name, "ssh", "fail", str(exc).splitlines()[0])
        how = "local" if node.is_local else f"ssh {getattr(node.connect, 'host', '?')}"
        return Finding(node.name, "ssh", "ok", f"{how}, user {done.stdout.strip() or '?'}")
    return await _per_node(ctx, one)


async def check_sudoless(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        script = 'mkdir -p "$1" && test -w "$1"'
        made = await ctx.run(node, ["sh", "-c", script, "sh", node.workdir])
        if not made.ok:
            return Finding(node.name, "sudo-less", "fail",
                           f"workdir {node.workdir} is not writable without sudo ({made.output_tail(120)})")
        detail = f"workdir {node.workdir} writable"
        if node.engine.launcher == "docker":
            info = await ctx.run(node, [node.engine.docker, "info", "--format", "{{.ServerVersion}}"])
            if not info.ok:
                return Finding(node.name, "sudo-less", "fail",
                               f"`{node.engine.docker} info` fails without sudo ({info.output_tail(120)}); add the "
                               "user to the docker group or start dockerd")
            detail += f"; docker {info.stdout.strip()} usable"
        return Finding(node.name, "sudo-less", "ok", detail)
    return await _per_node(ctx, one)


async def check_address(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        link = node.fast_link
        done = await ctx.run(node, ["ip", "-o", "addr", "show", "dev", link.interface])
        if _missing_tool(done):
            return Finding(node.name, "address", "warn", "`ip` is not installed: cannot check the fast-link address")
        if not done.ok:
            return Finding(node.name, "address", "fail", f"no interface {link.interface} ({done.output_tail(120)})")
        if not re.search(rf"\binet6? {re.escape(link.ip)}/", done.stdout):
            found = re.findall(r"\binet6? (\S+)", done.stdout)
            return Finding(node.name, "address", "fail",
                           f"{link.interface} does not carry {link.ip} (it has {', '.join(found) or 'no address'})")
        return Finding(node.name, "address", "ok", f"{link.ip} on {link.interface}")
    return await _per_node(ctx, one)


async def _mtu(ctx: DoctorContext, node: Node) -> int | None:
    done = await ctx.run(node, ["cat", f"/sys/class/net/{node.fast_link.interface}/mtu"])
    text = done.stdout.strip()
    return int(text) if done.ok and text.isdigit() else None


async def check_mtu(ctx: DoctorContext) -> list[Finding]:
    nodes = ctx.nodes()
    mtus = dict(zip([n.name for n in nodes], await asyncio.gather(*(_mtu(ctx, node) for node in nodes))))
    known = {mtu for mtu in mtus.values() if mtu is not None}
    findings = []
    for node in nodes:
        mtu = mtus[node.name]
        expected = node.fast_link.mtu
        if mtu is None:
            findings.append(Finding(node.name, "mtu", "fail", f"cannot read the MTU of {node.fast_link.interface}"))
        elif expected is not None and mtu != expected:
            findings.append(Finding(node.name, "mtu", "fail", f"{node.fast_link.interface} has MTU {mtu}, "
                                    f"the cluster file says {expected}"))
        elif len(known) > 1:
            others = ", ".join(f"{name} {value}" for name, value in mtus.items() if name != node.name)
            findings.append(Finding(node.name, "mtu", "fail", f"MTU {mtu} differs between nodes ({others}): "
                                    "large frames would be dropped on the way"))
        else:
            findings.append(Finding(node.name, "mtu", "ok", f"{mtu} on {node.fast_link.interface}"))
    return findings


async def check_link(ctx: DoctorContext) -> list[Finding]:
    """From each node, every other node's fast-link IP: reachable, then a do-not-fragment ping at the MTU."""
    nodes = ctx.nodes()
    if len(ctx.cluster.nodes) < 2:
        return [Finding(node.name, "link", "skip", "one node: no link to check") for node in nodes]

    async def one(node: Node) -> Finding:
        mtu = await _mtu(ctx, node)
        wait = str(ctx.settings.ping_timeout_s)
        results = []
        for peer in ctx.cluster.nodes:
            if peer.name == node.name:
                continue
            base = ["ping", "-c", "1", "-W", wait, "-I", node.fast_link.interface, peer.fast_link.ip]
            reach = await ctx.run(node, base)
            if _missing_tool(reach):
                return Finding(node.name, "link", "warn", "`ping` is not installed: cannot check the link "
                               "(apt-get install iputils-ping)")
            if not reach.ok:
                return Finding(node.name, "link", "fail", f"cannot reach {peer.name} at {peer.fast_link.ip} over "
                               f"{node.fast_link.interface}")
            if mtu is None:
                results.append(f"{peer.name} reached (MTU unknown)")
                continue
            size = min(mtu - IPV4_ICMP_OVERHEAD, MAX_IPV4_PING_PAYLOAD)
            full = await ctx.run(node, [*base[:-1], "-M", "do", "-s", str(size), peer.fast_link.ip])
            if not full.ok:
                return Finding(node.name, "link", "fail",
                               f"{peer.name} answers small pings but not a {size}-byte do-not-fragment ping "
                               f"(MTU {mtu} here): the path between them has a smaller MTU")
            results.append(f"{peer.name} reached, {size} B unfragmented")
        return Finding(node.name, "link", "ok", "; ".join(results))
    return await _per_node(ctx, one)


def engine_version_argv(node: Node, recipe: Recipe) -> tuple[list[str], str]:
    """The command that names what runs as the engine on `node`, and what it names."""
    engine = node.engine
    if engine.launcher == "docker":
        image = engine.image or recipe.image or "?"
        return [engine.docker, "image", "inspect", "--format", "{{.Id}}", image], f"image {image}"
    if isinstance(engine, TwinEngine):
        return [*engine.twin, "--version"], "twin"
    assert isinstance(engine, VllmEngine) and engine.vllm is not None
    return [engine.vllm, "--version"], "vllm"


async def check_engine(ctx: DoctorContext) -> list[Finding]:
    nodes = ctx.nodes()

    async def version(node: Node) -> tuple[str | None, str]:
        argv, what = engine_version_argv(node, ctx.recipe)
        # with the node's env, as the engine will run (PATH, PYTHONPATH, LD_LIBRARY_PATH decide what runs)
        env = config_env(node.env, f"node {node.name!r}") or None
        done = await ctx.run(node, argv, timeout=max(ctx.settings.command_timeout_s, 60), env=env)
        lines = done.stdout.strip().splitlines()
        if not done.ok or not lines:
            hint = f" (docker pull it on {node.name})" if node.engine.launcher == "docker" else ""
            return None, f"{what}: `{' '.join(argv)}` failed{hint}: {done.output_tail(120)}"
        return lines[-1].strip(), what

    found = dict(zip([n.name for n in nodes], await asyncio.gather(*(version(node) for node in nodes))))
    distinct = {value for value, _ in found.values() if value is not None}
    findings = []
    for node in nodes:
        value, what = found[node.name]
        if value is None:
            findings.append(Finding(node.name, "engine", "fail", what))
        elif len(distinct) > 1:
            findings.append(Finding(node.name, "engine", "fail", f"{what} {value}: differs between nodes "
                                    f"({', '.join(sorted(distinct))})"))
        else:
            findings.append(Finding(node.name, "engine", "ok", f"{what} {value}"))
    return findings


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per key."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+):\s+(\d+)\s*(kB)?", line)
        if match:
            values[match.group(1)] = int(match.group(2)) * (1024 if match.group(3) else 1)
    return values


async def check_memory(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        done = await ctx.run(node, ["cat", "/proc/meminfo"])
        info = parse_meminfo(done.stdout) if done.ok else {}
        if "MemTotal" not in info or "MemAvailable" not in info:
            return Finding(node.name, "memory", "warn", "cannot read MemTotal/MemAvailable from /proc/meminfo")
        total, available = info["MemTotal"], info["MemAvailable"]
        detail = f"{_gib(available)} available of {_gib(total)}"
        if isinstance(node.engine, VllmEngine):
            # vLLM takes this share of all memory; on unified memory a too-high claim can wedge the host
            claim = ctx.recipe.gpu_memory_utilization * total
            if available < claim:
                return Finding(node.name, "memory", "fail", f"{detail}: vLLM will claim "
                               f"{ctx.recipe.gpu_memory_utilization:.0%} = {_gib(claim)}; free memory first")
            detail += f"; vLLM claims {_gib(claim)}"
        return Finding(node.name, "memory", "ok", detail)
    return await _per_node(ctx, one)


def gpu_expected(node: Node) -> bool:
    engine = node.engine
    return isinstance(engine, VllmEngine) and (engine.launcher == "process" or engine.gpus is not None)


async def check_gpu(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        if not gpu_expected(node):
            return Finding(node.name, "gpu", "skip", f"not expected ({node.engine.kind} engine without a GPU)")
        done = await ctx.run(node, ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
        lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        if not done.ok or not lines:
            return Finding(node.name, "gpu", "fail", f"nvidia-smi sees no GPU ({done.output_tail(120) or 'no output'})")
        return Finding(node.name, "gpu", "ok", "; ".join(lines))
    return await _per_node(ctx, one)


def node_ports(cluster: Cluster, node: Node) -> dict[int, str]:
    """Every port a topology may listen on, on this node: port -> what for."""
    ports = {node.engine.port: "engine", node.master_port: "torch rendezvous", node.ray.port: "Ray GCS"}
    if cluster.proxy.node == node.name or (cluster.proxy.node == CONTROLLER and node.is_local):
        ports.setdefault(cluster.proxy.port, "LiteLLM proxy")
    return ports


async def check_ports(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        wanted = node_ports(ctx.cluster, node)
        busy = sorted(set(wanted) & await listening_ports(ctx.connectors[node.name]))
        if busy:
            return Finding(node.name, "ports", "fail", "in use: " + ", ".join(f"{p} ({wanted[p]})" for p in busy))
        return Finding(node.name, "ports", "ok", "free: " + ", ".join(str(p) for p in sorted(wanted)))
    return await _per_node(ctx, one)


async def check_clock(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        before = ctx.clock()
        done = await ctx.run(node, ["date", "+%s.%N"])
        after = ctx.clock()
        try:
            remote = float(done.stdout.strip())
        except ValueError:
            return Finding(node.name, "clock", "warn", f"cannot read the clock: {done.output_tail(80)}")
        offset = remote - (before + after) / 2
        uncertainty = (after - before) / 2
        detail = f"{offset * 1000:+.0f} ms vs controller (±{uncertainty * 1000:.0f} ms)"
        if abs(offset) - uncertainty > ctx.settings.clock_warn_s:
            return Finding(node.name, "clock", "warn", f"{detail}: run NTP/chrony on the nodes")
        return Finding(node.name, "clock", "ok", detail)
    return await _per_node(ctx, one)


async def check_disk(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        done = await ctx.run(node, ["df", "-Pk", node.workdir])
        rows = done.stdout.strip().splitlines()
        parts = rows[-1].split() if done.ok and len(rows) >= 2 else []
        if len(parts) < 4 or not parts[3].isdigit():
            return Finding(node.name, "disk", "warn", f"cannot read free space of {node.workdir}")
        free = int(parts[3]) * 1024
        detail = f"{_gib(free)} free at {node.workdir}"
        if free < ctx.settings.disk_fail_bytes:
            return Finding(node.name, "disk", "fail", detail)
        return Finding(node.name, "disk", "warn" if free < ctx.settings.disk_warn_bytes else "ok", detail)
    return await _per_node(ctx, one)


async def check_leftovers(ctx: DoctorContext) -> list[Finding]:
    async def one(node: Node) -> Finding:
        left = await live_leftovers(ctx.connectors[node.name], node.workdir)
        if node.engine.launcher == "docker":
            done = await ctx.run(node, [node.engine.docker, "ps", "-a", "--filter",
                                        f"label={CONTAINER_LABEL}={ctx.cluster.name}", "--format", "{{.Names}}"])
            left += [f"container {name}" for name in done.stdout.split()]
        if left:
            return Finding(node.name, "leftovers", "fail", f"{', '.join(left)} (stop with `topo down --cluster ...`)")
        return Finding(node.name, "leftovers", "ok", "nothing of an earlier run")
    return await _per_node(ctx, one)


# Order matters: ssh decides which nodes the rest look at; sudo-less creates the workdir disk looks at.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("ssh", check_ssh),
    ("sudo-less", check_sudoless),
    ("address", check_address),
    ("mtu", check_mtu),
    ("link", check_link),
    ("engine", check_engine),
    ("memory", check_memory),
    ("gpu", check_gpu),
    ("ports", check_ports),
    ("clock", check_clock),
    ("disk", check_disk),
    ("leftovers", check_leftovers),
)
# What `topo sweep` runs first: the checks that can block (the clock can only warn).
BLOCKING_CHECKS: tuple[str, ...] = tuple(name for name, _ in CHECKS if name != "clock")


@dataclass(frozen=True)
class DoctorReport:
    cluster: str
    findings: tuple[Finding, ...]

    @property
    def blocking(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.blocking]

    @property
    def warnings(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.verdict == "warn"]

    @property
    def exit_code(self) -> int:
        return 2 if self.blocking else 0

    def node_verdict(self, node: str) -> Verdict:
        verdicts = [finding.verdict for finding in self.findings if finding.node == node]
        return max(verdicts, key=lambda verdict: VERDICT_ORDER[verdict]) if verdicts else "skip"

    def summary(self) -> str:
        if self.blocking:
            return f"BLOCKED: {len(self.blocking)} blocking problem(s) on {', '.join(sorted({f.node for f in self.blocking}))}"
        warned = f" ({len(self.warnings)} warning(s))" if self.warnings else ""
        return f"READY: every check passed{warned}"

    def text(self) -> str:
        """Plain table, one line per node and check (for logs and errors; the CLI prints a rich table)."""
        width = max((len(finding.node) for finding in self.findings), default=4)
        lines = [f"{'node':<{width}}  {'check':<10} {'verdict':<7} detail"]
        lines += [f"{f.node:<{width}}  {f.check:<10} {f.verdict.upper():<7} {f.detail}" for f in self.findings]
        return "\n".join([*lines, self.summary()])


async def diagnose(cluster: Cluster, recipe: Recipe, *, blocking_only: bool = False) -> DoctorReport:
    """Open the cluster's connectors, run the checks (the blocking ones only, for a sweep), close them."""
    async with open_cluster(cluster) as nodes:
        connectors = {name: access.connector for name, access in nodes.items() if name != CONTROLLER}
        return await run_doctor(cluster, recipe, connectors, only=BLOCKING_CHECKS if blocking_only else None)


async def require_ready(cluster: Cluster, recipe: Recipe) -> DoctorReport:
    """The blocking checks; NodesNotReady naming each blocking finding when any fails."""
    report = await diagnose(cluster, recipe, blocking_only=True)
    if report.blocking:
        lines = "\n".join(f"- {f.node}: {f.check}: {f.detail}" for f in report.blocking)
        raise NodesNotReady(
            f"cluster {cluster.name!r} is not ready, nothing was started:\n{lines}\n"
            "`topo doctor --cluster ...` shows every check"
        )
    return report


async def run_doctor(
    cluster: Cluster,
    recipe: Recipe,
    connectors: Mapping[str, Connector],
    *,
    only: Sequence[str] | None = None,
    settings: DoctorSettings | None = None,
    clock: Callable[[], float] = time.time,
) -> DoctorReport:
    """Every check (or those named in `only`), in order; findings sorted by node, then check order."""
    ctx = DoctorContext(cluster, recipe, connectors, settings or DoctorSettings(), clock)
    findings: list[Finding] = []
    for name, check in CHECKS:
        if only is not None and name not in only and name != "ssh":
            continue
        results = [f if f.check != "?" else Finding(f.node, name, f.verdict, f.detail) for f in await check(ctx)]
        findings += results
        if name != "ssh":
            findings += [Finding(node, name, "skip", "node unreachable") for node in sorted(ctx.unreachable)]
    rank = {name: index for index, (name, _) in enumerate(CHECKS)}
    order = {node.name: index for index, node in enumerate(cluster.nodes)}
    findings.sort(key=lambda f: (order.get(f.node, 99), rank[f.check]))
    return DoctorReport(cluster.name, tuple(findings))
