"""LocalConnector with real processes: run, start in an own process group, log, stop, proven gone."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from cluster.connector import LocalConnector, run_checked
from cluster.supervise import Supervised, group_alive, listening_ports, log_tail, stop_group
from common.errors import RemoteCommandError, TeardownError
from topology.plan import Secret

# A server that listens on a port, forks a child into its own group (like an engine's worker), logs, and
# optionally ignores SIGTERM.
SERVER = r"""
import os, signal, socket, sys, time
port, ignore_term = int(sys.argv[1]), sys.argv[2] == "1"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket(); listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port)); listener.listen()
child = os.fork()
if child == 0:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600); os._exit(0)
print(f"listening on {port}, child {child}, secret={os.environ.get('TOKEN')}", flush=True)
time.sleep(600)
"""


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        import asyncio

        await asyncio.sleep(0.05)


async def test_run_returns_exit_status_output_and_merges_env() -> None:
    local = LocalConnector("here")
    done = await local.run(["sh", "-c", 'echo "$GREETING"; echo oops >&2; exit 3'], env={"GREETING": "hi"})
    assert (done.exit_status, done.stdout, done.stderr) == (3, "hi\n", "oops\n")
    assert "PATH" in (await local.run(["env"])).stdout  # our environment is inherited
    assert (await local.run(["cat"], input="piped")).stdout == "piped"


async def test_run_checked_masks_secrets_in_the_error() -> None:
    local = LocalConnector("here")
    with pytest.raises(RemoteCommandError, match=r"`false \*\*\*` exited with status 1") as caught:
        await run_checked(local, ["false", Secret(secret="hunter2")])
    assert "hunter2" not in str(caught.value)
    assert caught.value.node == "here" and caught.value.exit_status == 1


async def test_run_timeout_and_missing_program_are_remote_command_errors() -> None:
    local = LocalConnector("here")
    began = time.monotonic()
    with pytest.raises(RemoteCommandError, match="timed out after 0.3 s"):
        await local.run(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - began < 10
    with pytest.raises(RemoteCommandError, match="cannot execute"):
        await local.run(["/nonexistent/program"])


async def test_write_and_read_file(tmp_path: Path) -> None:
    local = LocalConnector("here")
    target = tmp_path / "deep" / "router.yaml"
    await local.write_file(str(target), "a: 1\n", mode=0o600)
    assert await local.read_file(str(target)) == "a: 1\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(RemoteCommandError, match="read"):
        await local.read_file(str(tmp_path / "missing"))


@pytest.mark.parametrize("ignore_term", [False, True], ids=["term", "kill-after-grace"])
async def test_started_process_has_its_own_group_log_and_is_stopped_provably(tmp_path: Path, ignore_term: bool) -> None:
    local = LocalConnector("here")
    port = free_port()
    log, pidfile = str(tmp_path / "logs" / "srv.log"), str(tmp_path / "run" / "srv.pid")
    pgid = await local.start(
        [sys.executable, "-c", SERVER, str(port), "1" if ignore_term else "0"],
        env={"TOKEN": Secret(secret="s3")},
        log_path=log,
        pidfile=pidfile,
    )
    assert os.getpgid(pgid) == pgid != os.getpgid(0)  # a session and group of its own
    assert Path(pidfile).read_text().splitlines()[0] == str(pgid)

    async def listening() -> bool:
        return port in await listening_ports(local)

    await wait_for(listening)
    assert f"listening on {port}" in await log_tail(local, log)
    assert "secret=s3" in await log_tail(local, log)  # the secret reached the process
    child = int((await log_tail(local, log)).split("child ")[1].split(",")[0])
    assert os.getpgid(child) == pgid

    process = Supervised("srv", "here", pgid, log, pidfile)
    outcome = await stop_group(local, process, grace_s=0.5, ports=(port,), poll_s=0.05)
    assert outcome.killed == ignore_term
    assert not await group_alive(local, pgid)
    assert port not in await listening_ports(local)
    assert not Path(pidfile).exists()
    assert process_state(child) in ("gone", "Z")  # dead (a zombie when this machine's init does not reap)


async def test_a_port_held_by_another_process_is_a_teardown_error(tmp_path: Path) -> None:
    local = LocalConnector("here")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        pgid = await local.start(["sleep", "30"], log_path=str(tmp_path / "s.log"), pidfile=str(tmp_path / "s.pid"))
        process = Supervised("sleeper", "here", pgid, str(tmp_path / "s.log"), str(tmp_path / "s.pid"))
        with pytest.raises(TeardownError, match=f"port\\(s\\) {port} still listening"):
            await stop_group(local, process, grace_s=2, ports=(port,), prove_s=0.3, poll_s=0.05)
        assert not await group_alive(local, pgid)
    finally:
        holder.close()
