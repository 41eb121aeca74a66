"""Every foreign error at the SSH boundary becomes a ConnectError/RemoteCommandError that says what to do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from cluster import connector as connector_module
from cluster.connector import SshConnector, masked_command, shell_command, supervised_shell_command
from common.errors import ConnectError, RemoteCommandError
from topology.inventory import SshConnect
from topology.plan import Secret

FOREIGN_ERRORS = [
    (asyncssh.HostKeyNotVerifiable("Host key is not trusted"), "not verified by the known_hosts file"),
    (asyncssh.PermissionDenied("Permission denied"), "refused our key"),
    (asyncssh.KeyImportError("Invalid private key"), "cannot load the SSH key"),
    (asyncssh.ConnectionLost("Connection lost"), "lost the SSH connection"),
    (asyncssh.DisconnectError(asyncssh.DISC_BY_APPLICATION, "bye"), "closed the SSH connection"),
    (asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "no"), "refused to open an SSH channel"),
    (asyncio.TimeoutError(), "timed out connecting"),
    (ConnectionRefusedError(111, "Connection refused"), "refused the connection (is sshd running there?)"),
    (OSError(113, "No route to host"), "cannot reach root@10.88.0.9:22: No route to host"),
]


@pytest.fixture
def settings(tmp_path: Path) -> SshConnect:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("10.88.0.9 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB\n")
    key = tmp_path / "id"
    key.write_text("not read: asyncssh.connect is replaced in these tests\n")
    return SshConnect(kind="ssh", host="10.88.0.9", key=str(key), known_hosts=str(known_hosts))


@pytest.mark.parametrize("foreign, phrase", FOREIGN_ERRORS, ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "")
async def test_each_connect_failure_maps_to_connect_error(
    monkeypatch: pytest.MonkeyPatch, settings: SshConnect, foreign: BaseException, phrase: str
) -> None:
    seen: dict[str, object] = {}

    async def failing_connect(host: str, **options: object) -> None:
        seen.update(options, host=host)
        raise foreign

    monkeypatch.setattr(connector_module.asyncssh, "connect", failing_connect)
    ssh = SshConnector("n9", settings)
    with pytest.raises(ConnectError, match="node 'n9'") as caught:
        await ssh.run(["true"])
    assert phrase in str(caught.value)
    assert caught.value.__cause__ is foreign
    # host keys are checked against the configured file, never switched off
    assert seen["known_hosts"] == settings.known_hosts and seen["known_hosts"] is not None
    assert seen["client_keys"] == [settings.key] and seen["connect_timeout"] == settings.connect_timeout_s


async def test_a_missing_known_hosts_file_fails_before_connecting(monkeypatch: pytest.MonkeyPatch, settings: SshConnect) -> None:
    async def must_not_connect(*args: object, **kwargs: object) -> None:
        raise AssertionError("connected without a known_hosts file")

    monkeypatch.setattr(connector_module.asyncssh, "connect", must_not_connect)
    ssh = SshConnector("n9", settings.model_copy(update={"known_hosts": "/nonexistent/known_hosts"}))
    with pytest.raises(ConnectError, match="known_hosts file '/nonexistent/known_hosts' does not exist"):
        await ssh.run(["true"])
    ssh = SshConnector("n9", settings.model_copy(update={"key": "/nonexistent/id"}))
    with pytest.raises(ConnectError, match="SSH key '/nonexistent/id' does not exist"):
        await ssh.run(["true"])


class FakeConnection:
    """Stands in for asyncssh's connection: records commands, fails as told."""

    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.commands: list[str] = []
        self.inputs: list[str | None] = []

    def is_closed(self) -> bool:
        return False

    async def run(self, command: str, *, input: str | None, check: bool, timeout: float):  # type: ignore[no-untyped-def]
        self.commands.append(command)
        self.inputs.append(input)
        if self.failure is not None:
            raise self.failure
        return asyncssh.SSHCompletedProcess(command=command, exit_status=0, stdout="4242\n", stderr="")

    def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None


def patched(monkeypatch: pytest.MonkeyPatch, connection: FakeConnection) -> list[int]:
    connects: list[int] = []

    async def connect(host: str, **options: object) -> FakeConnection:
        connects.append(1)
        return connection

    monkeypatch.setattr(connector_module.asyncssh, "connect", connect)
    return connects


