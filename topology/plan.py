"""A LaunchPlan: what to start where, in which order, how to know it is ready and how to stop it.

Pure data. topology/ computes it (no I/O), `topo plan` prints it (the dry run), cluster/ executes it.
Commands are argument lists; they are quoted only at the SSH boundary. Secret values never appear in
the printed form: an env value or argv element that is a `Secret` renders as `***`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from common.config import EnvValue, SecretRef


class Secret(BaseModel):
    """A value that must never be printed (a LiteLLM master key, a token)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    secret: str = ""
    # Or where to read it when a node needs it (`{secret: VAR}` / `{secret_file: PATH}` in a config), so a
    # plan is made and printed without reading any secret; `origin` names the config key for errors.
    ref: SecretRef | None = None
    origin: str = ""

    def __str__(self) -> str:
        return "***"

    def value(self) -> str:
        return self.ref.resolve(self.origin) if self.ref is not None else self.secret

    @model_serializer(mode="wrap")
    def _masked_when_asked(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> object:
        # `plan.model_dump(context={"mask_secrets": True})` prints "***"; a plain dump keeps the value
        # so a plan can still be handed over whole to the process that executes it.
        if isinstance(info.context, dict) and info.context.get("mask_secrets"):
            return "***"
        return handler(self)

    def __repr__(self) -> str:
        return "Secret('***')"


ArgOrSecret = Union[str, Secret]


class HttpProbe(BaseModel):
    """Ready when every URL answers 2xx, in order (e.g. /health then /v1/models)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["http"] = "http"
    urls: tuple[str, ...]
    headers: dict[str, ArgOrSecret] = Field(default_factory=dict)
    timeout_s: float = 900.0  # engine start-up on real hardware takes minutes


class CommandProbe(BaseModel):
    """Ready when a command on the node exits 0 and its output passes the expectations (if any).

    `expect_in_output`: a substring that must appear. `expect_pattern` / `expect_min_matches`: a regex
    (multi-line mode) that must match at least that many times, e.g. one line per active Ray node.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["command"] = "command"
    argv: tuple[str, ...]
    expect_in_output: str | None = None
    expect_pattern: str | None = None
    expect_min_matches: int = 1
    timeout_s: float = 120.0

    def satisfied_by(self, output: str) -> bool:
        """Whether the output of a run that exited 0 means ready (the executor calls this)."""
        if self.expect_in_output is not None and self.expect_in_output not in output:
            return False
        if self.expect_pattern is not None:
            return len(re.findall(self.expect_pattern, output, flags=re.MULTILINE)) >= self.expect_min_matches
        return True


class NoProbe(BaseModel):
    """Nothing to wait for (a headless rank: it is checked through rank 0's readiness)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["none"] = "none"


Probe = Annotated[Union[HttpProbe, CommandProbe, NoProbe], Field(discriminator="kind")]


class StopByProcessGroup(BaseModel):
    """TERM to the process group, KILL after `grace_s`, then prove the group empty and ports closed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["process-group"] = "process-group"
    grace_s: float = 30.0
    ports: tuple[int, ...] = ()


class StopByCommand(BaseModel):
    """Run a command to stop it (e.g. `docker rm -f NAME`), then prove ports closed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["command"] = "command"
    argv: tuple[str, ...]
    ports: tuple[int, ...] = ()


Stop = Annotated[Union[StopByProcessGroup, StopByCommand], Field(discriminator="kind")]


class Step(BaseModel):
    """One long-running process on one node."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str  # unique in the plan, e.g. "engine-rank1", "ray-head", "proxy"
    node: str  # node name from the cluster inventory, or "controller" (the machine running topo)
    role: str  # "engine", "engine-headless", "ray-head", "ray-worker", "proxy"
    argv: tuple[ArgOrSecret, ...]
    env: dict[str, ArgOrSecret] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # path on node -> content written before start
    probe: Probe = Field(default_factory=NoProbe)
    stop: Stop = Field(default_factory=StopByProcessGroup)


class Stage(BaseModel):
    """Steps that may start in parallel; a stage starts when every probe of the previous one passed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: tuple[Step, ...]


class LaunchPlan(BaseModel):
    """Ordered stages of a topology on a cluster, plus where clients send their requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    topology: str
    cluster: str
    model: str  # recipe name
    served_model_name: str
    stages: tuple[Stage, ...]
    endpoint: str  # base URL clients use, e.g. http://10.88.0.1:8000/v1
    endpoint_headers: dict[str, ArgOrSecret] = Field(default_factory=dict)

    def steps(self) -> list[Step]:
        return [step for stage in self.stages for step in stage.steps]

    def teardown_order(self) -> list[Step]:
        """Stop in reverse start order: proxy before engines, rank 0 before headless ranks, Ray last."""
        return list(reversed(self.steps()))


def config_env(values: Mapping[str, EnvValue], source: str) -> dict[str, ArgOrSecret]:
    """A node's or recipe's env for a plan: a `{secret: ...}` / `{secret_file: ...}` becomes a Secret that
    is read only when a command is handed to a node (reveal)."""
    return {key: Secret(ref=value, origin=f"{source} env.{key}") if isinstance(value, SecretRef) else value
            for key, value in values.items()}


def reveal(value: ArgOrSecret) -> str:
    """The real value, for the one place that needs it: handing the command to a node."""
    return value.value() if isinstance(value, Secret) else value


def render(value: ArgOrSecret) -> str:
    """The printable value: secrets as ***."""
    return str(value)
