"""Supervision on the in-memory connector: TERM, KILL after grace, proof of an empty group and closed ports."""

from __future__ import annotations

import pytest

from cluster.bringup import NodeAccess, stop_leftovers
from cluster.connector import Completed, LocalConnector
from cluster.fake import FAKE_BOOT_ID, FakeBehaviour, FakeConnector
from cluster.supervise import (
    PidfileEntry,
    pidfile_state,
    Supervised,
    ProcessRow,
    escaped_descendants,
    live_groups,
    parse_listening_ports,
    read_pidfiles,
    signal_group,
    step_paths,
    stop_group,
)
from common.errors import TeardownError


async def started(fake: FakeConnector, name: str, behaviour: FakeBehaviour) -> Supervised:
    fake.on_start(name, behaviour)
    paths = step_paths("/w", name)
    pgid = await fake.start([name, "--serve"], log_path=paths.log, pidfile=paths.pidfile)
    return Supervised(name, fake.node, pgid, paths.log, paths.pidfile)


async def test_term_is_enough_for_a_well_behaved_process() -> None:
    fake = FakeConnector("n1")
    process = await started(fake, "engine", FakeBehaviour(ports=(8000,)))
    outcome = await stop_group(fake, process, grace_s=5, ports=(8000,), poll_s=0.01)
    assert not outcome.killed
    assert fake.process("engine").signals == ["TERM"]
    assert process.pidfile not in fake.files
    assert ("kill", "-TERM", "--", f"-{process.pgid}") in fake.commands()


async def test_kill_follows_term_after_the_grace_period() -> None:
    fake = FakeConnector("n1")
    process = await started(fake, "gcs", FakeBehaviour(ports=(6379,), ignores_term=True))
    outcome = await stop_group(fake, process, grace_s=0.05, ports=(6379,), poll_s=0.01)
    assert outcome.killed
    assert fake.process("gcs").signals == ["TERM", "KILL"]
    assert not fake.process("gcs").alive


async def test_a_group_that_survives_kill_is_a_teardown_error() -> None:
    fake = FakeConnector("n1")
    process = await started(fake, "stuck", FakeBehaviour(ignores_term=True, survives_kill=True))
    with pytest.raises(TeardownError, match=f"process group {process.pgid} \\(or its escaped children\\) still has live processes"):
        await stop_group(fake, process, grace_s=0.05, prove_s=0.05, poll_s=0.01)
    assert process.pidfile in fake.files  # not proven stopped: the pidfile stays for `topo down`


async def test_a_port_still_listening_after_the_group_is_gone_is_a_teardown_error() -> None:
    fake = FakeConnector("n1")
    process = await started(fake, "escapee", FakeBehaviour(ports=(8000, 29501), leaves_port_open=True))
    with pytest.raises(TeardownError, match=r"port\(s\) 8000, 29501 still listening"):
        await stop_group(fake, process, grace_s=1, ports=(8000, 29501), prove_s=0.05, poll_s=0.01)


async def test_stopping_an_already_exited_group_sends_no_signal() -> None:
    fake = FakeConnector("n1")
    process = await started(fake, "crashed", FakeBehaviour(exits_at_start=True))
    outcome = await stop_group(fake, process, grace_s=1, poll_s=0.01)
    assert not outcome.killed
    assert not [argv for argv in fake.commands() if argv[0] == "kill"]


async def test_live_groups_ignores_zombies() -> None:
    fake = FakeConnector("n1")
    fake.script(["ps"], Completed(0, "101 1 101 Ss\n 202 1 202 Z\n 203 1 202 Zs\n 303 1 303 R+\n 1 0 1 Ss\n", ""))
    assert await live_groups(fake) == {101, 303, 1}


def test_escaped_descendants_are_found_through_the_parent_chain() -> None:
    table = [
        ProcessRow(10, 1, 10),  # the supervised leader
        ProcessRow(11, 10, 10),  # raylet, same group
        ProcessRow(20, 11, 20),  # a worker in its own session
        ProcessRow(21, 20, 20),  # the worker's child
        ProcessRow(30, 1, 30),  # somebody else
        ProcessRow(31, 30, 30),
    ]
    assert escaped_descendants(table, 10) == {20, 21}
    assert escaped_descendants(table, 30) == set()


async def test_a_child_that_left_the_group_is_stopped_with_it() -> None:
    fake = FakeConnector("n1")
    process = await started(fake, "raylet", FakeBehaviour(forks_escapee=True))
    escapee = fake.process("raylet").escapee
    await stop_group(fake, process, grace_s=1, poll_s=0.01)
    assert not fake.process("raylet").escapee_alive
    assert ("kill", "-TERM", "--", str(escapee)) in fake.commands()


