"""Workload suites: YAML files under configs/workloads/ naming tests of a request shape under a load.

    suite = load_suite("arena")                  # a name under configs/workloads/ or a YAML path
    suite = suite.only(["01-chat", "10-monday-peak"])
    for point in suite.points(): ...             # (test, load label, concrete shape, load) per cell

A test has an id, a shape (bench/shapes.py), a load and optionally an SLO and the metric that decides it:
- `closed`: llama-benchy's batches of exactly c (`concurrency: [1, 5, 10]`), `runs` per point;
- `open`: `vllm bench serve`'s gamma arrivals at `rate` req/s with `burstiness`, `requests` and/or
  `duration_s`, an optional `max_concurrency` cap and a `seed`;
- `rate-sweep`: one open-loop step per rate, each >= `min_requests` and >= `min_duration_s` of arrivals;
  capacity = the highest rate whose p95 TTFT (the user's) stays under each of `limits_s`.
`prompts: [4096, 8192]` runs the test's shape at each of those prompt lengths (labels `pp4096-c5`).
Errors name the file and the key (common.config).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from bench.shapes import Shape, ShareGPTShape
from bench.workload import ClosedLoad, Load, OpenLoad
from common.config import StrictModel, load_model, resolve_config, validate_model
from common.errors import ConfigError

DEFAULT_LIMITS_S = (2.0, 5.0, 10.0)
DEFAULT_SEED = OpenLoad.seed


class ClosedSpec(StrictModel):
    mode: Literal["closed"] = "closed"
    concurrency: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    runs: int | None = Field(default=None, ge=1)  # None: the sweep's --runs


class OpenSpec(StrictModel):
    mode: Literal["open"] = "open"
    rate: float = Field(gt=0)  # requests per second
    burstiness: float = Field(default=1.0, gt=0)
    requests: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    seed: int = DEFAULT_SEED

    @model_validator(mode="after")
    def _bounded(self) -> OpenSpec:
        if self.requests is None and self.duration_s is None:
            raise ValueError("an open-loop load needs `requests` or `duration_s` (or both)")
        return self


class RateSweepSpec(StrictModel):
    mode: Literal["rate-sweep"] = "rate-sweep"
    rates: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    burstiness: float = Field(default=1.0, gt=0)
    min_requests: int = Field(default=100, ge=1)
    min_duration_s: float = Field(default=0.0, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    seed: int = DEFAULT_SEED
    limits_s: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: list(DEFAULT_LIMITS_S))


LoadSpec = Annotated[Union[ClosedSpec, OpenSpec, RateSweepSpec], Field(discriminator="mode")]


class SLO(StrictModel):
    """Per-request latency limits (the user's figures, from the scheduled arrival); goodput = share met."""

    ttft_ms: float | None = Field(default=None, gt=0)
    e2e_ms: float | None = Field(default=None, gt=0)


Metric = Literal["decode_tps", "decode_tps_req", "prefill_tps", "ttft_ms", "ttft_p99_ms", "goodput",
                 "output_tps", "capacity"]


class Decides(StrictModel):
    """What a report's "when to use which topology" row compares for this test."""

    use: str  # e.g. "Chat", "RAG over 8k documents"
    metric: Metric
    at: str | None = None  # the load label it is read at (e.g. c10); None: the test's highest load


class WorkloadTest(StrictModel):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    title: str = ""
    shape: Shape
    load: LoadSpec
    prompts: list[Annotated[int, Field(ge=1)]] | None = None  # run the shape at each of these prompt lengths
    slo: SLO | None = None
    decides: Decides | None = None

    @model_validator(mode="after")
    def _prompts_apply(self) -> WorkloadTest:
        if self.prompts is not None and not hasattr(self.shape, "prompt"):
            raise ValueError(f"`prompts` needs a shape with a prompt length; {self.shape.kind} has none")
        return self

    @property
    def open_loop(self) -> bool:
        return self.load.mode != "closed"


class Suite(StrictModel):
    name: str
    description: str = ""
    source: str = ""
    think_time_s: float = Field(default=30.0, gt=0)  # users = rate x think time (stated in the capacity table)
    tests: list[WorkloadTest] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Suite:
        ids = [t.id for t in self.tests]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"test ids must be unique; twice: {', '.join(twice)}")
        return self

    def test(self, test_id: str) -> WorkloadTest:
        for t in self.tests:
            if t.id == test_id:
                return t
        raise ConfigError(f"suite {self.name!r} has no test {test_id!r}; it has {', '.join(t.id for t in self.tests)}")

    def only(self, ids: Iterable[str]) -> Suite:
        wanted = [i.strip() for i in ids if i.strip()]
        if not wanted:
            return self
        picked = [self.test(i) for i in wanted]
        return self.model_copy(update={"tests": picked})

    def points(self) -> list[LoadPoint]:
        return [point for t in self.tests for point in test_points(t)]


