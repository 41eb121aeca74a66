"""An in-memory Connector for unit tests: records every command, scripts outcomes, simulates processes.

It understands the handful of commands cluster/ itself issues (`ps`, `kill`, `ss`, `tail`, `find`, `rm`,
`true`) against a tiny model of a node: files, and process groups that listen on ports, exit, or ignore
SIGTERM. Anything else answers from `script(...)` rules (first match wins) or exits 0 with no output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from cluster.connector import BOOT_ID_PATH, DEFAULT_TIMEOUT_S, Argv, Completed, Env, masked_command, pidfile_text
from common.errors import RemoteCommandError

FAKE_BOOT_ID = "fake-boot-id"
from topology.plan import reveal


@dataclass
class FakeBehaviour:
    """How a started process acts. `match` is a substring of its joined argv."""

    ports: tuple[int, ...] = ()
    log: str = ""
    exits_at_start: bool = False  # dies right away (a bad flag, a missing model): its log says why
    ignores_term: bool = False  # only SIGKILL stops it (Ray's gcs_server does this for ~25 s)
    survives_kill: bool = False  # a process that left the group: the group check never proves empty
    leaves_port_open: bool = False  # a child in another group keeps listening after the group is gone
    forks_escapee: bool = False  # a child that moved to its own group (a Ray worker): only its pid reaches it


@dataclass
class FakeProcess:
    pgid: int
    argv: tuple[str, ...]
    env: dict[str, str]
    log_path: str
    behaviour: FakeBehaviour
    alive: bool = True
    signals: list[str] = field(default_factory=list)
    escapee_alive: bool = False

    @property
    def escapee(self) -> int:
        return self.pgid + 50000

    @property
    def listening(self) -> set[int]:
        if self.alive or self.behaviour.leaves_port_open:
            return set(self.behaviour.ports)
        return set()


@dataclass(frozen=True)
class Call:
    """One recorded interaction; `argv` is revealed (tests may check secrets arrive), `shown` is masked."""

    kind: str  # run | start | write | read
    argv: tuple[str, ...]
    shown: str
    env: dict[str, str]


Outcome = Completed | BaseException | Callable[[tuple[str, ...]], Completed]


class FakeConnector:
    _pids = itertools.count(4100)

    def __init__(self, node: str = "fake") -> None:
        self.node = node
        self.calls: list[Call] = []
        self.files: dict[str, str] = {}
        self.processes: dict[int, FakeProcess] = {}
        self.closed = False
        self._rules: list[tuple[tuple[str, ...], Outcome]] = []
        self._behaviours: list[tuple[str, FakeBehaviour]] = []
        self.other_listeners: set[int] = set()  # ports something else on the node holds
        self.foreign_starts: dict[int, int] = {}  # pid -> start ticks of live processes topo did not start

    # -- scripting -----------------------------------------------------------------------------------
    def script(self, prefix: Sequence[str], outcome: Outcome) -> None:
        """Commands whose argv starts with `prefix` answer `outcome` (or raise it, or call it)."""
        self._rules.append((tuple(prefix), outcome))

    def on_start(self, match: str, behaviour: FakeBehaviour) -> None:
        """Processes whose argv contains `match` act as `behaviour`; a later rule overrides an earlier one."""
        self._behaviours.insert(0, (match, behaviour))

    def commands(self, kind: str = "run") -> list[tuple[str, ...]]:
        return [call.argv for call in self.calls if call.kind == kind]

    def process(self, match: str) -> FakeProcess:
        found = [p for p in self.processes.values() if match in " ".join(p.argv)]
        if len(found) != 1:
            raise LookupError(f"{len(found)} fake processes match {match!r}")
        return found[0]

    # -- the Connector protocol ----------------------------------------------------------------------
    async def run(
        self, argv: Argv, *, env: Env | None = None, timeout: float = DEFAULT_TIMEOUT_S, input: str | None = None
    ) -> Completed:
        real = tuple(reveal(arg) for arg in argv)
        self.calls.append(Call("run", real, masked_command(argv, env), {k: reveal(v) for k, v in (env or {}).items()}))
        for prefix, outcome in self._rules:
            if real[: len(prefix)] == prefix:
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome(real) if callable(outcome) else outcome
        return self._builtin(real)

    async def start(self, argv: Argv, *, env: Env | None = None, log_path: str, pidfile: str) -> int:
        real = tuple(reveal(arg) for arg in argv)
        real_env = {k: reveal(v) for k, v in (env or {}).items()}
        self.calls.append(Call("start", real, masked_command(argv, env), real_env))
        joined = " ".join(real)
        behaviour = next((b for match, b in self._behaviours if match in joined), FakeBehaviour())
        pgid = next(self._pids)
        self.processes[pgid] = FakeProcess(pgid, real, real_env, log_path, behaviour, alive=not behaviour.exits_at_start)
        self.processes[pgid].escapee_alive = behaviour.forks_escapee and not behaviour.exits_at_start
        self.files[log_path] = behaviour.log
        self.files[pidfile] = pidfile_text(pgid, f"{FAKE_BOOT_ID} {self._start_ticks(pgid)}", masked_command(argv, env))
        return pgid

    @staticmethod
    def _start_ticks(pid: int) -> int:
        return 1000 + pid  # a fake process's start time (field 22 of /proc/PID/stat)

    async def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        self.calls.append(Call("write", (path,), path, {}))
        self.files[path] = text

    async def read_file(self, path: str) -> str:
        self.calls.append(Call("read", (path,), path, {}))
        if path not in self.files:
            raise RemoteCommandError(self.node, f"cat {path}", 1, f"cat: {path}: No such file or directory")
        return self.files[path]

    async def close(self) -> None:
        self.closed = True

    # -- the node model ------------------------------------------------------------------------------
    def _builtin(self, argv: tuple[str, ...]) -> Completed:
        head = argv[0] if argv else ""
        if head == "ps":  # pid ppid pgid stat; a fake process is its group's leader, its escapee a child
            lines = [f"{p.pgid} 1 {p.pgid} S" for p in self.processes.values() if p.alive]
            lines += [f"{p.escapee} {p.pgid} {p.escapee} S" for p in self.processes.values() if p.escapee_alive]
            lines += [f"{pid} 1 {pid} S" for pid in self.foreign_starts]
            return Completed(0, "\n".join(lines) + "\n", "")
        if head == "ss":
            ports = set(self.other_listeners)
            for process in self.processes.values():
                ports |= process.listening
            return Completed(0, "".join(f"LISTEN 0 128 0.0.0.0:{port} 0.0.0.0:*\n" for port in sorted(ports)), "")
        if head == "kill" and not argv[-1].startswith("-"):  # single pids: escaped children
            for process in self.processes.values():
                if str(process.escapee) in argv[3:] and (argv[1] == "-KILL" or not process.behaviour.ignores_term):
                    process.escapee_alive = False
            return Completed(0, "", "")
        if head == "kill":
            signal_name, pgid = argv[1].lstrip("-"), int(argv[-1].lstrip("-"))
            process = self.processes.get(pgid)
            if process is None or not process.alive:
                return Completed(1, "", f"kill: ({pgid}) - No such process")
            process.signals.append(signal_name)
            if (signal_name == "TERM" and not process.behaviour.ignores_term) or (
                signal_name == "KILL" and not process.behaviour.survives_kill
            ):
                process.alive = False
            return Completed(0, "", "")
        if head == "cat" and len(argv) == 3 and argv[1] == BOOT_ID_PATH:  # a process's identity
            pid = int(argv[2].split("/")[2])
            alive = [p for p in self.processes.values() if p.pgid == pid and p.alive]
            ticks = self.foreign_starts.get(pid, self._start_ticks(pid) if alive else None)
            if ticks is None:
                return Completed(1, f"{FAKE_BOOT_ID}\n", f"cat: /proc/{pid}/stat: No such file or directory")
            zeros = " ".join(["0"] * 18)
            return Completed(0, f"{FAKE_BOOT_ID}\n{pid} (fake proc) S {zeros} {ticks} 0 0\n", "")
        if head == "tail":
            path = argv[-1]
            if path not in self.files:
                return Completed(1, "", f"tail: cannot open '{path}'")
            lines = self.files[path].splitlines()[-int(argv[2]) :]
            return Completed(0, "\n".join(lines) + "\n", "")
        if head == "find":
            directory = argv[1].rstrip("/") + "/"
            found = [p for p in self.files if p.startswith(directory) and p.endswith(".pid") and "/" not in p[len(directory) :]]
            if not found and not any(p.startswith(directory) for p in self.files):
                return Completed(1, "", f"find: '{argv[1]}': No such file or directory")
            return Completed(0, "".join(f"{p}\n" for p in sorted(found)), "")
        if head == "rm":
            for path in argv[1:]:
                if not path.startswith("-"):
                    self.files.pop(path, None)
            return Completed(0, "", "")
        if head == "mkdir" or head == "true":
            return Completed(0, "", "")
        return Completed(0, "", "")

    def exit_process(self, match: str, log: str = "") -> None:
        """Make a running fake process die now (e.g. a rank that crashes while rank 0 waits)."""
        process = self.process(match)
        process.alive = False
        if log:
            self.files[process.log_path] = self.files.get(process.log_path, "") + log

    def log_path_of(self, match: str) -> str:
        return self.process(match).log_path

    def pidfiles(self) -> list[str]:
        return sorted(p for p in self.files if PurePosixPath(p).suffix == ".pid")
