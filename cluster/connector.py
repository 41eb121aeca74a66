"""How to run a command on a node: one small protocol, three implementations.

    Connector.run(argv, env=, timeout=, input=)      -> Completed(exit_status, stdout, stderr)
    Connector.start(argv, env=, log_path=, pidfile=) -> process group id of a supervised process
    Connector.write_file(path, text, mode) / read_file(path) / close()

- LocalConnector: the node is this machine (the embedded local-twin cluster, the proxy on the controller).
- SshConnector: asyncssh, host keys verified against the node's known_hosts, one connection reused.
- FakeConnector (cluster/fake.py): in memory, for unit tests.

Commands are argument lists everywhere; they become one shell string only at the SSH boundary (shlex.join)
and in the few local places that need a shell. A `Secret` in argv or env is revealed only when the
command is handed to the node; every error message and log line carries the masked form (`***`).
Foreign exceptions (asyncssh, OSError, timeouts) are translated here into ConnectError/RemoteCommandError.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import asyncssh

from common.errors import ConnectError, RemoteCommandError
from topology.inventory import SshConnect
from topology.plan import ArgOrSecret, Secret, render, reveal

DEFAULT_TIMEOUT_S = 60.0
MAX_SESSIONS = 8  # concurrent commands over one SSH connection
TAIL_CHARS = 4000


@dataclass(frozen=True)
class Completed:
    """What a finished command left behind."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def output_tail(self, limit: int = TAIL_CHARS) -> str:
        text = (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).strip()
        return text[-limit:]


Argv = Sequence[ArgOrSecret]
Env = Mapping[str, ArgOrSecret]


def masked_command(argv: Argv, env: Env | None = None) -> str:
    """The printable form of a command: env assignments first, secrets as ***."""
    def shown(value: ArgOrSecret) -> str:
        return render(value) if isinstance(value, Secret) else shlex.quote(value)

    words = [f"{key}={shown(value)}" for key, value in (env or {}).items()]
    return " ".join([*words, *(shown(arg) for arg in argv)])


def shell_command(argv: Argv, env: Env | None = None) -> str:
    """The real command line for a POSIX shell on the node: `env K=V ... argv...`, quoted."""
    words = [reveal(arg) for arg in argv]
    if env:
        words = ["env", *(f"{key}={reveal(value)}" for key, value in env.items()), *words]
    return shlex.join(words)


# A pidfile names its process and proves it is still the same one (a pid is reused after the process ends):
#     PID
#     start BOOT_ID START_TICKS      (/proc/sys/kernel/random/boot_id; field 22 of /proc/PID/stat)
#     command MASKED COMMAND LINE     (for the humans reading `topo down`'s report)
# cluster/supervise.py reads it and compares the identity before it signals anything.
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
PIDFILE_START = "start"
PIDFILE_COMMAND = "command"


PIDFILE_COMMAND_CHARS = 200


def pidfile_text(pid: int, identity: str, command: str) -> str:
    return f"{pid}\n{PIDFILE_START} {identity}\n{PIDFILE_COMMAND} {_pidfile_command(command)}\n"


def _pidfile_command(command: str) -> str:
    return command.replace("\n", " ")[:PIDFILE_COMMAND_CHARS]


def local_identity(pid: int) -> str:
    """`BOOT_ID START_TICKS` of a process on this machine ('' when it is gone already)."""
    try:
        boot = Path(BOOT_ID_PATH).read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{boot} {stat.rsplit(') ', 1)[1].split()[19]}"


# Read a 0600 env file of secrets ($1), delete it, run the command (the rest of the arguments) in this process.
SOURCE_SECRETS_AND_EXEC = 'set -a && . "$1" && set +a && rm -f "$1" && shift && exec "$@"'


