"""Start and stop the real `vllm serve` (the CPU build in .venv-vllm) for integration tests.

Each vLLM process runs in its own process group (start_new_session) with its output in a log file. A
server is ready when /health answers 200 and /v1/models lists its served name; while waiting, every
process is checked for life, so one that dies at start-up fails at once with its log tail instead of
looking like a slow one. Stopping sends SIGTERM to each group, SIGKILL after a grace period, and then
proves that no live member of the group remains (zombies excepted: they hold no resources).

Errors are topo's own: BringUpError (a process died), ReadinessTimeout (alive but never ready),
TeardownError (a group could not be proven gone).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.errors import BringUpError, ReadinessTimeout, TeardownError

REPO_ROOT = Path(__file__).resolve().parents[2]
# scripts/setup-vllm installs it here; TOPO_VLLM_VENV points elsewhere (a CI cache, a shared install).
VLLM_VENV = Path(os.environ.get("TOPO_VLLM_VENV") or REPO_ROOT / ".venv-vllm")
SERVED_MODEL_NAME = "tiny"
LOOPBACK = "127.0.0.1"

# Start-up on an idle 2-core machine takes ~25 s with --enforce-eager; shared and busy, several times that.
DEFAULT_READY_TIMEOUT_S = 600.0
# vLLM's engine core and TP workers shut down in ~10-15 s after SIGTERM on this machine kind.
DEFAULT_STOP_GRACE_S = 30.0


def vllm_executable(venv: Path = VLLM_VENV) -> Path | None:
    """The `vllm` CLI of the CPU build, or None when scripts/setup-vllm has not been run."""
    exe = venv / "bin" / "vllm"
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def vllm_env(venv: Path = VLLM_VENV, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a vLLM process: offline, small KV cache, no telemetry, the vLLM venv first."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "VIRTUAL_ENV": str(venv),
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default would take a large share of RAM
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",  # log lines reach the file when they happen, for the log tail
        }
    )
    env.update(extra or {})
    return env


# What the fixture serves when no recipe is given; the fixtures pass topo's own `tiny` recipe flags instead.
DEFAULT_MODEL_FLAGS = ("--served-model-name", SERVED_MODEL_NAME, "--max-model-len", "2048", "--enforce-eager")


def serve_argv(
    model_dir: Path,
    port: int,
    *,
    model_flags: Sequence[str] = DEFAULT_MODEL_FLAGS,
    extra_args: Sequence[str] = (),
    venv: Path = VLLM_VENV,
) -> list[str]:
    """`vllm serve MODEL_DIR --host 127.0.0.1 --port P [model flags] [extra args]`.

    --enforce-eager (in the flags) skips graph capture: start-up ~25 s instead of ~65 s on an idle machine.
    """
    return [
        str(venv / "bin" / "vllm"),
        "serve",
        str(model_dir),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        *model_flags,
        *extra_args,
    ]


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of a process from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return fields[0], int(fields[2])


def live_group_members(pgid: int) -> list[int]:
    """PIDs of the group that are not zombies (a zombie holds no memory, port or CPU)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry))
    return members