async def test_one_connection_is_reused_and_commands_are_quoted_once(monkeypatch: pytest.MonkeyPatch, settings: SshConnect) -> None:
    connection = FakeConnection()
    connects = patched(monkeypatch, connection)
    ssh = SshConnector("n9", settings)
    await ssh.run(["echo", "two words", Secret(secret="k3y")], env={"A": "b c"})
    pgid = await ssh.start(["sleep", "9"], env={"T": Secret(secret="tok")}, log_path="/w/logs/s.log", pidfile="/w/run/s.pid")
    await ssh.write_file("/w/router.yaml", "x: 1\n", mode=0o600)
    assert pgid == 4242 and len(connects) == 1
    assert connection.commands[0] == "env 'A=b c' echo 'two words' k3y"
    # the secret env value goes through stdin into a 0600 file, never into a command line
    assert "umask 077" in connection.commands[1] and connection.inputs[1] == "T=tok\n"
    assert all("tok" not in command for command in connection.commands)
    assert "nohup setsid sh -c 'set -a && . \"$1\" && set +a && rm -f \"$1\" && shift && exec \"$@\"' sh " \
           "/w/run/s.pid.env sleep 9 >/w/logs/s.log 2>&1 </dev/null &" in connection.commands[2]
    assert "pid=$!; printf" in connection.commands[2] and ">/w/run/s.pid; echo $pid; }" in connection.commands[2]
    assert "'T=*** sleep 9'" in connection.commands[2]  # the pidfile's command, masked
    assert connection.inputs[3] == "x: 1\n" and "600" in connection.commands[3]


async def test_a_command_timeout_is_a_remote_command_error_with_the_masked_command(
    monkeypatch: pytest.MonkeyPatch, settings: SshConnect
) -> None:
    patched(monkeypatch, FakeConnection(asyncssh.TimeoutError(None, "ray status", None, None, None, None, "", "")))
    with pytest.raises(RemoteCommandError, match=r"`ray status --token \*\*\*` exited with status None") as caught:
        await SshConnector("n9", settings).run(["ray", "status", "--token", Secret(secret="abc")], timeout=1)
    assert "timed out after 1 s" in str(caught.value) and "abc" not in str(caught.value)


async def test_a_connection_lost_mid_command_is_a_connect_error_and_reconnects_next_time(
    monkeypatch: pytest.MonkeyPatch, settings: SshConnect
) -> None:
    connection = FakeConnection(asyncssh.ConnectionLost("gone"))
    connects = patched(monkeypatch, connection)
    ssh = SshConnector("n9", settings)
    with pytest.raises(ConnectError, match="lost the SSH connection"):
        await ssh.run(["true"])
    connection.failure = None
    await ssh.run(["true"])
    assert len(connects) == 2


def test_quoting_happens_only_for_the_shell_and_secrets_only_there() -> None:
    argv = ["vllm", "serve", "m", "--api-key", Secret(secret="sk-1")]
    assert shell_command(argv) == "vllm serve m --api-key sk-1"
    assert masked_command(argv, {"K": Secret(secret="v")}) == "K=*** vllm serve m --api-key ***"
    line = supervised_shell_command(["a b"], None, "/w/logs/x y.log", "/w/run/x.pid")
    assert "nohup setsid 'a b' >'/w/logs/x y.log'" in line


async def test_concurrent_commands_stay_below_sshds_session_limit(monkeypatch: pytest.MonkeyPatch, settings: SshConnect) -> None:
    from cluster.connector import MAX_SESSIONS

    open_now, most = 0, 0

    class SlowConnection(FakeConnection):
        async def run(self, command: str, **kwargs: object):  # type: ignore[no-untyped-def,override]
            nonlocal open_now, most
            open_now += 1
            most = max(most, open_now)
            await asyncio.sleep(0.01)
            open_now -= 1
            return asyncssh.SSHCompletedProcess(command=command, exit_status=0, stdout="", stderr="")

    patched(monkeypatch, SlowConnection())
    ssh = SshConnector("n9", settings)
    await asyncio.gather(*(ssh.run(["true"]) for _ in range(30)))
    assert most == MAX_SESSIONS < 10