async def test_signal_group_refuses_init_and_the_whole_session() -> None:
    fake = FakeConnector("n1")
    for pgid in (0, 1, -5):
        with pytest.raises(ValueError):
            await signal_group(fake, pgid, "KILL")
    assert fake.commands() == []


def test_listening_ports_from_ss_output() -> None:
    output = (
        "LISTEN 0      4096       10.88.0.1:8000       0.0.0.0:*\n"
        "LISTEN 0      128             [::]:22            [::]:*\n"
        "LISTEN 0      511                *:4000             *:*\n"
        "LISTEN 0      4096 127.0.0.53%lo:53        0.0.0.0:*\n"
        "garbage\n"
    )
    assert parse_listening_ports(output) == {8000, 22, 4000, 53}


async def test_read_pidfiles_names_the_step_and_tolerates_garbage() -> None:
    fake = FakeConnector("n1")
    fake.files["/w/run/engine-rank1.pid"] = "4242\n"
    fake.files["/w/run/broken.pid"] = "not a pid"
    fake.files["/w/logs/engine-rank1.log"] = "x"
    entries = await read_pidfiles(fake, "/w")
    assert [(e.step, e.pgid) for e in entries] == [("broken", None), ("engine-rank1", 4242)]
    assert await read_pidfiles(fake, "/nothing-here") == []


async def test_a_pidfile_records_the_identity_of_what_topo_started() -> None:
    fake = FakeConnector("n1")
    process = await started(fake, "engine", FakeBehaviour())
    (entry,) = await read_pidfiles(fake, "/w")
    assert entry.pgid == process.pgid and entry.identity and entry.command == "engine --serve"
    assert await pidfile_state(fake, entry) == "ours"


async def test_down_stops_only_what_topo_started_and_reports_a_foreign_pidfile() -> None:
    fake = FakeConnector("n1")
    ours = await started(fake, "engine", FakeBehaviour())
    # An old pidfile whose pid now belongs to an unrelated live process (pid reused: another start time),
    # and one written by hand (no identity at all). Neither may be signalled.
    fake.foreign_starts = {777: 5, 888: 6}
    fake.files["/w/run/reused.pid"] = f"777\nstart {FAKE_BOOT_ID} 1777\ncommand vllm serve\n"
    fake.files["/w/run/bare.pid"] = "888\n"
    fake.files["/w/run/dead.pid"] = f"999\nstart {FAKE_BOOT_ID} 1999\ncommand twin\n"
    leftovers = await stop_leftovers({"n1": NodeAccess("n1", fake, "/w")}, grace_s=0.1)
    assert [outcome.pgid for outcome in leftovers.stopped] == [ours.pgid]
    assert len(leftovers.foreign) == 2
    assert "bare.pid records no start identity (process group 888 is alive" in leftovers.foreign[0]
    assert "reused.pid names a process that is not the one topo started" in leftovers.foreign[1]
    assert "remove the pidfile" in leftovers.foreign[1]
    signalled = [call.argv for call in fake.calls if call.argv[:1] == ("kill",)]
    assert signalled and all(argv[-1] == f"-{ours.pgid}" for argv in signalled), signalled
    assert "/w/run/reused.pid" in fake.files and "/w/run/bare.pid" in fake.files  # kept for the human
    assert "/w/run/dead.pid" not in fake.files and ours.pidfile not in fake.files


async def test_a_real_pidfile_identity_changes_when_the_pid_is_another_process(tmp_path) -> None:
    import sys

    connector = LocalConnector("local")
    paths = step_paths(str(tmp_path), "sleeper")
    pid = await connector.start([sys.executable, "-c", "import time; time.sleep(60)"], log_path=paths.log,
                                pidfile=paths.pidfile)
    try:
        (entry,) = await read_pidfiles(connector, str(tmp_path))
        assert entry.pgid == pid and await pidfile_state(connector, entry) == "ours"
        claimed = PidfileEntry(entry.step, entry.pidfile, pid, entry.identity.split()[0] + " 1", entry.command)
        assert await pidfile_state(connector, claimed) == "foreign"  # same pid, another start time
    finally:
        await stop_group(connector, Supervised("sleeper", "local", pid, paths.log, paths.pidfile), grace_s=5)
    assert await pidfile_state(connector, entry) == "gone"
