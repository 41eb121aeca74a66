"""Supervised processes on a node: own process group, pidfile, captured log; stopping them provably.

A supervised process is started through `Connector.start` in its own session, so its pid is its process
group id (pgid) and everything it forks stays in that group unless it leaves on purpose. Stopping is:

    TERM to the group -> wait up to `grace_s` -> KILL to the group -> prove the group is empty
    -> prove the step's ports are no longer listening -> remove the pidfile

Every check is a command on the node (`ps`, `kill`, `ss`, `tail`), so the same code runs over SSH, locally
and against the in-memory FakeConnector. Zombies are dead: they hold no port and cannot be signalled away,
so the group checks ignore them (an orphan's zombie lingers when the node's init does not reap).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from cluster.connector import BOOT_ID_PATH, PIDFILE_COMMAND, PIDFILE_START, Connector, run_checked
from common.errors import RemoteCommandError, TeardownError

PS_TABLE = ("ps", "-e", "-o", "pid=,ppid=,pgid=,stat=")
SS_LISTENING = ("ss", "-Hltn")
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class StepPaths:
    log: str
    pidfile: str


def step_paths(workdir: str, step_name: str) -> StepPaths:
    """Where a step's log and pidfile live on its node (pidfiles under run/ are what pre-flight scans)."""
    root = PurePosixPath(workdir)
    return StepPaths(log=str(root / "logs" / f"{step_name}.log"), pidfile=str(root / "run" / f"{step_name}.pid"))


def run_dir(workdir: str) -> str:
    return str(PurePosixPath(workdir) / "run")


@dataclass(frozen=True)
class Supervised:
    """A process we started: enough to find it, read its log and stop it, from any later process too."""

    step: str
    node: str
    pgid: int
    log_path: str
    pidfile: str


@dataclass(frozen=True)
class StopOutcome:
    step: str
    node: str
    pgid: int
    killed: bool  # TERM was not enough within the grace period
    seconds: float


@dataclass(frozen=True)
class ProcessRow:
    pid: int
    ppid: int
    pgid: int


async def process_table(connector: Connector) -> list[ProcessRow]:
    """Every live (non-zombie) process on the node."""
    done = await run_checked(connector, PS_TABLE, timeout=30)
    rows: list[ProcessRow] = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and all(part.isdigit() for part in parts[:3]) and not parts[3].startswith("Z"):
            rows.append(ProcessRow(int(parts[0]), int(parts[1]), int(parts[2])))
    return rows


async def live_groups(connector: Connector) -> set[int]:
    """Process group ids with at least one live (non-zombie) process on the node."""
    return {row.pgid for row in await process_table(connector)}


def escaped_descendants(table: list[ProcessRow], pgid: int) -> set[int]:
    """Descendants of the group's processes that moved to another group or session (Ray's raylet starts
    its workers that way): a stop must reach them too, and they must be found while the parents live."""
    children: dict[int, list[ProcessRow]] = {}
    for row in table:
        children.setdefault(row.ppid, []).append(row)
    frontier = [row.pid for row in table if row.pgid == pgid]
    escaped: set[int] = set()
    seen = set(frontier)
    while frontier:
        parent = frontier.pop()
        for child in children.get(parent, []):
            if child.pid in seen:
                continue
            seen.add(child.pid)
            frontier.append(child.pid)
            if child.pgid != pgid:
                escaped.add(child.pid)
    return escaped


async def group_alive(connector: Connector, pgid: int) -> bool:
    return pgid in await live_groups(connector)


def parse_listening_ports(ss_output: str) -> set[int]:
    """Local ports of `ss -Hltn` lines, e.g. `LISTEN 0 4096 10.88.0.1:8000 0.0.0.0:*` -> 8000."""
    ports: set[int] = set()
    for line in ss_output.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        port = parts[3].rsplit(":", 1)[-1]
        if port.isdigit():
            ports.add(int(port))
    return ports


