"""The load as a value: what shape of load a cell puts on the server, with a stable label the results key on.

A cell is (topology, workload, load): `workload` names the request shape (today only `default`: the
sweep's pp/tg prompts, stored in meta.json's spec) and `load` is a label such as `c4`. The label is what
requests.parquet and cells.parquet store and what every groupby keys on, so a new load shape is a new
class here with its own label (an open-loop `OpenLoad` would label itself e.g. `r2.5`); no column and no
key changes.

    ClosedLoad(4).label == "c4"        parse_load("c4") == ClosedLoad(4)

A closed load is llama-benchy's: batches of exactly c requests sent at once, the next batch after the
last request of the previous one finished (docs/METRICS.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from common.errors import ConfigError

DEFAULT_WORKLOAD = "default"  # the request shape of `topo sweep` / `topo bench`: pp prompt, tg generated tokens


@dataclass(frozen=True, order=True)
class ClosedLoad:
    """Closed batches of exactly `concurrency` requests."""

    concurrency: int
    kind: ClassVar[str] = "closed"

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"a closed load needs a concurrency of at least 1 (got {self.concurrency!r})")

    @property
    def label(self) -> str:
        return f"c{self.concurrency}"

    @property
    def requests_per_run(self) -> int:
        return self.concurrency

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class OpenLoad:
    """Open loop (`vllm bench serve`'s rate mode): gamma arrivals at `rate` req/s with shape `burstiness`
    (bench/arrivals.py), `requests` and/or `duration_s` of arrivals, at most `max_concurrency` in flight."""

    rate: float
    burstiness: float = 1.0
    requests: int | None = None
    duration_s: float | None = None
    max_concurrency: int | None = None
    seed: int = 42  # the Arena's (and `vllm bench serve`'s usual) seed
    kind: ClassVar[str] = "open"

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ConfigError(f"an open load needs a rate above 0 req/s (got {self.rate!r})")
        if self.requests is None and self.duration_s is None:
            raise ConfigError("an open load needs a number of requests or a duration")

    @property
    def label(self) -> str:
        return rate_label(self.rate)

    def __str__(self) -> str:
        return self.label

    def schedule(self) -> tuple[float, ...]:
        from bench.arrivals import ArrivalProcess

        return ArrivalProcess(self.rate, self.burstiness).schedule(count=self.requests, duration=self.duration_s,
                                                                   seed=self.seed)

    def scaled(self, factor: float) -> OpenLoad:
        """The same load `factor` times faster (rate x f, durations / f): for a twin profile sped up by f."""
        return OpenLoad(self.rate * factor, self.burstiness, self.requests,
                        self.duration_s / factor if self.duration_s else None, self.max_concurrency, self.seed)


def rate_label(rate: float) -> str:
    return f"{rate:g}rps"


# Every load shape: a cell's load is one of these.
Load = ClosedLoad | OpenLoad

_CLOSED_LABEL = re.compile(r"c(\d+)")
_RATE_LABEL = re.compile(r"(\d+(?:\.\d+)?)rps")


def parse_load(label: str) -> Load:
    """A stored label back to its load value (`c4` -> ClosedLoad(4); `1.5rps` -> an OpenLoad of 1.5 req/s
    whose other settings are in the suite that meta.json stores)."""
    match = _CLOSED_LABEL.fullmatch(label.strip())
    if match:
        return ClosedLoad(int(match.group(1)))
    match = _RATE_LABEL.fullmatch(label.strip())
    if match:
        return OpenLoad(float(match.group(1)), requests=1)
    raise ConfigError(f"load {label!r}: expected a closed load such as c4 or a rate such as 1.5rps")


def closed_label(concurrency: int) -> str:
    """The label of a closed load of `concurrency` (what rows written before the load column carry)."""
    return ClosedLoad(int(concurrency)).label