# -- what one cell measures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPoint:
    """One cell of a workload test: the test, the load label (`c10`, `0.3rps`, `pp4096-c5`), the shape at
    that point and the load value (bench/workload.py)."""

    test: WorkloadTest
    label: str
    shape: Shape
    load: Load
    runs: int | None = None  # closed only: the test's own runs per point

    @property
    def workload(self) -> str:
        return self.test.id

    @property
    def open(self) -> OpenLoad | None:
        return self.load if isinstance(self.load, OpenLoad) else None

    @property
    def concurrency(self) -> int | None:
        return self.load.concurrency if isinstance(self.load, ClosedLoad) else None


def test_points(test: WorkloadTest) -> list[LoadPoint]:
    shapes: list[tuple[str, Shape]] = [("", test.shape)]
    if test.prompts:
        shapes = [(f"pp{p}-", test.shape.model_copy(update={"prompt": p})) for p in test.prompts]
    points: list[LoadPoint] = []
    load = test.load
    for prefix, shape in shapes:
        if isinstance(load, ClosedSpec):
            points += [LoadPoint(test, f"{prefix}c{c}", shape, ClosedLoad(c), runs=load.runs)
                       for c in load.concurrency]
        elif isinstance(load, OpenSpec):
            open_load = OpenLoad(load.rate, load.burstiness, load.requests, load.duration_s, load.max_concurrency,
                                 load.seed)
            points.append(LoadPoint(test, prefix + open_load.label, shape, open_load))
        else:
            for rate in load.rates:
                open_load = OpenLoad(rate, load.burstiness, load.min_requests, load.min_duration_s or None,
                                     load.max_concurrency, load.seed)
                points.append(LoadPoint(test, prefix + open_load.label, shape, open_load))
    return points


def load_suite(name_or_path: str | Path) -> Suite:
    path = resolve_config("workloads", str(name_or_path))
    return load_model(Suite, path)


def load_suites(spec: str, only: Sequence[str] = (), dataset: Path | str | None = None) -> Suite:
    """`--workload arena,default` (names or paths) merged into one suite; `--only` picks tests of it;
    `--dataset FILE` (a ShareGPT JSON) replaces the synthetic stand-in of every `sharegpt` shape."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ConfigError("--workload: give a suite name (e.g. arena) or a YAML path")
    suites = [load_suite(name) for name in names]
    merged = suites[0] if len(suites) == 1 else validate_model(Suite, {
        "name": "+".join(s.name for s in suites),
        "description": "; ".join(s.description for s in suites if s.description),
        "think_time_s": suites[0].think_time_s,
        "tests": [t.model_dump() for s in suites for t in s.tests]}, source=f"--workload {spec}")
    merged = merged.only(only)
    if dataset is not None:
        path = Path(dataset)
        if not path.is_file():
            raise ConfigError(f"--dataset {path}: no such file")
        tests = [t.model_copy(update={"shape": t.shape.model_copy(update={"dataset": path})})
                 if isinstance(t.shape, ShareGPTShape) else t for t in merged.tests]
        if tests == list(merged.tests):
            raise ConfigError(f"--dataset {path}: no test of {merged.name} has a sharegpt shape to use it")
        merged = merged.model_copy(update={"tests": tests})
    return merged
