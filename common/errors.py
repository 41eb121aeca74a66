"""The one error tree of topo.

Every package raises only these. Foreign exceptions (asyncssh, httpx, OSError, pydantic, yaml, ray,
subprocess) are translated where they cross into our code, with ``raise OurError(...) from exc`` so the
cause stays in the traceback, and the CLI turns any ``TopoError`` into one red line and exit code 2.

    TopoError                       base; ``str(err)`` is a complete sentence for a human
    ├── ConfigError                 a YAML file, a CLI option or a flag combination is wrong
    │                               (names the file, the key and what was expected)
    ├── PlanError                   a topology cannot be laid out on a cluster with a recipe
    ├── ConnectError                a node cannot be reached or authenticated (host key, key, timeout)
    ├── RemoteCommandError          a command on a node exited non-zero (argv, exit code, output tail)
    ├── BringUpError                a topology did not come up: process died, readiness timed out
    │   └── ReadinessTimeout        (carries the log tail of the process that did not get ready)
    ├── TeardownError               something a topology started could not be proven stopped
    ├── EndpointError               an OpenAI-compatible endpoint is unusable: wrong URL, unknown model,
    │                               refused connection at the first probe (per-request failures during a
    │                               run are data in the request rows, never this exception)
    ├── StreamError                 a server's SSE stream is malformed (what and where in the stream);
    │                               caught by the bench client and stored as the request's error
    ├── ResultsError                a results folder is missing, unreadable or of another schema
    │   └── StorageError            a results folder cannot be written (disk full, read-only, quota):
    │                               the sweep stops at once (exit 2); nothing measured before is lost
    ├── EngineRequestError          the twin engine refuses a request (too long for max_model_len or for
    │                               its whole KV cache); also a ValueError; the server answers HTTP 400
    └── RegressionInputError        ``topo regress`` got unusable input (exit 2, unlike a regression: 1)
"""

from __future__ import annotations


class TopoError(Exception):
    """Base of every error topo raises on purpose."""


class ConfigError(TopoError):
    """A configuration file, CLI option or combination of them is invalid."""


class PlanError(TopoError):
    """A topology cannot be planned on the given cluster with the given recipe."""


class ConnectError(TopoError):
    """A node cannot be reached or authenticated."""


class RemoteCommandError(TopoError):
    """A command run on a node failed."""

    def __init__(self, node: str, command: str, exit_status: int | None, output_tail: str = "") -> None:
        self.node = node
        self.command = command
        self.exit_status = exit_status
        self.output_tail = output_tail
        tail = f"\n--- output (tail) ---\n{output_tail}" if output_tail else ""
        super().__init__(f"on node {node!r}: `{command}` exited with status {exit_status}{tail}")


class BringUpError(TopoError):
    """A topology did not come up."""


class ReadinessTimeout(BringUpError):
    """A process stayed alive but never passed its readiness probe in time."""


class TeardownError(TopoError):
    """Something that was started could not be proven stopped."""


class EndpointError(TopoError):
    """An OpenAI-compatible endpoint is unusable (fails fast, before any load)."""


class StreamError(TopoError):
    """A server's streamed response is malformed."""


class ResultsError(TopoError):
    """A results folder is missing, unreadable, or of an unknown schema."""


class StorageError(ResultsError):
    """Writing a results folder failed (no space, no permission): not a topology's fault, so it ends the run."""


class EngineRequestError(TopoError, ValueError):
    """The twin engine refuses a request it could never serve (the server answers it with HTTP 400)."""


class RegressionInputError(TopoError):
    """The regression gate got input it cannot compare."""
