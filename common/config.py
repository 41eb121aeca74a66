"""Loading YAML into pydantic models, with errors that name the file, the key and what was expected."""

from __future__ import annotations

from importlib.resources import files
import os
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout (or site-packages when installed)


def _configs_dir() -> Path:
    """configs/ is a package whose YAML ships as package data: found the same way in a checkout and in a
    wheel. An editable install made before it became a package does not map it: use the checkout's."""
    try:
        return Path(str(files("configs")))
    except ModuleNotFoundError:
        return REPO_ROOT / "configs"


CONFIGS_DIR = _configs_dir()


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: `source: key.path: message (got VALUE)`."""
    lines = []
    for problem in exc.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "<top level>"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key (a typo? it is not one of the allowed keys)"
        got = repr(problem.get("input"))
        if len(got) > 120:  # a whole mapping echoed back hides the message; the key path says where to look
            got = got[:117] + "..."
        got_text = "" if problem["type"] in ("missing", "extra_forbidden") or location == "<top level>" else f" (got {got})"
        lines.append(f"{source}: {location}: {message}{got_text}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a config with one is refused instead."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


POSIX_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _posix_env_names(env: dict[str, Any]) -> dict[str, Any]:
    # An env key reaches argv (`env KEY=VALUE ...`, `docker -e`): `-Sfoo` would become an option there.
    bad = [key for key in env if not POSIX_ENV_NAME.fullmatch(key)]
    if bad:
        raise ValueError(f"{', '.join(repr(key) for key in bad)}: not a POSIX environment variable name "
                         "(letters, digits and _, not starting with a digit)")
    return env


class SecretRef(StrictModel):
    """An env value that is never printed or stored: `{secret: VAR}` takes the controller's environment
    variable VAR, `{secret_file: PATH}` the contents of a file on the controller (trailing newline dropped).
    Read when a plan is made; the plan holds it as a `topology.plan.Secret`."""

    secret: str | None = Field(default=None, pattern=POSIX_ENV_NAME.pattern)
    secret_file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("give exactly one of `secret: VARIABLE` or `secret_file: PATH`")
        return self

    def __str__(self) -> str:
        return "***"

    def resolve(self, where: str) -> str:
        """The value; a ConfigError naming `where` (never the value) when it cannot be read."""
        if self.secret is not None:
            value = os.environ.get(self.secret)
            if value is None:
                raise ConfigError(f"{where}: the secret comes from the environment variable {self.secret}, "
                                  "which is not set where topo runs")
            return value
        assert self.secret_file is not None
        path = Path(self.secret_file).expanduser()
        try:
            return path.read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret_file {path} ({exc.strerror or exc})") from exc


EnvValue = Union[str, SecretRef]
# Env of a node or recipe: POSIX names, each value a string or a SecretRef.
EnvMap = Annotated[dict[str, EnvValue], AfterValidator(_posix_env_names)]


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from exc


def load_model(model_type: type[ModelT], path: Path) -> ModelT:
    """Parse a YAML file into `model_type`; every failure is a ConfigError naming the file and key."""
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty (expected a mapping for {model_type.__name__})")
    return validate_model(model_type, data, source=str(path))


def validate_model(model_type: type[ModelT], data: Any, source: str) -> ModelT:
    try:
        return model_type.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from exc


def resolve_config(kind: str, name_or_path: str, suffix: str = ".yaml") -> Path:
    """`gemma4-26b` -> configs/<kind>/gemma4-26b.yaml; an existing path is returned as it is."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.exists():
            raise ConfigError(f"{candidate}: no such file")
        return candidate
    named = CONFIGS_DIR / kind / f"{name_or_path}{suffix}"
    if named.exists():
        return named
    known = sorted(p.stem for p in (CONFIGS_DIR / kind).glob(f"*{suffix}"))
    raise ConfigError(
        f"no {kind} config named {name_or_path!r} (looked for {named}); known: {', '.join(known) or 'none'}"
    )