def _memory_kib(pid: int, key: str, filename: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{filename}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


@dataclass
class VllmProcess:
    """One `vllm serve` process (and everything it forks) in its own process group."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pgid(self) -> int:
        return self.popen.pid  # start_new_session: the leader's PID is the group's ID

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc.strerror})"
        return "\n".join(text.splitlines()[-lines:])

    def memory_kib(self) -> dict[str, int]:
        """RSS summed over the group's processes, and PSS (shared pages split fairly, so no double count)."""
        members = live_group_members(self.pgid)
        return {
            "processes": len(members),
            "rss_kib": sum(_memory_kib(pid, "VmRSS", "status") for pid in members),
            "pss_kib": sum(_memory_kib(pid, "Pss", "smaps_rollup") for pid in members),
        }


def launch(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> VllmProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=log_path.parent,
            )
        except OSError as exc:
            raise BringUpError(f"{name}: cannot start {argv[0]} ({exc.strerror})") from exc
    return VllmProcess(name=name, argv=list(argv), log_path=log_path, popen=popen)


def signal_group(process: VllmProcess, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pgid, sig)
    except ProcessLookupError:
        pass


def stop_group(process: VllmProcess, grace_s: float = DEFAULT_STOP_GRACE_S) -> None:
    """SIGTERM to the group, SIGKILL after `grace_s`, then prove that no live member is left."""
    pgid = process.pgid

    def wait_empty(deadline: float) -> bool:
        while time.monotonic() < deadline:
            if not live_group_members(pgid):
                try:
                    process.popen.wait(timeout=5.0)  # reap the leader, or it stays a zombie of ours
                except subprocess.TimeoutExpired:
                    return False
                return True
            time.sleep(0.2)
        return False

    signal_group(process, signal.SIGTERM)
    if wait_empty(time.monotonic() + grace_s):
        return
    signal_group(process, signal.SIGKILL)
    if wait_empty(time.monotonic() + 10.0):
        return
    raise TeardownError(
        f"{process.name}: process group {pgid} still has live members {live_group_members(pgid)} "
        f"after SIGTERM, {grace_s:.0f} s grace and SIGKILL"
    )


@dataclass
class VllmServer:
    """A served model: the process that answers HTTP first, then any headless ranks behind it."""

    base_url: str
    served_model_name: str
    processes: list[VllmProcess]
    started_at: float = field(default_factory=time.monotonic)
    ready_after_s: float | None = None

    @property
    def frontend(self) -> VllmProcess:
        return self.processes[0]

    def _raise_if_dead(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise BringUpError(
                    f"{process.name} exited with status {process.popen.returncode} before "
                    f"{self.base_url} was ready\n--- {process.log_path} (tail) ---\n{process.log_tail()}"
                )

    def wait_ready(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S, poll_s: float = 1.0) -> float:
        """Block until /health and /v1/models answer; returns seconds since start. Fails fast on a death."""
        deadline = self.started_at + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                self._raise_if_dead()
                if self._probe(client):
                    self.ready_after_s = time.monotonic() - self.started_at
                    return self.ready_after_s
                if time.monotonic() >= deadline:
                    raise ReadinessTimeout(
                        f"{self.frontend.name} alive but {self.base_url} not ready after {timeout_s:.0f} s"
                        f"\n--- {self.frontend.log_path} (tail) ---\n{self.frontend.log_tail()}"
                    )
                time.sleep(poll_s)

    def _probe(self, client: httpx.Client) -> bool:
        try:
            if client.get(f"{self.base_url}/health").status_code != 200:
                return False
            models = client.get(f"{self.base_url}/v1/models")
        except httpx.HTTPError:
            return False  # not listening yet
        if models.status_code != 200:
            return False
        return any(m.get("id") == self.served_model_name for m in models.json().get("data", []))

    def memory_kib(self) -> dict[str, int]:
        totals = {"processes": 0, "rss_kib": 0, "pss_kib": 0}
        for process in self.processes:
            for key, value in process.memory_kib().items():
                totals[key] += value
        return totals

    def stop(self, grace_s: float = DEFAULT_STOP_GRACE_S) -> None:
        """Stops every process group, headless ranks included (stopping rank 0 does not stop them)."""
        failures: list[str] = []
        for process in self.processes:  # all at once: a headless rank takes ~10 s to exit on its own
            signal_group(process, signal.SIGTERM)
        for process in self.processes:
            try:
                stop_group(process, grace_s)
            except TeardownError as exc:
                failures.append(str(exc))
        if failures:
            raise TeardownError("; ".join(failures))

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _started(server: VllmServer, timeout_s: float) -> VllmServer:
    try:
        server.wait_ready(timeout_s)
    except BaseException:
        server.stop()  # nothing started may outlive a failed start
        raise
    return server


def _served_name(model_flags: Sequence[str]) -> str:
    flags = list(model_flags)
    if "--served-model-name" in flags:
        return flags[flags.index("--served-model-name") + 1]
    raise ValueError("model_flags must name the served model (--served-model-name NAME)")


def start_solo(
    model_dir: Path,
    log_dir: Path,
    *,
    port: int | None = None,
    model_flags: Sequence[str] = DEFAULT_MODEL_FLAGS,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    venv: Path = VLLM_VENV,
) -> VllmServer:
    """One `vllm serve` on loopback, returned ready (or stopped and raised)."""
    port = port or free_loopback_port()
    argv = serve_argv(model_dir, port, model_flags=model_flags, venv=venv)
    process = launch("vllm serve (solo)", argv, vllm_env(venv, extra_env), log_dir / f"vllm-solo-{port}.log")
    server = VllmServer(f"http://{LOOPBACK}:{port}", _served_name(model_flags), [process])
    return _started(server, timeout_s)


def tp2_two_process_argvs(
    model_dir: Path,
    port: int,
    master_port: int,
    *,
    model_flags: Sequence[str] = DEFAULT_MODEL_FLAGS,
    venv: Path = VLLM_VENV,
) -> list[tuple[list[str], dict[str, str]]]:
    """argv and env of rank 0 (serves HTTP) and rank 1 (--headless): TP=2 as two 'nodes' on loopback.

    Each rank gets one core for its OpenMP threads; the default binding asserts on one NUMA node.
    """
    ranks = []
    for rank in (0, 1):
        parallel = [
            "--tensor-parallel-size", "2",
            "--distributed-executor-backend", "mp",
            "--nnodes", "2",
            "--node-rank", str(rank),
            "--master-addr", LOOPBACK,
            "--master-port", str(master_port),
        ]  # fmt: skip
        if rank == 1:
            parallel.append("--headless")
        env = {
            "VLLM_CPU_OMP_THREADS_BIND": str(rank),
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "GLOO_SOCKET_IFNAME": "lo",
            "VLLM_HOST_IP": LOOPBACK,
        }
        ranks.append((serve_argv(model_dir, port, model_flags=model_flags, extra_args=parallel, venv=venv), env))
    return ranks


def start_tp2_two_processes(
    model_dir: Path,
    log_dir: Path,
    *,
    port: int | None = None,
    model_flags: Sequence[str] = DEFAULT_MODEL_FLAGS,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    venv: Path = VLLM_VENV,
) -> VllmServer:
    """TP=2 over torch.distributed (mp executor) with one process per rank, rank 0 serving HTTP."""
    port = port or free_loopback_port()
    master_port = free_loopback_port()
    processes: list[VllmProcess] = []
    try:
        ranks = tp2_two_process_argvs(model_dir, port, master_port, model_flags=model_flags, venv=venv)
        for rank, (argv, env) in enumerate(ranks):
            log_path = log_dir / f"vllm-tp2-r{rank}-{port}.log"
            rank_env = vllm_env(venv, {**(extra_env or {}), **env})
            processes.append(launch(f"vllm serve (tp2 rank {rank})", argv, rank_env, log_path))
    except BaseException:
        for process in processes:
            stop_group(process)
        raise
    server = VllmServer(f"http://{LOOPBACK}:{port}", _served_name(model_flags), processes)
    return _started(server, timeout_s)
