"""Loading YAML into pydantic models, with errors that name the file, the key and what was expected."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

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


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return yaml.safe_load(text)
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
