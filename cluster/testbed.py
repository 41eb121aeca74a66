"""A real multi-node test bed on one machine: network namespaces on a bridge, one sshd per node.

    up(TestbedSpec(nodes=2, directory=Path("/tmp/topo-testbed")))   -> Testbed (and DIR/cluster.yaml)
    down(Path("/tmp/topo-testbed"))                                 -> removes all of it

Per node N (1-based): namespace `<prefix>-nN`, a veth pair `<prefix>-hN` (bridge side, root namespace) /
`<prefix>-eN` (node side, address <subnet>.N/24), `lo` up, and NO default route, so nothing leaves the
subnet. The bridge `<prefix>-br0` holds <subnet>.254 in the root namespace: the controller (topo itself,
the probes, a proxy on the controller) reaches every node. Each node's sshd runs as PID 1 of its own PID
namespace (so a `ray stop` or a pkill on one node cannot touch another), with its own ed25519 host key,
key-only root login and `SetEnv TOPO_NODE=<name>`. The client key pair and known_hosts are fresh per bed.

Needs root, `ip` (iproute2), `sshd` and `ssh-keygen` (openssh-server; `scripts/setup --test` installs
both). `up` after a crash first removes what the earlier bed left; `down` is idempotent: it kills every
process inside the bed's namespaces (all of them were started there by us), deletes the namespaces and the
bridge, and removes the directory only when it carries the bed's marker file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from common.errors import BringUpError, ConfigError, TeardownError

DEFAULT_DIR = Path("/tmp/topo-testbed")
MARKER = ".topo-testbed"
STATE = "state.json"
SSHD = "/usr/sbin/sshd"
MAX_DIR_CHARS = 32  # DIR/node1/work/ray/session_<date>_<pid>/sockets/plasma_store < 107 bytes


@dataclass(frozen=True)
class TestbedSpec:
    __test__ = False  # not a pytest test class

    nodes: int = 2
    directory: Path = DEFAULT_DIR
    prefix: str = "topo"  # interface names are <= 15 characters: keep it short
    subnet: str = "10.88.0"  # a /24; nodes .1 .. .N, the bridge (controller side) .254
    proxy_on: str = "node1"  # "node1" .. or "controller"
    python: str = sys.executable  # the venv interpreter the nodes run the twin with (same filesystem)
    engine_port: int = 8000
    ray_memory_bytes: int = 4_000_000_000
    ray_object_store_bytes: int = 500_000_000
    engine_ready_s: float = 180.0
    stop_grace_s: float = 30.0

    def check(self) -> None:
        if not 1 <= self.nodes <= 8:
            raise ConfigError(f"testbed --nodes must be between 1 and 8 (got {self.nodes})")
        if not self.prefix.isalnum() or len(self.prefix) > 8:
            raise ConfigError(f"testbed --prefix must be 1-8 letters/digits (got {self.prefix!r})")
        parts = self.subnet.split(".")
        if len(parts) != 3 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
            raise ConfigError(f"testbed --subnet must be the first three octets of a /24, e.g. 10.88.0 (got {self.subnet!r})")
        if len(str(self.directory.resolve())) > MAX_DIR_CHARS:
            raise ConfigError(
                f"testbed --dir {self.directory} is too long ({len(str(self.directory.resolve()))} > {MAX_DIR_CHARS} "
                "characters): Ray's socket paths under a node's workdir must stay below 107 bytes"
            )
        allowed = ["controller", *(f"node{i}" for i in range(1, self.nodes + 1))]
        if self.proxy_on not in allowed:
            raise ConfigError(f"testbed --proxy-on must be one of {', '.join(allowed)} (got {self.proxy_on!r})")


@dataclass
class TestbedNode:
    __test__ = False

    name: str
    namespace: str
    ip: str
    host_link: str
    node_link: str
    sshd_pid: int
    workdir: str


@dataclass
class Testbed:
    __test__ = False

    directory: str
    prefix: str
    subnet: str
    bridge: str
    bridge_ip: str
    cluster_yaml: str
    client_key: str
    known_hosts: str
    nodes: list[TestbedNode] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path) -> Testbed | None:
        path = directory / STATE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(**{**data, "nodes": [TestbedNode(**node) for node in data["nodes"]]})

    def save(self) -> None:
        (Path(self.directory) / STATE).write_text(json.dumps(asdict(self), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------


def _sh(argv: list[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BringUpError(f"testbed: `{' '.join(argv)}` could not run: {exc}") from exc
    if check and done.returncode != 0:
        raise BringUpError(f"testbed: `{' '.join(argv)}` failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done


def missing_requirements() -> list[str]:
    """Why the test bed cannot be built here (empty: it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (network namespaces, a bridge, sshd)")
    for tool, package in (("ip", "iproute2"), ("ssh-keygen", "openssh-client"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` is missing (apt package {package}; `scripts/setup --test` installs it)")
    if not Path(SSHD).is_file():
        problems.append(f"{SSHD} is missing (apt package openssh-server; `scripts/setup --test` installs it)")
    return problems


def _sshd_config(node: str, ip: str, node_dir: Path, authorized_keys: Path) -> str:
    return "\n".join(
        [
            f"# sshd of test bed node {node}",
            f"ListenAddress {ip}",
            "Port 22",
            f"HostKey {node_dir / 'ssh_host_ed25519_key'}",
            f"PidFile {node_dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the keys live under the bed's directory, not ~/.ssh
            "X11Forwarding no",
            "PrintMotd no",
            "MaxStartups 64:30:128",  # several connections per node at once (tests, probes)
            "MaxSessions 64",
            # Each node gets a home of its own, as separate machines have; it also skips the controller
            # root's ~/.bashrc (pyenv init: ~0.7 s per command on a busy machine) in every SSH command.
            f"SetEnv TOPO_NODE={node} HOME={node_dir / 'home'}",
            "",
        ]
    )


def _wait_for_port(ip: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _cluster_data(spec: TestbedSpec, bed: Testbed) -> dict[str, object]:
    python = spec.python
    bin_dir = str(Path(python).parent)
    nodes = []
    for node in bed.nodes:
        nodes.append(
            {
                "name": node.name,
                "connect": {
                    "kind": "ssh",
                    "host": node.ip,
                    "port": 22,
                    "user": "root",
                    "key": bed.client_key,
                    "known_hosts": bed.known_hosts,
                    "connect_timeout_s": 5,
                    "keepalive_s": 15,
                },
                "fast_link": {"ip": node.ip, "interface": node.node_link},
                "workdir": node.workdir,
                "engine": {"kind": "twin", "twin": [python, "-m", "twin"], "hardware": "gb10", "port": spec.engine_port},
                "ray": {
                    "bin": f"{bin_dir}/ray",
                    "port": 6379,
                    "num_cpus": 1,
                    "memory_bytes": spec.ray_memory_bytes,
                    "object_store_bytes": spec.ray_object_store_bytes,
                    "resources": {f"node-{node.name}": 1},
                },
                "master_port": 29501,
            }
        )
    proxy: dict[str, object] = {"node": spec.proxy_on, "litellm": f"{bin_dir}/litellm", "port": 4000}
    if spec.proxy_on == "controller":
        proxy["workdir"] = str(Path(bed.directory) / "controller")
    return {
        "name": f"testbed-{bed.prefix}",
        "nodes": nodes,
        "proxy": proxy,
        "timeouts": {
            "engine_ready_s": spec.engine_ready_s,
            "ray_ready_s": 120,
            "proxy_ready_s": 120,
            "stop_grace_s": spec.stop_grace_s,
        },
    }


def up(spec: TestbedSpec, *, log=lambda message: None) -> Testbed:  # type: ignore[no-untyped-def]
    """Build the bed; on any failure, remove what was built so far and raise."""
    spec.check()
    problems = missing_requirements()
    if problems:
        raise ConfigError("cannot build the test bed here: " + "; ".join(problems))
    directory = spec.directory.resolve()
    if directory.exists() and (directory / MARKER).exists():
        log(f"removing the earlier test bed in {directory}")
        down(directory, prefix=spec.prefix)
    elif directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"testbed --dir {directory} exists and is not a test bed directory; choose another")
    _remove_network(spec.prefix)  # leftovers of a bed whose directory is gone
    routed = _sh(["ip", "route", "show", f"{spec.subnet}.0/24"], check=False).stdout.strip()
    if routed:
        raise ConfigError(
            f"testbed --subnet {spec.subnet}.0/24 is already in use here ({routed}); another test bed? "
            "choose another --subnet (and --prefix)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    (directory / MARKER).write_text(f"prefix={spec.prefix}\n")
    bed = Testbed(
        directory=str(directory),
        prefix=spec.prefix,
        subnet=spec.subnet,
        bridge=f"{spec.prefix}-br0",
        bridge_ip=f"{spec.subnet}.254",
        cluster_yaml=str(directory / "cluster.yaml"),
        client_key=str(directory / "client_ed25519"),
        known_hosts=str(directory / "known_hosts"),
    )
    try:
        _build(spec, bed, directory, log)
    except BaseException:
        down(directory, prefix=spec.prefix)
        raise
    return bed


def _build(spec: TestbedSpec, bed: Testbed, directory: Path, log) -> None:  # type: ignore[no-untyped-def]
    bed.save()  # from here on, `down` finds what to remove even after a crash
    _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "topo-testbed-client", "-f", bed.client_key])
    authorized_keys = directory / "authorized_keys"
    authorized_keys.write_text(Path(bed.client_key + ".pub").read_text())
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory

    log(f"bridge {bed.bridge} {bed.bridge_ip}/24")
    _sh(["ip", "link", "add", bed.bridge, "type", "bridge"])
    _sh(["ip", "addr", "add", f"{bed.bridge_ip}/24", "dev", bed.bridge])
    _sh(["ip", "link", "set", bed.bridge, "up"])

    known_hosts = []
    for index in range(1, spec.nodes + 1):
        name = f"node{index}"
        node_dir = directory / name
        node_dir.mkdir(parents=True, exist_ok=True)
        (node_dir / "home").mkdir(exist_ok=True)
        namespace, host_link, node_link = f"{spec.prefix}-n{index}", f"{spec.prefix}-h{index}", f"{spec.prefix}-e{index}"
        ip = f"{spec.subnet}.{index}"
        log(f"{name}: namespace {namespace}, {node_link} {ip}/24, sshd in its own PID namespace")
        _sh(["ip", "netns", "add", namespace])
        _sh(["ip", "link", "add", host_link, "type", "veth", "peer", "name", node_link, "netns", namespace])
        _sh(["ip", "link", "set", host_link, "master", bed.bridge, "up"])
        _sh(["ip", "-n", namespace, "addr", "add", f"{ip}/24", "dev", node_link])
        _sh(["ip", "-n", namespace, "link", "set", node_link, "up"])
        _sh(["ip", "-n", namespace, "link", "set", "lo", "up"])

        host_key = node_dir / "ssh_host_ed25519_key"
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"topo-testbed-{name}", "-f", str(host_key)])
        key_type, key_text = Path(str(host_key) + ".pub").read_text().split()[:2]
        known_hosts.append(f"{ip} {key_type} {key_text}")
        config = node_dir / "sshd_config"
        config.write_text(_sshd_config(name, ip, node_dir, authorized_keys))
        _sh([SSHD, "-t", "-f", str(config)])  # a config error is clearer here than as a dead sshd

        with open(node_dir / "sshd.log", "ab") as sshd_log:
            sshd = subprocess.Popen(
                ["ip", "netns", "exec", namespace, "unshare", "--pid", "--fork", "--mount-proc",
                 "--kill-child=SIGTERM", SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=sshd_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: never hit by signals meant for topo
            )
        workdir = node_dir / "work"
        workdir.mkdir(exist_ok=True)
        bed.nodes.append(TestbedNode(name, namespace, ip, host_link, node_link, sshd.pid, str(workdir)))
        bed.save()

    Path(bed.known_hosts).write_text("\n".join(known_hosts) + "\n")
    for node in bed.nodes:
        if not _wait_for_port(node.ip, 22, timeout_s=15):
            tail = (directory / node.name / "sshd.log").read_text()[-2000:]
            raise BringUpError(f"testbed: sshd of {node.name} ({node.ip}:22) did not start listening; its log:\n{tail}")
    Path(bed.cluster_yaml).write_text(
        "# Written by `topo testbed up`: the nodes of the namespace test bed, reached over real SSH.\n"
        + yaml.safe_dump(_cluster_data(spec, bed), sort_keys=False)
    )
    bed.save()
    log(f"cluster file {bed.cluster_yaml}")


def _namespaces(prefix: str) -> list[str]:
    done = _sh(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(f"{prefix}-n") and name[len(prefix) + 2 :].isdigit()]


def _kill_namespace_processes(namespace: str, deadline_s: float = 15.0) -> list[int]:
    """TERM, then KILL, every process inside the namespace; returns the pids that would not die."""
    pids: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in _sh(["ip", "netns", "pids", namespace], check=False).stdout.split() if p.isdigit()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (3.0 if sig == signal.SIGTERM else deadline_s)
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [int(p) for p in _sh(["ip", "netns", "pids", namespace], check=False).stdout.split() if p.isdigit()]
            pids = [pid for pid in pids if not _is_zombie(pid)]
        if not pids:
            return []
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return True


def _remove_network(prefix: str) -> list[str]:
    problems = []
    for namespace in _namespaces(prefix):
        stuck = _kill_namespace_processes(namespace)
        if stuck:
            problems.append(f"processes {stuck} in namespace {namespace} survived SIGKILL")
        _sh(["ip", "netns", "del", namespace], check=False)
    links = _sh(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            link = parts[1].strip().split("@")[0]
            if link == f"{prefix}-br0" or (link.startswith(f"{prefix}-h") and link[len(prefix) + 2 :].isdigit()):
                _sh(["ip", "link", "del", link], check=False)
    return problems


def down(directory: Path = DEFAULT_DIR, *, prefix: str | None = None) -> None:
    """Remove the bed (processes, namespaces, links, files). Safe to run twice or after a crash."""
    problems = missing_requirements()
    if problems:
        raise ConfigError("cannot remove the test bed here: " + "; ".join(problems))
    directory = directory.resolve()
    bed = Testbed.load(directory)
    if prefix is None:
        prefix = bed.prefix if bed is not None else "topo"
    if bed is not None:
        for node in bed.nodes:  # the sshd launchers (outside the node's PID namespace, in its net one)
            try:
                os.killpg(node.sshd_pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    stuck = _remove_network(prefix)
    left = [name for name in _namespaces(prefix)]
    if directory.exists() and (directory / MARKER).exists():
        shutil.rmtree(directory, ignore_errors=True)
    if stuck or left:
        raise TeardownError("testbed down left something behind: " + "; ".join([*stuck, *(f"namespace {n}" for n in left)]))
