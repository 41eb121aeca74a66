"""Per-cell statistics, winner tables and the Ray vs no-Ray comparison, computed from cells.parquet rows.

Everything here is pure: DataFrame in, small frozen dataclasses out. Rendering (Markdown, HTML, terminal)
lives elsewhere and only formats these objects, so a sweep, `topo predict` and `topo report` print the
same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.records import REQUIRED_CELL_COLUMNS
from bench.results_folder import fill_load_keys
from common.errors import ResultsError
from bench.stats import Interval, Method, bound_columns, cell_interval
from reports.names import BASELINE_TOPOLOGY, display_name, layout_display_name, layouts, ray_pairs

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
    """One topology at one concurrency for one metric: mean, population std over runs, and the 95% interval."""

    topology: str
    concurrency: int
    mean: float  # NaN when no run produced a value (every request failed)
    std: float
    runs: int  # runs with a value
    failed: int  # failed requests over all runs of the cell
    requests: int  # requests sent over all runs of the cell (0 when unknown)
    lo: float = math.nan  # 95% interval (bench/stats.py); NaN bounds: no interval (one value only)
    hi: float = math.nan
    method: Method = "none"

    @property
    def has_value(self) -> bool:
        return not math.isnan(self.mean)

    @property
    def interval(self) -> Interval:
        return Interval(self.mean, self.lo, self.hi, self.runs, self.method)


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
    bounds = [column for m in METRICS for column in bound_columns(m.key)]
    numeric = [c for c in ("concurrency", "run", "decode_tps", "prefill_tps", "ttft_ms", "peak_tps",
                           "requests", "failed", "max_send_lag_ms", *bounds) if c in typed.columns]
    for column in numeric:
        try:
            typed[column] = pd.to_numeric(typed[column], errors="raise")
        except (ValueError, TypeError) as exc:
            raise ResultsError(f"{source}: column {column!r} must be numeric ({exc})") from exc
    if typed["concurrency"].isna().any() or (typed["concurrency"] < 1).any():
        raise ResultsError(f"{source}: column 'concurrency' must be a positive integer in every row")
    typed["concurrency"] = typed["concurrency"].astype(int)
    return fill_load_keys(typed)


def cell_stat(rows: pd.DataFrame, topology: str, concurrency: int, metric: MetricSpec | str) -> CellStat:
    """One cell's runs (`rows`) of a metric (a MetricSpec or a cells.parquet column): mean, population std
    and the 95% interval (bench.stats.cell_interval: over runs, or one run's own bounds)."""
    key = metric if isinstance(metric, str) else metric.key
    values = pd.to_numeric(rows[key], errors="coerce").to_numpy(dtype=float)
    lo_key, hi_key = bound_columns(key)
    run_lo = rows[lo_key].to_numpy(dtype=float) if lo_key in rows else np.full(values.size, np.nan)
    run_hi = rows[hi_key].to_numpy(dtype=float) if hi_key in rows else np.full(values.size, np.nan)
    interval = cell_interval(list(values), list(run_lo), list(run_hi))
    finite = values[~np.isnan(values)]
    failed = int(rows["failed"].fillna(0).sum()) if "failed" in rows else 0
    requests = int(rows["requests"].fillna(0).sum()) if "requests" in rows else 0
    if finite.size == 0:
        return CellStat(topology, concurrency, math.nan, math.nan, 0, failed, requests)
    # population std (ddof=0), as llama-benchy reports it
    return CellStat(topology, concurrency, float(finite.mean()), float(finite.std(ddof=0)), int(finite.size),
                    failed, requests, interval.lo, interval.hi, interval.method)


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


def clears(best: CellStat, other: CellStat, higher_is_better: bool) -> bool:
    """Is `best`'s 95% interval entirely on the better side of `other`'s (no overlap, not touching)?
    Without an interval on either side nothing is cleared: one value cannot show it is not noise."""
    if not (best.interval.known and other.interval.known):
        return False
    return best.lo > other.hi if higher_is_better else best.hi < other.lo


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


DEFAULT_MARGIN_PCT = 3.0  # a difference smaller than this does not matter in practice (`--margin`)


@dataclass(frozen=True)
class Verdict:
    """Who wins one comparison (a row of a winner table, a Ray vs no-Ray call).

    Rule (the only one; recommendations and the adaptive sweep use it too): rank the contenders by mean
    (highest for throughput, lowest for TTFT). The best WINS only when its 95% interval clears the
    runner-up's (reports.tables.clears) AND the difference exceeds the practical margin
    (|(best - runner_up) / runner_up| > margin_pct); otherwise the comparison is a TIE that names both.
    The margin is relative to the runner-up, so it is positive for throughput and negative for TTFT. A
    lone contender wins unopposed.
    """

    winner: str
    runner_up: str | None
    margin_pct: float  # NaN when unopposed
    tie: bool
    why: str = ""  # what made it a tie: "intervals overlap", "< 3%", "no interval"
    winner_name: str = ""  # how the winner / runner-up are shown (a topology's or a layout's name)
    runner_up_name: str = ""

    def label(self) -> str:
        winner = self.winner_name or display_name(self.winner)
        if self.runner_up is None:
            return f"{winner} (only one)"
        runner = self.runner_up_name or display_name(self.runner_up)
        if self.tie:
            return f"tie: {winner} or {runner} ({format_pct(self.margin_pct)}, {self.why})"
        return f"{winner} ({format_pct(self.margin_pct)})"


def decide(stats: Sequence[CellStat], higher_is_better: bool, margin_pct: float = DEFAULT_MARGIN_PCT,
           name: Callable[[str], str] = display_name) -> Verdict | None:
    """The Verdict over the given cells (one per contender, same concurrency); None when none has a value."""
    contenders = [s for s in stats if s.has_value]
    if not contenders:
        return None
    # ties on the mean keep the display order (stable sort)
    ranked = sorted(contenders, key=lambda s: -s.mean if higher_is_better else s.mean)
    best = ranked[0]
    if len(ranked) == 1:
        return Verdict(best.topology, None, math.nan, False, winner_name=name(best.topology))
    runner = ranked[1]
    margin = relative_pct(best.mean, runner.mean)
    why = tie_reason([(best, runner)], margin, higher_is_better, margin_pct)
    return Verdict(best.topology, runner.topology, margin, bool(why), why, name(best.topology), name(runner.topology))


def tie_reason(pairs: Sequence[tuple[CellStat, CellStat]], margin: float, higher_is_better: bool,
               margin_pct: float) -> str:
    """Why (best, runner-up) is a tie, or "" when the best wins: its interval must clear the runner-up's at
    every compared level and the (mean) margin must exceed `margin_pct`. The rule of Verdict's docstring."""
    if not abs(margin) > margin_pct:
        return f"< {margin_pct:g}%"
    if not all(a.interval.known and b.interval.known for a, b in pairs):
        return "no interval"
    if not all(clears(a, b, higher_is_better) for a, b in pairs):
        return "intervals overlap"
    return ""


def settled(a: CellStat, b: CellStat, higher_is_better: bool, margin_pct: float = DEFAULT_MARGIN_PCT) -> bool:
    """Would more runs change the call between a and b? No when one wins by the rule (its interval clears
    the other's and the means differ by more than the margin), nor when even the intervals' far ends
    differ by less than the margin (a tie that matters to nobody). The adaptive sweep stops on it."""
    if not (a.has_value and b.has_value and a.interval.known and b.interval.known):
        return False
    best, other = (a, b) if (a.mean >= b.mean) == higher_is_better else (b, a)
    if not tie_reason([(best, other)], relative_pct(best.mean, other.mean), higher_is_better, margin_pct):
        return True
    widest = max(abs(relative_pct(a.hi, b.lo)), abs(relative_pct(a.lo, b.hi)))
    return widest < margin_pct


@dataclass(frozen=True)
class WinnerRow:
    concurrency: int
    cells: dict[str, CellStat]  # layout -> its better executor's cell at this level (the one compared)
    verdict: Verdict | None  # between layouts
    vs_solo: dict[str, float]  # layout -> % vs solo (NaN when either is missing); solo itself excluded
    topology_cells: dict[str, CellStat] = field(default_factory=dict)  # every topology measured here


@dataclass(frozen=True)
class WinnerTable:
    """A metric's winner table: layouts compared level by level, each by its better executor there."""

    metric: MetricSpec
    layouts: dict[str, list[str]]  # layout -> its topologies (executor variants), display order
    rows: list[WinnerRow]
    margin_pct: float = DEFAULT_MARGIN_PCT

    @property
    def topologies(self) -> list[str]:
        return [t for variants in self.layouts.values() for t in variants]

    def layout_title(self, layout: str) -> str:
        return layout_display_name(self.layouts[layout][0])

    @property
    def vs_solo_layouts(self) -> list[str]:
        if BASELINE_TOPOLOGY not in self.layouts:
            return []
        return [layout for layout in self.layouts if layout != BASELINE_TOPOLOGY]

    def row(self, concurrency: int) -> WinnerRow | None:
        return next((row for row in self.rows if row.concurrency == concurrency), None)

    def cell(self, topology: str, concurrency: int) -> CellStat | None:
        """A topology's own cell (not its layout's representative)."""
        row = self.row(concurrency)
        return row.topology_cells.get(topology) if row else None

    def layout_cell(self, layout: str, concurrency: int) -> CellStat | None:
        row = self.row(concurrency)
        return row.cells.get(layout) if row else None


def better(stats: Sequence[CellStat], higher_is_better: bool) -> CellStat | None:
    """The cell with the best mean (the first in the given order on equal means); None if none has a value."""
    valued = [s for s in stats if s.has_value]
    if not valued:
        return None
    return max(valued, key=lambda s: s.mean) if higher_is_better else min(valued, key=lambda s: s.mean)


def winner_table(cells: pd.DataFrame, metric: MetricSpec, margin_pct: float = DEFAULT_MARGIN_PCT) -> WinnerTable:
    stats = summarize(cells, metric)
    grouped = layouts(t for t, _ in stats)
    topologies = [t for variants in grouped.values() for t in variants]
    rows = []
    for concurrency in sorted({c for _, c in stats}):
        present = {t: stats[(t, concurrency)] for t in topologies if (t, concurrency) in stats}
        representatives: dict[str, CellStat] = {}
        for layout, variants in grouped.items():
            measured = [present[t] for t in variants if t in present]
            if measured:
                representatives[layout] = better(measured, metric.higher_is_better) or measured[0]
        verdict = decide(list(representatives.values()), metric.higher_is_better, margin_pct, name=layout_display_name)
        solo = representatives.get(BASELINE_TOPOLOGY)
        vs_solo = {
            layout: relative_pct(s.mean, solo.mean) if solo is not None else math.nan
            for layout, s in representatives.items() if layout != BASELINE_TOPOLOGY
        }
        rows.append(WinnerRow(concurrency, representatives, verdict, vs_solo, present))
    return WinnerTable(metric, grouped, rows, margin_pct)


@dataclass(frozen=True)
class RayRow:
    concurrency: int
    ray: dict[str, CellStat | None]  # metric key -> cell
    no_ray: dict[str, CellStat | None]
    gain_pct: dict[str, float]  # metric key -> (ray - no-ray) / no-ray in %; for TTFT negative = Ray faster
    verdict: dict[str, Verdict | None] = field(default_factory=dict)  # metric key -> Ray vs no-Ray, same rule


@dataclass(frozen=True)
class RayTable:
    ray_topology: str
    no_ray_topology: str
    rows: list[RayRow] = field(default_factory=list)


def ray_tables(cells: pd.DataFrame, margin_pct: float = DEFAULT_MARGIN_PCT) -> list[RayTable]:
    """One table per (X-ray, X-mp) pair present in the cells: the executor choice, decided by the same rule."""
    stats = {m.key: summarize(cells, m) for m in METRICS}
    tables = []
    for ray, no_ray in ray_pairs(cells["topology"].unique()):
        concurrencies = sorted({c for (t, c) in stats[DECODE.key] if t in (ray, no_ray)})
        rows = []
        for concurrency in concurrencies:
            ray_cells = {m.key: stats[m.key].get((ray, concurrency)) for m in METRICS}
            mp_cells = {m.key: stats[m.key].get((no_ray, concurrency)) for m in METRICS}
            gain, verdicts = {}, {}
            for m in METRICS:
                mine, other = ray_cells[m.key], mp_cells[m.key]
                both = [s for s in (other, mine) if s is not None]
                gain[m.key] = relative_pct(mine.mean, other.mean) if mine is not None and other is not None else math.nan
                verdicts[m.key] = decide(both, m.higher_is_better, margin_pct) if len(both) == 2 else None
            rows.append(RayRow(concurrency, ray_cells, mp_cells, gain, verdicts))
        tables.append(RayTable(ray, no_ray, rows))
    return tables


def frontier_points(cells: pd.DataFrame) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """workload -> topology -> (concurrency, tokens/s per user, total tokens/s) per load level, mean over runs.

    Per user = the mean per-request decode t/s (what one user's stream sees); total = decode t/s over the
    batch. Folders without a `workload` column are one workload."""
    needed = {"decode_tps", "decode_tps_req"}
    if not needed <= set(cells.columns):
        return {}
    workloads = cells["workload"].astype(str) if "workload" in cells.columns else pd.Series("", index=cells.index)
    out: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    for (workload, topology, concurrency), rows in cells.groupby([workloads, "topology", "concurrency"], sort=True):
        per_user, total = rows["decode_tps_req"].mean(), rows["decode_tps"].mean()
        if math.isnan(per_user) or math.isnan(total):
            continue
        out.setdefault(str(workload), {}).setdefault(str(topology), []).append((int(concurrency), float(per_user),
                                                                                float(total)))
    return out