def supervised_shell_command(argv: Argv, env: Env | None, log_path: str, pidfile: str, *,
                             shown: str | None = None) -> str:
    """Start a process in its own session (so its pid is also its process group id), detached from the
    connection, with output in `log_path`; the shell writes the pidfile (pid and identity) before printing
    the pid, so a pid is never lost even when the caller is cancelled while waiting for the answer."""
    log_dir = str(Path(log_path).parent)
    pid_dir = str(Path(pidfile).parent)
    # `sed` drops "pid (comm) " (comm may hold spaces and parentheses): field 22 of stat is then field 20.
    identity = (f"$(cat {BOOT_ID_PATH}) $(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f20)")
    command = shlex.quote(_pidfile_command(shown if shown is not None else masked_command(argv)))
    return (
        f"mkdir -p {shlex.quote(log_dir)} {shlex.quote(pid_dir)} && "
        f"{{ nohup setsid {shell_command(argv, env)} >{shlex.quote(log_path)} 2>&1 </dev/null & pid=$!; "
        f"printf '%s\\n{PIDFILE_START} %s\\n{PIDFILE_COMMAND} %s\\n' \"$pid\" \"{identity}\" {command} "
        f">{shlex.quote(pidfile)}; echo $pid; }}"
    )


@runtime_checkable
class Connector(Protocol):
    """Runs commands and supervised processes on one node."""

    node: str

    async def run(
        self, argv: Argv, *, env: Env | None = None, timeout: float = DEFAULT_TIMEOUT_S, input: str | None = None
    ) -> Completed: ...

    async def start(self, argv: Argv, *, env: Env | None = None, log_path: str, pidfile: str) -> int: ...

    async def write_file(self, path: str, text: str, mode: int = 0o644) -> None: ...

    async def read_file(self, path: str) -> str: ...

    async def close(self) -> None: ...


async def run_checked(
    connector: Connector,
    argv: Argv,
    *,
    env: Env | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    input: str | None = None,
) -> Completed:
    """`run`, but a non-zero exit is a RemoteCommandError with the (masked) command and output tail."""
    done = await connector.run(argv, env=env, timeout=timeout, input=input)
    if not done.ok:
        raise RemoteCommandError(connector.node, masked_command(argv, env), done.exit_status, done.output_tail())
    return done


def _parse_pid(node: str, command: str, done: Completed) -> int:
    text = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    if done.ok and text and text[0].strip().isdigit():
        return int(text[0].strip())
    raise RemoteCommandError(node, command, done.exit_status, done.output_tail() or "(no pid printed)")


# ---------------------------------------------------------------------------------------------------------
# Local


def _reap_in_background(process: subprocess.Popen[bytes]) -> None:
    # A started process is our child: wait for it so it never lingers as a zombie in its process group.
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()


