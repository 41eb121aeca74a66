"""Per-cell statistics, winner tables and the Ray vs no-Ray comparison, computed from cells.parquet rows.

Everything here is pure: DataFrame in, small frozen dataclasses out. Rendering (Markdown, HTML, terminal)
lives elsewhere and only formats these objects, so a sweep, `topo predict` and `topo report` print the
same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.records import REQUIRED_CELL_COLUMNS
from bench.results_folder import fill_load_keys
from common.errors import ResultsError
from reports.names import BASELINE_TOPOLOGY, display_name, ordered_topologies, ray_pairs

# cells columns a report cannot do without; the others of CELL_COLUMNS are used when present.
REQUIRED_COLUMNS: tuple[str, ...] = REQUIRED_CELL_COLUMNS


@dataclass(frozen=True)
class MetricSpec:
    key: str  # column of cells.parquet
    title: str
    unit: str
    higher_is_better: bool
    description: str
    short: str  # inside a sentence: "+12% decode vs Solo"


DECODE = MetricSpec("decode_tps", "Decode", "t/s", True, "decode throughput, t/s (total over the batch)", "decode")
PREFILL = MetricSpec("prefill_tps", "Prefill", "t/s", True, "prefill throughput, t/s (total over the batch)", "prefill")
TTFT = MetricSpec("ttft_ms", "TTFT", "ms", False, "mean time to first token, ms", "TTFT")
METRICS: tuple[MetricSpec, ...] = (DECODE, PREFILL, TTFT)


@dataclass(frozen=True)
class CellStat:
    """One topology at one concurrency for one metric: mean and population std over its runs."""

    topology: str
    concurrency: int
    mean: float  # NaN when no run produced a value (every request failed)
    std: float
    runs: int  # runs with a value
    failed: int  # failed requests over all runs of the cell
    requests: int  # requests sent over all runs of the cell (0 when unknown)

    @property
    def has_value(self) -> bool:
        return not math.isnan(self.mean)

    @property
    def low(self) -> float:
        return self.mean - self.std

    @property
    def high(self) -> float:
        return self.mean + self.std


def validate_cells(cells: pd.DataFrame, source: str = "cells") -> pd.DataFrame:
    """The cells with the required columns, typed, keyed by load; ResultsError naming what is missing or
    malformed. Rows without the workload/load keys (older tables) are closed loads of the default workload."""
    missing = [column for column in REQUIRED_COLUMNS if column not in cells.columns]
    if missing:
        raise ResultsError(
            f"{source}: missing column(s) {', '.join(missing)}; a cells table needs {', '.join(REQUIRED_COLUMNS)} "
            f"(found: {', '.join(map(str, cells.columns)) or 'no columns'})"
        )
    if cells.empty:
        raise ResultsError(f"{source}: has no rows, so there is nothing to report")
    typed = cells.copy()
    typed["topology"] = typed["topology"].astype(str)
    numeric = [c for c in ("concurrency", "run", "decode_tps", "prefill_tps", "ttft_ms", "peak_tps",
                           "requests", "failed", "max_send_lag_ms") if c in typed.columns]
    for column in numeric:
        try:
            typed[column] = pd.to_numeric(typed[column], errors="raise")
        except (ValueError, TypeError) as exc:
            raise ResultsError(f"{source}: column {column!r} must be numeric ({exc})") from exc
    if typed["concurrency"].isna().any() or (typed["concurrency"] < 1).any():
        raise ResultsError(f"{source}: column 'concurrency' must be a positive integer in every row")
    typed["concurrency"] = typed["concurrency"].astype(int)
    return fill_load_keys(typed)


def cell_stat(rows: pd.DataFrame, topology: str, concurrency: int, metric: MetricSpec) -> CellStat:
    values = rows[metric.key].to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    failed = int(rows["failed"].fillna(0).sum()) if "failed" in rows else 0
    requests = int(rows["requests"].fillna(0).sum()) if "requests" in rows else 0
    if values.size == 0:
        return CellStat(topology, concurrency, math.nan, math.nan, 0, failed, requests)
    # population std (ddof=0), as llama-benchy reports it
    return CellStat(topology, concurrency, float(values.mean()), float(values.std(ddof=0)), int(values.size),
                    failed, requests)


def summarize(cells: pd.DataFrame, metric: MetricSpec) -> dict[tuple[str, int], CellStat]:
    """CellStat per (topology, concurrency) present in the cells."""
    stats = {}
    for (topology, concurrency), rows in cells.groupby(["topology", "concurrency"], sort=True):
        stats[(str(topology), int(concurrency))] = cell_stat(rows, str(topology), int(concurrency), metric)
    return stats


def relative_pct(value: float, reference: float) -> float:
    """(value - reference) / reference in percent; NaN when the reference is zero or missing."""
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return math.nan
    return (value - reference) / reference * 100.0


def spreads_overlap(a: CellStat, b: CellStat) -> bool:
    """Do the closed intervals [mean - std, mean + std] of the two cells intersect (touching counts)?"""
    return a.low <= b.high and b.low <= a.high


def format_value(value: float) -> str:
    """Whole numbers from 100 up, one decimal below (38.7 t/s, 4807 t/s, 223 ms)."""
    if math.isnan(value):
        return "—"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def format_pct(pct: float) -> str:
    """`+50%`, `-23%`; one decimal below 10% so a small gap is not rounded to `+0%`."""
    if math.isnan(pct):
        return "—"
    if abs(pct) < 0.05:
        return "0.0%"  # not "-0.0%"
    return f"{pct:+.1f}%" if abs(pct) < 10 else f"{pct:+.0f}%"


@dataclass(frozen=True)
class Verdict:
    """Who wins one row of a winner table.

    Rule: among the topologies with a value at this concurrency, the best mean wins (highest for
    throughput, lowest for TTFT). The margin is relative to the runner-up (second best mean):
    ``(winner - runner_up) / runner_up``, so it is positive for throughput and negative for TTFT. The row
    is a tie when the winner's and the runner-up's spreads overlap, i.e. the closed intervals
    ``[mean - std, mean + std]`` (population std over runs) intersect; touching intervals count as a tie,
    and two single-run cells (std 0) tie only when their means are equal. A lone topology wins unopposed
    (no runner-up, no margin).
    """

    winner: str
    runner_up: str | None
    margin_pct: float  # NaN when unopposed
    tie: bool

    def label(self) -> str:
        if self.runner_up is None:
            return f"{display_name(self.winner)} (only one)"
        if self.tie:
            return f"{display_name(self.winner)} ≈ {display_name(self.runner_up)} (tie)"
        return f"{display_name(self.winner)} ({format_pct(self.margin_pct)})"


def decide(stats: Sequence[CellStat], higher_is_better: bool) -> Verdict | None:
    """The Verdict over the given cells (one per topology, same concurrency); None when none has a value."""
    contenders = [s for s in stats if s.has_value]
    if not contenders:
        return None
    # ties on the mean keep the display order (stable sort)
    ranked = sorted(contenders, key=lambda s: -s.mean if higher_is_better else s.mean)
    best = ranked[0]
    if len(ranked) == 1:
        return Verdict(best.topology, None, math.nan, False)
    runner = ranked[1]
    return Verdict(best.topology, runner.topology, relative_pct(best.mean, runner.mean),
                   spreads_overlap(best, runner))


@dataclass(frozen=True)
class WinnerRow:
    concurrency: int
    cells: dict[str, CellStat]  # topologies measured at this concurrency
    verdict: Verdict | None
    vs_solo: dict[str, float]  # topology -> % vs solo (NaN when either is missing); solo itself excluded


@dataclass(frozen=True)
class WinnerTable:
    metric: MetricSpec
    topologies: list[str]
    rows: list[WinnerRow]

    @property
    def vs_solo_topologies(self) -> list[str]:
        if BASELINE_TOPOLOGY not in self.topologies:
            return []
        return [t for t in self.topologies if t != BASELINE_TOPOLOGY]

    def cell(self, topology: str, concurrency: int) -> CellStat | None:
        for row in self.rows:
            if row.concurrency == concurrency:
                return row.cells.get(topology)
        return None


def winner_table(cells: pd.DataFrame, metric: MetricSpec) -> WinnerTable:
    stats = summarize(cells, metric)
    topologies = ordered_topologies(t for t, _ in stats)
    rows = []
    for concurrency in sorted({c for _, c in stats}):
        present = {t: stats[(t, concurrency)] for t in topologies if (t, concurrency) in stats}
        verdict = decide(list(present.values()), metric.higher_is_better)
        solo = present.get(BASELINE_TOPOLOGY)
        vs_solo = {
            t: relative_pct(s.mean, solo.mean) if solo is not None else math.nan
            for t, s in present.items() if t != BASELINE_TOPOLOGY
        }
        rows.append(WinnerRow(concurrency, present, verdict, vs_solo))
    return WinnerTable(metric, topologies, rows)


@dataclass(frozen=True)
class RayRow:
    concurrency: int
    ray: dict[str, CellStat | None]  # metric key -> cell
    no_ray: dict[str, CellStat | None]
    gain_pct: dict[str, float]  # metric key -> (ray - no-ray) / no-ray in %; for TTFT negative = Ray faster


@dataclass(frozen=True)
class RayTable:
    ray_topology: str
    no_ray_topology: str
    rows: list[RayRow] = field(default_factory=list)


def ray_tables(cells: pd.DataFrame) -> list[RayTable]:
    """One table per (X-ray, X-mp) pair present in the cells."""
    stats = {m.key: summarize(cells, m) for m in METRICS}
    tables = []
    for ray, no_ray in ray_pairs(cells["topology"].unique()):
        concurrencies = sorted({c for (t, c) in stats[DECODE.key] if t in (ray, no_ray)})
        rows = []
        for concurrency in concurrencies:
            ray_cells = {m.key: stats[m.key].get((ray, concurrency)) for m in METRICS}
            mp_cells = {m.key: stats[m.key].get((no_ray, concurrency)) for m in METRICS}
            gain = {
                m.key: relative_pct(ray_cells[m.key].mean, mp_cells[m.key].mean)
                if ray_cells[m.key] is not None and mp_cells[m.key] is not None else math.nan
                for m in METRICS
            }
            rows.append(RayRow(concurrency, ray_cells, mp_cells, gain))
        tables.append(RayTable(ray, no_ray, rows))
    return tables
