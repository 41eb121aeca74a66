""""When to use which topology": each row is derived from the measured cells, never written in advance.

A use case selects concurrency levels and a deciding metric. Every topology measured at all selected
levels is scored by its mean, over those levels, of value / best value at that level (for TTFT:
best / value), so each level weighs the same however large its absolute numbers are. The best score wins;
the margin is the mean over the levels of the winner's relative difference to the runner-up, and the row
is a tie when their spreads overlap (reports.tables.spreads_overlap) at every selected level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reports.names import display_name
from reports.tables import (
    DECODE,
    PREFILL,
    TTFT,
    MetricSpec,
    WinnerTable,
    format_pct,
    format_value,
    relative_pct,
    spreads_overlap,
)

LevelSelector = Callable[[Sequence[int]], list[int]]


@dataclass(frozen=True)
class UseCase:
    title: str
    levels_label: str  # what the selector means, for when it selects nothing
    select: LevelSelector
    metric: MetricSpec


def _between(low: int, high: int) -> LevelSelector:
    return lambda levels: [c for c in levels if low <= c <= high]


def _highest(levels: Sequence[int]) -> list[int]:
    return [max(levels)] if levels else []


def _at_least(low: int) -> LevelSelector:
    return lambda levels: [c for c in levels if c >= low]


USE_CASES: tuple[UseCase, ...] = (
    UseCase("Single user / low latency", "c1–c4", _between(1, 4), DECODE),
    UseCase("Moderate concurrency", "c8–c32", _between(8, 32), DECODE),
    UseCase("Maximum throughput", "the highest concurrency", _highest, DECODE),
    UseCase("Prefill-heavy (long prompts)", "all levels", lambda levels: list(levels), PREFILL),
    UseCase("Latency-sensitive at scale", "c16 and above", _at_least(16), TTFT),
)


def levels_text(levels: Sequence[int]) -> str:
    if not levels:
        return "no levels"
    if len(levels) == 1:
        return f"c{levels[0]}"
    return f"c{levels[0]}–c{levels[-1]}"


@dataclass(frozen=True)
class Recommendation:
    use_case: str
    levels: list[int]
    winner: str | None
    runner_up: str | None
    margin_pct: float  # in the deciding metric, NaN when unopposed or uncovered
    tie: bool
    figures: dict[str, float]  # metric key -> the winner's mean over the levels
    metric: MetricSpec
    note: str = ""  # why there is no winner, or who was left out

    @property
    def range_text(self) -> str:
        return levels_text(self.levels)

    def choice(self) -> str:
        if self.winner is None:
            return "—"
        if self.tie and self.runner_up is not None:
            return f"{display_name(self.winner)} or {display_name(self.runner_up)} (within noise)"
        return display_name(self.winner)

    def evidence(self) -> str:
        """The figures the choice rests on, as one sentence fragment."""
        if self.winner is None:
            return self.note
        parts = [
            f"decode {format_value(self.figures[DECODE.key])} t/s",
            f"prefill {format_value(self.figures[PREFILL.key])} t/s",
            f"TTFT {format_value(self.figures[TTFT.key])} ms",
        ]
        where = f"mean over {self.range_text}" if len(self.levels) > 1 else f"at {self.range_text}"
        text = f"{', '.join(parts)} ({where})"
        if self.runner_up is not None and not math.isnan(self.margin_pct):
            text += f"; {format_pct(self.margin_pct)} {self.metric.short} vs {display_name(self.runner_up)}"
        elif self.runner_up is None:
            text += "; the only topology measured there"
        if self.note:
            text += f"; {self.note}"
        return text


def recommend(tables: dict[str, WinnerTable], use_cases: Sequence[UseCase] = USE_CASES) -> list[Recommendation]:
    """One Recommendation per use case from the winner tables of decode, prefill and TTFT (keyed by metric)."""
    return [_recommend_one(tables, use_case) for use_case in use_cases]


def _recommend_one(tables: dict[str, WinnerTable], use_case: UseCase) -> Recommendation:
    deciding = tables[use_case.metric.key]
    all_levels = [row.concurrency for row in deciding.rows]
    levels = use_case.select(all_levels)

    def empty(note: str) -> Recommendation:
        return Recommendation(use_case.title, levels, None, None, math.nan, False, {}, use_case.metric, note)

    if not levels:
        return empty(f"not covered: the sweep measured no level in {use_case.levels_label}")
    covering = [
        t for t in deciding.topologies
        if all((cell := deciding.cell(t, c)) is not None and cell.has_value for c in levels)
    ]
    left_out = [t for t in deciding.topologies if t not in covering]
    if not covering:
        return empty(f"not covered: no topology was measured at every level of {levels_text(levels)}")

    scores = {t: _score(deciding, t, levels) for t in covering}
    ranked = sorted(covering, key=lambda t: -scores[t])
    winner = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    figures = {
        spec.key: _mean_over(tables[spec.key], winner, levels) for spec in (DECODE, PREFILL, TTFT)
    }
    margin, tie = math.nan, False
    if runner is not None:
        margin = sum(relative_pct(deciding.cell(winner, c).mean, deciding.cell(runner, c).mean) for c in levels)
        margin /= len(levels)
        tie = all(spreads_overlap(deciding.cell(winner, c), deciding.cell(runner, c)) for c in levels)
    note = ""
    if left_out:
        names = ", ".join(display_name(t) for t in left_out)
        note = f"not compared: {names} (not measured at every level of {levels_text(levels)})"
    return Recommendation(use_case.title, levels, winner, runner, margin, tie, figures, use_case.metric, note)


def _score(table: WinnerTable, topology: str, levels: Sequence[int]) -> float:
    ratios = []
    for c in levels:
        values = [cell.mean for t in table.topologies if (cell := table.cell(t, c)) is not None and cell.has_value]
        mine = table.cell(topology, c).mean
        best = max(values) if table.metric.higher_is_better else min(values)
        if table.metric.higher_is_better:
            ratios.append(mine / best if best > 0 else 0.0)
        else:
            ratios.append(best / mine if mine > 0 else 0.0)
    return sum(ratios) / len(ratios)


def _mean_over(table: WinnerTable, topology: str, levels: Sequence[int]) -> float:
    values = [cell.mean for c in levels if (cell := table.cell(topology, c)) is not None and cell.has_value]
    return sum(values) / len(values) if values else math.nan
