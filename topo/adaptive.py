"""When an adaptive sweep (`--runs auto`) stops measuring a cell: pure, so the rule is tested without a cluster.

A cell is measured run after run (after its warm-up) and stops at the first of:

- **precise**: the 95% interval (bench/stats.py) of every headline metric is narrower than ±precision of
  its mean;
- **settled**: for every headline metric, the call against the best cell already measured at this load
  level (the other topologies measured before this one) would not change with more runs
  (reports.tables.settled: a clear win or loss by the winner tables' rule, or a difference that stays
  under the margin across both intervals);
- **max runs**.

It takes at least MIN_RUNS runs: one batch shows the noise inside it, never the drift between batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from common.errors import ConfigError
from reports.names import display_name
from reports.tables import DEFAULT_MARGIN_PCT, METRICS, better, cell_stat, settled

MIN_RUNS = 2
DEFAULT_PRECISION_PCT = 5.0
DEFAULT_MAX_RUNS = 10


@dataclass(frozen=True)
class AdaptivePolicy:
    precision_pct: float = DEFAULT_PRECISION_PCT  # stop when every interval is narrower than ± this % of the mean
    margin_pct: float = DEFAULT_MARGIN_PCT  # the winner tables' margin: what "settled" means
    max_runs: int = DEFAULT_MAX_RUNS

    def __post_init__(self) -> None:
        if not self.precision_pct > 0:
            raise ConfigError(f"--precision must be a positive percentage (got {self.precision_pct})")
        if self.margin_pct < 0:
            raise ConfigError(f"--margin must not be negative (got {self.margin_pct})")
        if self.max_runs < MIN_RUNS:
            raise ConfigError(f"--max-runs must be at least {MIN_RUNS} (got {self.max_runs})")


def stop_reason(topology: str, rows: Sequence[Mapping[str, Any]], rivals: Mapping[str, Sequence[Mapping[str, Any]]],
                policy: AdaptivePolicy) -> str | None:
    """Why the cell of `topology` (its run rows so far) is done, or None to measure another run.

    `rivals`: topology -> run rows of the other cells measured at the same level so far."""
    runs = len(rows)
    if runs >= policy.max_runs:
        return f"max runs: {runs}"
    if runs < MIN_RUNS:
        return None
    frame = pd.DataFrame(list(rows))
    concurrency = int(frame["concurrency"].iloc[0])
    mine = {m.key: cell_stat(frame, topology, concurrency, m) for m in METRICS}
    widths = [mine[m.key].interval.relative_half_width for m in METRICS]
    if all(w <= policy.precision_pct / 100 for w in widths):
        return f"precise: ±{max(widths) * 100:.1f}% after {runs} runs"
    measured = {name: pd.DataFrame(list(rival)) for name, rival in rivals.items() if rival}
    if not measured:
        return None
    against = set()
    for metric in METRICS:
        stats = [cell_stat(rival, name, concurrency, metric) for name, rival in measured.items()]
        best = better(stats, metric.higher_is_better)
        if best is None or not settled(mine[metric.key], best, metric.higher_is_better, policy.margin_pct):
            return None
        against.add(best.topology)
    return f"settled against {', '.join(sorted(display_name(t) for t in against))} after {runs} runs"