async def listening_ports(connector: Connector) -> set[int]:
    done = await run_checked(connector, SS_LISTENING, timeout=30)
    return parse_listening_ports(done.stdout)


async def signal_group(connector: Connector, pgid: int, signal_name: str) -> bool:
    """Send a signal to a whole process group; False when the group no longer exists."""
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    done = await connector.run(["kill", f"-{signal_name}", "--", f"-{pgid}"], timeout=30)
    return done.ok


async def signal_pids(connector: Connector, pids: set[int], signal_name: str) -> None:
    """Signal single processes (some may be gone already: that is fine)."""
    targets = sorted(pid for pid in pids if pid > 1)
    if targets:
        await connector.run(["kill", f"-{signal_name}", "--", *map(str, targets)], timeout=30)


async def log_tail(connector: Connector, path: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, or a note why there are none (never raises: it decorates other errors)."""
    try:
        done = await connector.run(["tail", "-n", str(lines), path], timeout=30)
    except Exception as exc:  # noqa: BLE001 - the tail is a courtesy; its failure must not hide the real error
        return f"(log {path} unreadable: {exc})"
    if not done.ok:
        return f"(log {path} unreadable: {done.output_tail(300)})"
    return done.stdout.rstrip() or f"(log {path} is empty)"


async def _wait_until(predicate, deadline: float, poll_s: float) -> bool:  # type: ignore[no-untyped-def]
    while True:
        if await predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)


async def stop_group(
    connector: Connector,
    process: Supervised,
    *,
    grace_s: float,
    ports: tuple[int, ...] = (),
    prove_s: float = 15.0,
    poll_s: float = 0.25,
) -> StopOutcome:
    """TERM, KILL after `grace_s`, then prove the group empty and `ports` closed; TeardownError if not.
    Descendants that left the group are found first and signalled with it."""
    started = time.monotonic()
    killed = False
    table = await process_table(connector)
    escaped = escaped_descendants(table, process.pgid)
    remaining: set[int] = set()

    async def gone() -> bool:
        nonlocal remaining
        rows = await process_table(connector)
        remaining = {row.pid for row in rows if row.pgid == process.pgid or row.pid in escaped}
        return not remaining

    if not await gone():
        await signal_group(connector, process.pgid, "TERM")
        await signal_pids(connector, escaped, "TERM")
        if not await _wait_until(gone, time.monotonic() + grace_s, poll_s):
            killed = True
            await signal_group(connector, process.pgid, "KILL")
            await signal_pids(connector, escaped & remaining, "KILL")
            if not await _wait_until(gone, time.monotonic() + prove_s, poll_s):
                raise TeardownError(
                    f"{process.step} on node {process.node!r}: process group {process.pgid} (or its escaped "
                    f"children) still has live processes {sorted(remaining)} after TERM, {grace_s:g} s and KILL"
                )
    await prove_ports_closed(connector, process.step, ports, prove_s=prove_s, poll_s=poll_s)
    await connector.run(["rm", "-f", process.pidfile], timeout=30)
    return StopOutcome(process.step, process.node, process.pgid, killed, time.monotonic() - started)


async def prove_ports_closed(
    connector: Connector, step: str, ports: tuple[int, ...], *, prove_s: float = 15.0, poll_s: float = 0.25
) -> None:
    if not ports:
        return
    busy: set[int] = set()

    async def closed() -> bool:
        nonlocal busy
        busy = set(ports) & await listening_ports(connector)
        return not busy

    if not await _wait_until(closed, time.monotonic() + prove_s, poll_s):
        raise TeardownError(
            f"{step} on node {connector.node!r}: port(s) {', '.join(map(str, sorted(busy)))} still listening "
            "after its process group was stopped (a process that left the group?)"
        )


@dataclass(frozen=True)
class PidfileEntry:
    step: str
    pidfile: str
    pgid: int | None  # None: the file is unreadable or not a pid
    identity: str = ""  # `BOOT_ID START_TICKS` recorded at start ('' in a pidfile without one)
    command: str = ""  # the (masked) command it started


def parse_pidfile(step: str, path: str, text: str) -> PidfileEntry:
    lines = text.strip().splitlines()
    first = lines[0].strip() if lines else ""
    fields = dict(line.partition(" ")[::2] for line in lines[1:])
    return PidfileEntry(step, path, int(first) if first.isdigit() else None,
                        fields.get(PIDFILE_START, "").strip(), fields.get(PIDFILE_COMMAND, "").strip())


async def read_pidfiles(connector: Connector, workdir: str) -> list[PidfileEntry]:
    """The pidfiles an earlier run left in the node's workdir (a clean teardown removes them)."""
    directory = run_dir(workdir)
    done = await connector.run(["find", directory, "-maxdepth", "1", "-type", "f", "-name", "*.pid"], timeout=30)
    if not done.ok:
        return []  # no run/ directory: nothing was ever started there
    entries: list[PidfileEntry] = []
    for path in sorted(line.strip() for line in done.stdout.splitlines() if line.strip()):
        try:
            text = await connector.read_file(path)
        except RemoteCommandError:
            text = ""
        entries.append(parse_pidfile(PurePosixPath(path).name.removesuffix(".pid"), path, text))
    return entries


async def process_identity(connector: Connector, pid: int) -> str:
    """`BOOT_ID START_TICKS` of a live process on the node, '' when there is none with this pid."""
    done = await connector.run(["cat", BOOT_ID_PATH, f"/proc/{pid}/stat"], timeout=30)
    lines = done.stdout.splitlines()
    if not done.ok or len(lines) < 2 or ") " not in lines[1]:
        return ""
    fields = lines[1].rsplit(") ", 1)[1].split()
    return f"{lines[0].strip()} {fields[19]}" if len(fields) > 19 else ""


PidfileState = Literal["ours", "gone", "foreign"]


async def pidfile_state(connector: Connector, entry: PidfileEntry) -> PidfileState:
    """Whether the pidfile's group is still the process topo started ("ours"), ended ("gone": no live
    process in the group), or now someone else's ("foreign": the pid was reused, or the pidfile carries no
    identity to prove otherwise). Only "ours" may be signalled."""
    if entry.pgid is None or entry.pgid <= 1 or not await group_alive(connector, entry.pgid):
        return "gone"
    if entry.identity and await process_identity(connector, entry.pgid) == entry.identity:
        return "ours"
    return "foreign"


def foreign_note(node: str, entry: PidfileEntry) -> str:
    why = "records no start identity" if not entry.identity else "names a process that is not the one topo started"
    return (f"node {node!r}: {entry.pidfile} {why} (process group {entry.pgid} is alive, pidfile command: "
            f"{entry.command or 'unknown'}); not stopped. Check it with `ps -o pid,lstart,args -g {entry.pgid}` "
            "and remove the pidfile")


async def live_leftovers(connector: Connector, workdir: str, *, remove_stale: bool = False,
                         except_pidfiles: Collection[str] = ()) -> list[str]:
    """Processes of an earlier run still alive on the node (found by their pidfiles), one sentence each;
    a pidfile whose pid now belongs to someone else is named too (not ours to stop: a person decides).
    With `remove_stale`, pidfiles of groups that are gone are deleted on the way. `except_pidfiles`: those
    of processes kept up on purpose (a Ray cluster one bring-up hands to the next)."""
    node = connector.node
    left = []
    for entry in await read_pidfiles(connector, workdir):
        if entry.pidfile in except_pidfiles:
            continue
        state = await pidfile_state(connector, entry)
        if state == "ours":
            left.append(f"{entry.step} (process group {entry.pgid}, {entry.pidfile})")
        elif state == "foreign":
            left.append(foreign_note(node, entry))
        elif remove_stale:
            await connector.run(["rm", "-f", entry.pidfile], timeout=30)
    return left