class LocalConnector:
    """The node is this machine. No shell: argv goes to exec directly; env is merged into ours."""

    def __init__(self, node: str = "controller") -> None:
        self.node = node

    def _env(self, env: Env | None) -> dict[str, str]:
        merged = dict(os.environ)
        merged.update({key: reveal(value) for key, value in (env or {}).items()})
        return merged

    async def run(
        self, argv: Argv, *, env: Env | None = None, timeout: float = DEFAULT_TIMEOUT_S, input: str | None = None
    ) -> Completed:
        command = masked_command(argv, env)
        try:
            process = await asyncio.create_subprocess_exec(
                *(reveal(arg) for arg in argv),
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(env),
                start_new_session=True,  # a timeout kills the command's whole group, not just its head
            )
        except OSError as exc:
            raise RemoteCommandError(self.node, command, None, f"cannot execute: {exc.strerror or exc}") from exc
        try:
            stdout, stderr = await asyncio.wait_for(
                process.communicate(input.encode() if input is not None else None), timeout
            )
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise RemoteCommandError(self.node, command, None, f"timed out after {timeout:g} s") from exc
        return Completed(process.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    async def start(self, argv: Argv, *, env: Env | None = None, log_path: str, pidfile: str) -> int:
        command = masked_command(argv, env)
        try:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            Path(pidfile).parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [reveal(arg) for arg in argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(env),
                    start_new_session=True,  # own session and process group: pid == pgid
                )
        except OSError as exc:
            raise RemoteCommandError(self.node, command, None, f"cannot start: {exc.strerror or exc}") from exc
        _reap_in_background(process)
        try:
            Path(pidfile).write_text(pidfile_text(process.pid, local_identity(process.pid), command))
        except OSError as exc:
            os.killpg(process.pid, signal.SIGKILL)
            raise RemoteCommandError(self.node, f"write {pidfile}", None, str(exc)) from exc
        return process.pid

    async def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        try:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(mode)
        except OSError as exc:
            raise RemoteCommandError(self.node, f"write {path}", None, exc.strerror or str(exc)) from exc

    async def read_file(self, path: str) -> str:
        try:
            return Path(path).read_text(errors="replace")
        except OSError as exc:
            raise RemoteCommandError(self.node, f"read {path}", None, exc.strerror or str(exc)) from exc

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------------------
# SSH


def translate_ssh_error(node: str, where: str, exc: BaseException) -> ConnectError:
    """One clear sentence per way an SSH connection fails; the foreign exception stays as the cause."""
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        reason = (
            f"the host key of {where} is not verified by the known_hosts file ({exc.reason}); "
            "add the node's key to known_hosts (topo never switches host key checking off)"
        )
    elif isinstance(exc, asyncssh.PermissionDenied):
        reason = f"{where} refused our key ({exc.reason}); check `key:` and the node's authorized_keys"
    elif isinstance(exc, asyncssh.KeyImportError):
        reason = f"cannot load the SSH key for {where}: {exc}"
    elif isinstance(exc, asyncssh.ConnectionLost):
        reason = f"lost the SSH connection to {where} ({exc.reason})"
    elif isinstance(exc, asyncssh.DisconnectError):
        reason = f"{where} closed the SSH connection ({exc.reason})"
    elif isinstance(exc, asyncssh.ChannelOpenError):
        reason = f"{where} refused to open an SSH channel ({exc.reason})"
    elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        reason = f"timed out connecting to {where}"
    elif isinstance(exc, ConnectionRefusedError):
        reason = f"{where} refused the connection (is sshd running there?)"
    elif isinstance(exc, OSError):
        reason = f"cannot reach {where}: {exc.strerror or exc}"
    else:
        reason = f"SSH to {where} failed: {type(exc).__name__}: {exc}"
    return ConnectError(f"node {node!r}: {reason}")


# What `translate_ssh_error` knows; anything else from asyncssh is a bug to be mapped, not swallowed.
SSH_FOREIGN_ERRORS: tuple[type[BaseException], ...] = (asyncssh.Error, asyncssh.KeyImportError, OSError, asyncio.TimeoutError)


class SshConnector:
    """A node reached over SSH. One connection, opened on first use and reused for every command."""

    def __init__(self, node: str, connect: SshConnect) -> None:
        self.node = node
        self.settings = connect
        self._connection: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        # sshd allows 10 sessions per connection by default (MaxSessions): stay below it
        self._sessions = asyncio.Semaphore(MAX_SESSIONS)

    @property
    def where(self) -> str:
        return f"{self.settings.user}@{self.settings.host}:{self.settings.port}"

    async def connect(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed():
                return self._connection
            known_hosts = self.settings.known_hosts
            if known_hosts is None or not Path(known_hosts).is_file():
                raise ConnectError(
                    f"node {self.node!r}: known_hosts file {known_hosts!r} does not exist; "
                    "host keys are always verified"
                )
            options: dict[str, object] = {}
            if self.settings.key is not None:
                if not Path(self.settings.key).is_file():
                    raise ConnectError(f"node {self.node!r}: SSH key {self.settings.key!r} does not exist")
                options["client_keys"] = [self.settings.key]
                options["agent_path"] = None  # use exactly the configured key
            try:
                self._connection = await asyncssh.connect(
                    self.settings.host,
                    port=self.settings.port,
                    username=self.settings.user,
                    known_hosts=known_hosts,
                    connect_timeout=self.settings.connect_timeout_s,
                    keepalive_interval=self.settings.keepalive_s or None,
                    keepalive_count_max=3,
                    # The login name and key alone decide; no password or keyboard prompts to hang on.
                    password=None,
                    kbdint_auth=False,
                    **options,
                )
            except SSH_FOREIGN_ERRORS as exc:
                raise translate_ssh_error(self.node, self.where, exc) from exc
            return self._connection

    async def run(
        self, argv: Argv, *, env: Env | None = None, timeout: float = DEFAULT_TIMEOUT_S, input: str | None = None
    ) -> Completed:
        masked = masked_command(argv, env)
        argv, env = await self._hand_over_secrets(argv, env, f"/tmp/topo-secret-{secrets.token_hex(8)}.env")
        return await self._run_shell(shell_command(argv, env), masked, timeout, input)

    async def _hand_over_secrets(self, argv: Argv, env: Env | None, path: str) -> tuple[Argv, Env | None]:
        """Secret env values must not ride on a command line (the node's `ps`, sshd's exec request): they
        go through stdin into a 0600 file that the command's shell reads, deletes, then execs the command."""
        secret = {key: value for key, value in (env or {}).items() if isinstance(value, Secret)}
        if not secret:
            return argv, env
        text = "".join(f"{key}={shlex.quote(reveal(value))}\n" for key, value in secret.items())
        write = 'umask 077 && mkdir -p "$(dirname "$1")" && cat >"$1"'
        done = await self._run_shell(shlex.join(["sh", "-c", write, "sh", path]), f"write secrets to {path}",
                                     DEFAULT_TIMEOUT_S, text)
        if not done.ok:
            raise RemoteCommandError(self.node, f"write secrets to {path}", done.exit_status, done.output_tail())
        plain = {key: value for key, value in (env or {}).items() if key not in secret}
        return ["sh", "-c", SOURCE_SECRETS_AND_EXEC, "sh", path, *argv], plain

    async def _run_shell(self, command: str, masked: str, timeout: float, input: str | None = None) -> Completed:
        connection = await self.connect()
        try:
            async with self._sessions:
                # wait_for as well: asyncssh's timeout starts once the channel is open, and opening one on
                # a connection whose peer vanished waits for keepalive to give up (~45 s, seen on the bed)
                result = await asyncio.wait_for(connection.run(command, input=input, check=False, timeout=timeout),
                                                timeout)
        except (asyncssh.TimeoutError, asyncio.TimeoutError) as exc:
            raise RemoteCommandError(self.node, masked, None, f"timed out after {timeout:g} s") from exc
        except SSH_FOREIGN_ERRORS as exc:
            self._connection = None
            raise translate_ssh_error(self.node, self.where, exc) from exc
        exit_status = result.exit_status if result.exit_status is not None else -1
        if result.exit_signal:
            exit_status = 128 + (getattr(signal, f"SIG{result.exit_signal[0]}", 0) or 0)
        return Completed(exit_status, _text(result.stdout), _text(result.stderr))

    async def start(self, argv: Argv, *, env: Env | None = None, log_path: str, pidfile: str) -> int:
        masked = masked_command(argv, env)
        argv, env = await self._hand_over_secrets(argv, env, f"{pidfile}.env")
        command = supervised_shell_command(argv, env, log_path, pidfile, shown=masked)
        done = await self._run_shell(command, masked, DEFAULT_TIMEOUT_S)
        return _parse_pid(self.node, masked, done)

    async def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        script = 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1"'
        await run_checked(self, ["sh", "-c", script, "sh", path, f"{mode:o}"], input=text)

    async def read_file(self, path: str) -> str:
        return (await run_checked(self, ["cat", path])).stdout

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            try:
                await asyncio.wait_for(self._connection.wait_closed(), 5)
            except (asyncio.TimeoutError, OSError, asyncssh.Error):
                pass
            self._connection = None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
