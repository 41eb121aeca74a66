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


# Every load shape; the union grows when a shape is added (OpenLoad, ...).
Load = ClosedLoad

_CLOSED_LABEL = re.compile(r"c(\d+)")


def parse_load(label: str) -> Load:
    """A stored label back to its load value (`c4` -> ClosedLoad(4))."""
    match = _CLOSED_LABEL.fullmatch(label.strip())
    if match:
        return ClosedLoad(int(match.group(1)))
    raise ConfigError(f"load {label!r}: expected a closed load such as c4")


def closed_label(concurrency: int) -> str:
    """The label of a closed load of `concurrency` (what rows written before the load column carry)."""
    return ClosedLoad(int(concurrency)).label
