""""When to use which topology": each row is derived from the measured cells, never written in advance.

A use case selects concurrency levels and a deciding metric. Every topology measured at all selected
levels is scored by its mean, over those levels, of value / best value at that level (for TTFT:
best / value), so each level weighs the same however large its absolute numbers are. Layouts compete, each
by its best-scoring executor; the margin is the mean over the levels of the winner's relative difference to
the best other layout. The winner table's rule decides (reports.tables.tie_reason): the winner's interval
must clear the runner-up's at every level and the margin must exceed `--margin`, else the row names both.
Within the chosen layout the executors are compared by the same rule ("Cluster TP=2 or Cluster TP=2 (Ray):
within 0.6%").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reports.names import display_name, layout_of
from reports.tables import (
    DECODE,
        PREFILL,
    TTFT,
    MetricSpec,
    WinnerTable,
    format_pct,
    format_value,
    relative_pct,
    tie_reason,
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


def why_text(why: str, margin_pct: float) -> str:
    """A tie's reason in words: "within 0.6%" when the difference is too small to matter."""
    if why.startswith("<"):
        pct = abs(margin_pct)
        return f"within {pct:.1f}%" if pct < 10 else f"within {pct:.0f}%"
    return f"{why} ({format_pct(margin_pct)})" if not math.isnan(margin_pct) else why


@dataclass(frozen=True)
class Recommendation:
    use_case: str
    levels: list[int]
    winner: str | None  # a topology: the winning layout with its better executor
    runner_up: str | None  # the best other layout's best executor
    margin_pct: float  # in the deciding metric, NaN when unopposed or uncovered
    tie: bool
    figures: dict[str, float]  # metric key -> the winner's mean over the levels
    metric: MetricSpec
    note: str = ""  # why there is no winner, or who was left out
    why: str = ""  # what made it a tie (tie_reason)
    executor_alternative: str | None = None  # the winning layout's other executor, when the two tie
    executor_margin_pct: float = math.nan
    executor_why: str = ""

    @property
    def range_text(self) -> str:
        return levels_text(self.levels)

    def choice(self) -> str:
        if self.winner is None:
            return "—"
        winner = display_name(self.winner)
        if self.executor_alternative is not None:
            winner = (f"{winner} or {display_name(self.executor_alternative)}: "
                      f"{why_text(self.executor_why, self.executor_margin_pct)}")
        if self.tie and self.runner_up is not None:
            if self.executor_alternative is not None:
                winner = f"({winner})"
            return f"{winner} or {display_name(self.runner_up)}: {why_text(self.why, self.margin_pct)}"
        return winner

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
            text += "; the only layout measured there"
        if self.note:
            text += f"; {self.note}"
        return text


def recommend(tables: dict[str, WinnerTable], use_cases: Sequence[UseCase] = USE_CASES,
              margin_pct: float | None = None) -> list[Recommendation]:
    """One Recommendation per use case from the winner tables of decode, prefill and TTFT (keyed by metric);
    the margin defaults to the tables' own."""
    return [_recommend_one(tables, use_case, margin_pct) for use_case in use_cases]


def _recommend_one(tables: dict[str, WinnerTable], use_case: UseCase, margin_pct: float | None) -> Recommendation:
    deciding = tables[use_case.metric.key]
    margin_pct = deciding.margin_pct if margin_pct is None else margin_pct
    higher = use_case.metric.higher_is_better
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
    ranked = sorted(covering, key=lambda t: -scores[t])  # stable: equal scores keep the display order
    by_layout: dict[str, list[str]] = {}
    for topology in ranked:
        by_layout.setdefault(layout_of(topology), []).append(topology)
    contenders = [variants[0] for variants in by_layout.values()]  # each layout by its best executor
    winner = contenders[0]
    runner = contenders[1] if len(contenders) > 1 else None
    figures = {
        spec.key: _mean_over(tables[spec.key], winner, levels) for spec in (DECODE, PREFILL, TTFT)
    }

    def compare(best: str, other: str) -> tuple[float, str]:
        pairs = [(deciding.cell(best, c), deciding.cell(other, c)) for c in levels]
        margin = sum(relative_pct(a.mean, b.mean) for a, b in pairs) / len(levels)  # type: ignore[union-attr]
        return margin, tie_reason(pairs, margin, higher, margin_pct)  # type: ignore[arg-type]

    margin, why = compare(winner, runner) if runner is not None else (math.nan, "")
    alternative, executor_margin, executor_why = None, math.nan, ""
    same_layout = by_layout[layout_of(winner)]
    if len(same_layout) > 1:
        executor_margin, executor_why = compare(winner, same_layout[1])
        if executor_why:
            alternative = same_layout[1]
    note = ""
    if left_out:
        names = ", ".join(display_name(t) for t in left_out)
        note = f"not compared: {names} (not measured at every level of {levels_text(levels)})"
    return Recommendation(use_case.title, levels, winner, runner, margin, bool(why), figures, use_case.metric, note,
                          why, alternative, executor_margin, executor_why)


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
