"""The statistics of the regression gate: compare two sweeps cell by cell, on the footing of the winner tables.

A cell is (topology, concurrency, metric); ``worse_pct`` is how much worse the current mean is, in percent
of the baseline mean (positive = worse: lower throughput, higher TTFT). A cell is judged by what its own
noise allows, never by a ratio of two means alone:

- **with history** (the cell's mean in at least ``min_history`` earlier sweeps of the same cluster): the
  sweep-to-sweep spread those sweeps have shown sets the cell's tolerance: one-sided
  ``t(1 - alpha / cells, n - 1) * s * sqrt(2)`` of the history's mean (the difference of two sweep means,
  each that noisy; alpha shared by the ``cells`` judged this way, so a night of 40 cells alarms by chance
  with probability alpha, not 40 times that), never below ``threshold``. A REGRESSION is ``worse_pct``
  above the tolerance, an IMPROVEMENT ``-worse_pct`` above it. So a cell that a busy machine (or a
  router's random split) moves by 10% night after night does not alarm at 10%, and says how much it could
  detect; a steady cell still alarms just above the threshold;
- **without history**, by the cells' 95% intervals (the default test, `intervals`, the same intervals the
  winner tables show): a REGRESSION is ``worse_pct > threshold`` *and* the current interval entirely on the
  worse side of the baseline's; a cell without an interval on a side is INCONCLUSIVE. On request, a
  one-sided test on the per-run values instead (Welch's t-test or Mann-Whitney U):
  ``worse_pct > threshold`` *and* ``p < alpha``, the same for improvements;
- when both samples (2+ runs each) have no spread at all (a deterministic twin), the difference of the
  means is exact: p is 0 when the means differ and 1 when they are equal;
- fewer than 2 runs on a side (Welch) leaves the cell INCONCLUSIVE: it is reported, it does not fail;
- a cell of the baseline absent from the current sweep is MISSING, a cell whose current runs have failed
  requests while the baseline's had none (or that has no value at all) is FAILED; both fail the gate, as
  a topology that no longer comes up or drops requests is what a nightly job exists to catch;
- a cell only in the current sweep is NEW (reported, passes).

Exit codes: 0 clean, 1 on any regression / missing / failed cell, 2 (RegressionInputError) when the two
sweeps cannot be compared at all.
"""

from __future__ import annotations

import math
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench.results_folder import FolderMeta, ResultsFolder, ran_differences
from bench.stats import Interval, cell_interval, t_quantile
from common.errors import RegressionInputError, ResultsError
from reports.names import display_name, ordered_topologies
from reports.display import DisplayTable, markdown_table
from reports.tables import DEFAULT_MARGIN_PCT, METRICS, MetricSpec, cell_stat, format_pct, validate_cells

TestName = Literal["intervals", "welch", "mannwhitney"]
TEST_NAMES: tuple[str, ...] = ("intervals", "welch", "mannwhitney")

# meta facts that must agree for two sweeps to be comparable at all (FolderMeta properties)
COMPARABLE_META_KEYS: tuple[str, ...] = ("model", "pp", "tg")


class Status(str, Enum):
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    INCONCLUSIVE = "inconclusive"
    MISSING = "missing"
    FAILED = "failed"
    NEW = "new"

    @property
    def fails_gate(self) -> bool:
        return self in (Status.REGRESSION, Status.MISSING, Status.FAILED)


@dataclass(frozen=True)
class RegressionPolicy:
    # a change smaller than this is never a regression, however settled: the winner tables' margin
    threshold_pct: float = DEFAULT_MARGIN_PCT
    alpha: float = 0.05  # one-sided: of the test, and of the history's tolerance
    test: TestName = "intervals"  # how a cell without history is judged
    metrics: tuple[MetricSpec, ...] = METRICS
    min_history: int = 3  # earlier sweeps of a cell before its own spread sets its tolerance

    def __post_init__(self) -> None:
        if not (self.threshold_pct >= 0 and math.isfinite(self.threshold_pct)):
            raise RegressionInputError(f"threshold must be a non-negative percentage (got {self.threshold_pct})")
        if not 0 < self.alpha < 1:
            raise RegressionInputError(f"alpha must be between 0 and 1 (got {self.alpha})")
        if self.test not in TEST_NAMES:
            raise RegressionInputError(f"test must be one of {', '.join(TEST_NAMES)} (got {self.test!r})")
        if self.min_history < 2:
            raise RegressionInputError(f"min_history must be at least 2 (got {self.min_history})")

    @property
    def test_name(self) -> str:
        return {"intervals": "95% intervals", "welch": "Welch's t-test", "mannwhitney": "Mann-Whitney U"}[self.test]


def parse_threshold(text: str | float) -> float:
    """The --threshold option: `5%` and `5` both mean five percent; `7.5%` works too."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", text)
    if not match:
        raise RegressionInputError(f"--threshold {text!r}: expected a percentage such as 5% or 7.5")
    return float(match.group(1))


@dataclass(frozen=True)
class CellComparison:
    topology: str
    concurrency: int
    metric: MetricSpec
    status: Status
    baseline: tuple[float, ...] = ()  # per-run values
    current: tuple[float, ...] = ()
    worse_pct: float = math.nan  # + = current is worse (slower / later), in % of the baseline mean
    p_worse: float = math.nan  # one-sided p-value for "current is worse"
    p_better: float = math.nan  # one-sided p-value for "current is better"
    baseline_failed: int = 0
    current_failed: int = 0
    reason: str = ""
    tolerance_pct: float = math.nan  # how much worse the cell may get before it regresses
    history_sweeps: int = 0  # earlier sweeps whose spread set the tolerance (0: the threshold did)

    @property
    def name(self) -> str:
        return f"{self.topology} c{self.concurrency} {self.metric.key}"

    @property
    def baseline_mean(self) -> float:
        return float(np.mean(self.baseline)) if self.baseline else math.nan

    @property
    def current_mean(self) -> float:
        return float(np.mean(self.current)) if self.current else math.nan

    @property
    def change_pct(self) -> float:
        """Signed change of the mean, (current - baseline) / baseline, as the winner tables print it."""
        if not self.baseline or not self.current or self.baseline_mean == 0:
            return math.nan
        return (self.current_mean - self.baseline_mean) / self.baseline_mean * 100.0


@dataclass(frozen=True)
class RegressionResult:
    policy: RegressionPolicy
    comparisons: list[CellComparison]
    baseline_label: str = "baseline"
    current_label: str = "current"
    notes: list[str] = field(default_factory=list)

    def with_status(self, *statuses: Status) -> list[CellComparison]:
        return [c for c in self.comparisons if c.status in statuses]

    @property
    def regressions(self) -> list[CellComparison]:
        return self.with_status(Status.REGRESSION)

    @property
    def improvements(self) -> list[CellComparison]:
        return self.with_status(Status.IMPROVEMENT)

    @property
    def failing(self) -> list[CellComparison]:
        return [c for c in self.comparisons if c.status.fails_gate]

    @property
    def exit_code(self) -> int:
        """0 clean, 1 when any cell fails the gate (unusable input raised RegressionInputError: exit 2)."""
        return 1 if self.failing else 0

    def counts(self) -> dict[Status, int]:
        return {status: len(self.with_status(status)) for status in Status}

    def summary(self) -> str:
        counts = self.counts()
        verdict = "FAIL" if self.exit_code else "PASS"
        parts = [f"{counts[s]} {s.value}" for s in Status if counts[s] and s is not Status.UNCHANGED]
        parts.append(f"{counts[Status.UNCHANGED]} unchanged")
        with_history = sum(1 for c in self.comparisons if c.history_sweeps)
        basis = f"{self.policy.test_name}, α = {self.policy.alpha:g}"
        if with_history:
            basis = (f"{with_history} cells by their history's spread (α = {self.policy.alpha:g} shared), "
                     f"the others by {self.policy.test_name}")
        return (f"{verdict}: {', '.join(parts)} of {len(self.comparisons)} cells "
                f"(threshold {self.policy.threshold_pct:g}%, {basis})")

    def to_markdown(self) -> str:
        return regression_markdown(self)

    def to_junit_xml(self) -> str:
        return regression_junit(self)


# ---- the test ---------------------------------------------------------------------------------------------


# Runs that differ by less than this relative amount have no spread: float noise of a deterministic twin,
# which would otherwise give Welch's test a variance of ~1e-30 and absurd p-values.
SPREAD_TOLERANCE = 1e-9


def _no_spread(values: np.ndarray) -> bool:
    """Two or more runs that agree (one run shows no spread only because there is nothing to compare)."""
    return values.size >= 2 and float(np.ptp(values)) <= SPREAD_TOLERANCE * max(abs(float(values.mean())), 1.0)


def one_sided_p(current: np.ndarray, baseline: np.ndarray, test: TestName, alternative: str) -> float:
    """p-value that current is `less` / `greater` than baseline; NaN when the test cannot be computed."""
    if current.size == 0 or baseline.size == 0:
        return math.nan
    if _no_spread(current) and _no_spread(baseline):
        # no spread on either side: the difference of means is exact, not a sample
        cur, base = float(current.mean()), float(baseline.mean())
        if math.isclose(cur, base, rel_tol=SPREAD_TOLERANCE):
            return 1.0
        if alternative == "less":
            return 0.0 if cur < base else 1.0
        return 0.0 if cur > base else 1.0
    # float noise of a deterministic side is not variance (it also trips scipy's precision warning)
    current = np.full_like(current, current.mean()) if _no_spread(current) else current
    baseline = np.full_like(baseline, baseline.mean()) if _no_spread(baseline) else baseline
    if test == "welch" and (current.size < 2 or baseline.size < 2):
        return math.nan
    from scipy import stats  # imported here: scipy.stats alone costs seconds of every `topo` start

    with warnings.catch_warnings():
        # a constant side is intended here (handled above when both are); scipy warns about it regardless
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        if test == "welch":
            return float(stats.ttest_ind(current, baseline, equal_var=False, alternative=alternative).pvalue)
        return float(stats.mannwhitneyu(current, baseline, alternative=alternative).pvalue)


def min_mannwhitney_p(n_current: int, n_baseline: int) -> float:
    """The smallest one-sided p an exact Mann-Whitney test can give: 1 / C(n1 + n2, n1)."""
    return 1.0 / math.comb(n_current + n_baseline, n_current)


def history_tolerance_pct(history_means: np.ndarray, alpha: float) -> float:
    """How much worse (in % of the history's mean) a cell may get from one sweep to the next by the
    sweep-to-sweep spread its history shows: one-sided t(1 - alpha, n - 1) * s * sqrt(2) / mean."""
    finite = history_means[np.isfinite(history_means)]
    mean = float(finite.mean())
    if finite.size < 2 or mean == 0:
        return math.nan
    spread = float(finite.std(ddof=1))
    return t_quantile(finite.size - 1, 1 - 2 * alpha) * spread * math.sqrt(2) / abs(mean) * 100.0


def interval_worse(current: Interval, baseline: Interval, higher_is_better: bool) -> bool:
    """The current interval lies entirely on the worse side of the baseline's (not touching)."""
    return current.hi < baseline.lo if higher_is_better else current.lo > baseline.hi


def compare_values(topology: str, concurrency: int, metric: MetricSpec, baseline: np.ndarray,
                   current: np.ndarray, policy: RegressionPolicy, baseline_failed: int = 0,
                   current_failed: int = 0, *, baseline_interval: Interval | None = None,
                   current_interval: Interval | None = None,
                   history_means: np.ndarray | None = None, history_alpha: float | None = None) -> CellComparison:
    """Classify one cell from its per-run values (NaN runs are dropped), its intervals and the cell's
    means in earlier sweeps (see the module docstring); `history_alpha`: this cell's share of alpha."""
    baseline = baseline[~np.isnan(baseline)]
    current = current[~np.isnan(current)]
    common: dict[str, Any] = {
        "topology": topology, "concurrency": concurrency, "metric": metric,
        "baseline": tuple(float(v) for v in baseline), "current": tuple(float(v) for v in current),
        "baseline_failed": baseline_failed, "current_failed": current_failed,
    }
    if current.size == 0:
        return CellComparison(status=Status.FAILED, reason="no run of the current sweep produced a value", **common)
    if baseline.size == 0:
        return CellComparison(status=Status.NEW, reason="the baseline has no value for this cell", **common)
    base_mean, cur_mean = float(baseline.mean()), float(current.mean())
    change = (cur_mean - base_mean) / base_mean * 100.0 if base_mean else math.nan
    worse = -change if metric.higher_is_better else change
    worse_alt, better_alt = ("less", "greater") if metric.higher_is_better else ("greater", "less")
    p_worse = p_better = math.nan
    if policy.test != "intervals":
        p_worse = one_sided_p(current, baseline, policy.test, worse_alt)
        p_better = one_sided_p(current, baseline, policy.test, better_alt)
    common.update(worse_pct=worse, p_worse=p_worse, p_better=p_better, tolerance_pct=policy.threshold_pct)
    if current_failed and not baseline_failed:
        return CellComparison(status=Status.FAILED,
                              reason=f"{current_failed} request(s) failed; none failed in the baseline", **common)
    history = history_means[np.isfinite(history_means)] if history_means is not None else np.array([])
    if history.size >= policy.min_history:
        spread = history_tolerance_pct(history, history_alpha or policy.alpha)
        tolerance = max(policy.threshold_pct, spread)
        common.update(tolerance_pct=tolerance, history_sweeps=int(history.size))
        allows = f"its {history.size} earlier sweeps allow ±{spread:.1f}%"
        if spread <= policy.threshold_pct:
            allows += f", so the {policy.threshold_pct:g}% threshold holds"
        if worse > tolerance:
            return CellComparison(status=Status.REGRESSION, reason=f"{worse:.1f}% worse; {allows}", **common)
        if -worse > tolerance:
            return CellComparison(status=Status.IMPROVEMENT, reason=f"{-worse:.1f}% better; {allows}", **common)
        return CellComparison(status=Status.UNCHANGED, reason=f"{_signed(worse)}; {allows}", **common)
    if policy.test == "intervals":
        # given by the caller when the runs carry within-run bounds (cells.parquet); else over the runs
        baseline_interval = baseline_interval or cell_interval(list(baseline))
        current_interval = current_interval or cell_interval(list(current))
        if not (baseline_interval.known and current_interval.known):
            return CellComparison(status=Status.INCONCLUSIVE, reason="no interval on a side (one value only)",
                                  **common)
        worse_apart = interval_worse(current_interval, baseline_interval, metric.higher_is_better)
        better_apart = interval_worse(baseline_interval, current_interval, metric.higher_is_better)
        settled_worse, settled_better = worse_apart, better_apart
        evidence_worse, evidence_better = "the intervals are apart", "the intervals are apart"
        unsettled = "the intervals overlap"
    else:
        if math.isnan(p_worse) or math.isnan(p_better):
            need = "2 runs on each side" if policy.test == "welch" else "1 run on each side"
            return CellComparison(status=Status.INCONCLUSIVE, reason=f"too few runs for a test (needs {need})",
                                  **common)
        settled_worse, settled_better = p_worse < policy.alpha, p_better < policy.alpha
        evidence_worse, evidence_better = f"p = {p_worse:.2g}", f"p = {p_better:.2g}"
        unsettled = ""
    if worse > policy.threshold_pct and settled_worse:
        return CellComparison(status=Status.REGRESSION, reason=f"{worse:.1f}% worse, {evidence_worse}", **common)
    if -worse > policy.threshold_pct and settled_better:
        return CellComparison(status=Status.IMPROVEMENT, reason=f"{-worse:.1f}% better, {evidence_better}",
                              **common)
    if worse > policy.threshold_pct:
        reason = f"{worse:.1f}% worse but not significant ({unsettled or evidence_worse})"
    elif -worse > policy.threshold_pct:
        reason = f"{-worse:.1f}% better but not significant ({unsettled or evidence_better})"
    else:
        reason = f"within the {policy.threshold_pct:g}% threshold"
    return CellComparison(status=Status.UNCHANGED, reason=reason, **common)


def _signed(worse: float) -> str:
    return f"{worse:.1f}% worse" if worse >= 0 else f"{-worse:.1f}% better"


# ---- two sweeps ------------------------------------------------------------------------------------------


def _runs(cells: pd.DataFrame) -> dict[tuple[str, int], pd.DataFrame]:
    return {(str(t), int(c)): rows for (t, c), rows in cells.groupby(["topology", "concurrency"], sort=True)}


def _failed(rows: pd.DataFrame | None) -> int:
    if rows is None or "failed" not in rows:
        return 0
    return int(rows["failed"].fillna(0).sum())


def check_comparable(baseline_meta: FolderMeta | None, current_meta: FolderMeta | None) -> None:
    """RegressionInputError when the two sweeps measured another model or load (unknown facts pass)."""
    for key in COMPARABLE_META_KEYS:
        base = getattr(baseline_meta, key) if baseline_meta else None
        cur = getattr(current_meta, key) if current_meta else None
        if base is not None and cur is not None and base != cur:
            raise RegressionInputError(
                f"the sweeps are not comparable: {key} is {base!r} in the baseline and {cur!r} in the current sweep"
            )


def history_means(history: pd.DataFrame | None, metric: MetricSpec) -> dict[tuple[str, int], np.ndarray]:
    """(topology, concurrency) -> the cell's mean in each earlier sweep (`history` has a `sweep` column)."""
    if history is None or history.empty:
        return {}
    if "sweep" not in history.columns:
        raise RegressionInputError("the history needs a `sweep` column naming each row's sweep")
    means = history.groupby(["topology", "concurrency", "sweep"])[metric.key].mean()
    return {(str(t), int(c)): group.to_numpy(float) for (t, c), group in means.groupby(level=[0, 1])}


def compare_sweeps(baseline: pd.DataFrame, current: pd.DataFrame, policy: RegressionPolicy | None = None, *,
                   baseline_meta: FolderMeta | None = None, current_meta: FolderMeta | None = None,
                   baseline_label: str = "baseline", current_label: str = "current",
                   history: pd.DataFrame | None = None) -> RegressionResult:
    """Every (topology, concurrency, metric) cell of either sweep, classified (see the module docstring).

    `history`: cells of EARLIER sweeps of the same cluster (the current one not among them; the baseline
    may be), with a `sweep` column; cells with enough of it are judged by its spread."""
    policy = policy or RegressionPolicy()
    try:
        baseline = validate_cells(baseline, source=baseline_label)
        current = validate_cells(current, source=current_label)
    except ResultsError as exc:
        raise RegressionInputError(str(exc)) from exc
    check_comparable(baseline_meta, current_meta)
    base_runs, cur_runs = _runs(baseline), _runs(current)
    if not set(base_runs) & set(cur_runs):
        raise RegressionInputError(
            f"{baseline_label} and {current_label} have no (topology, concurrency) cell in common; "
            f"baseline: {_cell_list(base_runs)}; current: {_cell_list(cur_runs)}"
        )
    keys = sorted(set(base_runs) | set(cur_runs),
                  key=lambda k: (ordered_topologies(t for t, _ in set(base_runs) | set(cur_runs)).index(k[0]), k[1]))
    if history is not None and not history.empty:
        try:
            history = validate_cells(history, source="history")
        except ResultsError as exc:
            raise RegressionInputError(str(exc)) from exc
    past = {metric.key: history_means(history, metric) for metric in policy.metrics}
    judged_by_history = sum(1 for metric in policy.metrics for key, means in past[metric.key].items()
                            if key in cur_runs and key in base_runs
                            and np.isfinite(means).sum() >= policy.min_history)
    history_alpha = policy.alpha / max(judged_by_history, 1)
    comparisons = []
    for topology, concurrency in keys:
        base_rows, cur_rows = base_runs.get((topology, concurrency)), cur_runs.get((topology, concurrency))
        for metric in policy.metrics:
            if cur_rows is None:
                values = tuple(float(v) for v in base_rows[metric.key].dropna())
                comparisons.append(CellComparison(topology, concurrency, metric, Status.MISSING, baseline=values,
                                                  baseline_failed=_failed(base_rows),
                                                  reason="not measured by the current sweep"))
                continue
            base_values = base_rows[metric.key].to_numpy(float) if base_rows is not None else np.array([])
            base_interval = (cell_stat(base_rows, topology, concurrency, metric).interval
                             if base_rows is not None else None)
            comparisons.append(compare_values(
                topology, concurrency, metric, base_values, cur_rows[metric.key].to_numpy(float), policy,
                _failed(base_rows), _failed(cur_rows), baseline_interval=base_interval,
                current_interval=cell_stat(cur_rows, topology, concurrency, metric).interval,
                history_means=past[metric.key].get((topology, concurrency)), history_alpha=history_alpha))
    notes = []
    if policy.test == "mannwhitney":
        sizes = [(len(c.current), len(c.baseline)) for c in comparisons if c.current and c.baseline]
        if sizes and min(min_mannwhitney_p(a, b) for a, b in sizes) >= policy.alpha:
            notes.append(f"With these run counts Mann-Whitney cannot reach p < {policy.alpha:g} on any cell; "
                         f"use more runs (4 per side for α = 0.05) or Welch's t-test.")
    if baseline_meta is not None and current_meta is not None:  # the same software on the same machines?
        notes += [f"What ran differs from the baseline: {difference}"
                  for difference in ran_differences(baseline_meta.ran, current_meta.ran)]
    return RegressionResult(policy, comparisons, baseline_label, current_label, notes)


def compare_result_dirs(baseline_dir: Path | str, current_dir: Path | str,
                        policy: RegressionPolicy | None = None, *, baseline_label: str | None = None,
                        current_label: str | None = None, history: pd.DataFrame | None = None) -> RegressionResult:
    """compare_sweeps over two results folders; any unreadable folder is a RegressionInputError (exit 2).

    The labels name the sweeps in the outputs (default: the folder paths; `topo regress` passes a tag)."""
    try:
        baseline, current = (ResultsFolder(d).load(with_requests=False) for d in (baseline_dir, current_dir))
    except ResultsError as exc:
        raise RegressionInputError(f"cannot compare: {exc}") from exc
    return compare_sweeps(baseline.cells, current.cells, policy, baseline_meta=baseline.meta,
                          current_meta=current.meta, baseline_label=baseline_label or str(baseline_dir),
                          current_label=current_label or str(current_dir), history=history)


def _cell_list(runs: dict[tuple[str, int], Any]) -> str:
    return ", ".join(f"{t}@c{c}" for t, c in sorted(runs)) or "none"


# ---- outputs ---------------------------------------------------------------------------------------------

# plain symbols: an emoji font is not there on every head node or CI browser
STATUS_ICON = {
    Status.REGRESSION: "✗", Status.FAILED: "✗", Status.MISSING: "✗", Status.IMPROVEMENT: "✓",
    Status.INCONCLUSIVE: "?", Status.NEW: "+", Status.UNCHANGED: "",
}


def mean_std_text(values: tuple[float, ...]) -> str:
    if not values:
        return "—"
    mean, std = float(np.mean(values)), float(np.std(values))
    decimals = 0 if abs(mean) >= 100 else 1
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def allowed_text(comparison: CellComparison) -> str:
    """How much worse the cell may get (its history's spread, or the threshold)."""
    return "—" if math.isnan(comparison.tolerance_pct) else f"{comparison.tolerance_pct:.1f}%"


def p_text(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.2g}"


REPORT_ORDER = (Status.REGRESSION, Status.FAILED, Status.MISSING, Status.INCONCLUSIVE, Status.IMPROVEMENT,
                Status.NEW)


def regression_display(result: RegressionResult) -> DisplayTable:
    """Every cell that is not simply unchanged, failures first, as a display table for md/html/terminal."""
    shown = sorted((c for c in result.comparisons if c.status in REPORT_ORDER),
                   key=lambda c: REPORT_ORDER.index(c.status))
    rows = []
    for comparison in shown:
        p = comparison.p_better if comparison.status is Status.IMPROVEMENT else comparison.p_worse
        rows.append([
            STATUS_ICON[comparison.status], display_name(comparison.topology), str(comparison.concurrency),
            f"{comparison.metric.title} ({comparison.metric.unit})", mean_std_text(comparison.baseline),
            mean_std_text(comparison.current), format_pct(comparison.change_pct), allowed_text(comparison),
            p_text(p), f"{comparison.status.value}: {comparison.reason}",
        ])
    return DisplayTable(
        f"Regression gate: {result.current_label} vs {result.baseline_label}",
        ["", "Topology", "c", "Metric", "Baseline", "Current", "Change", "Allowed", "p", "Status"], rows,
        intro=result.summary(), notes=list(result.notes),
    )


def regression_markdown(result: RegressionResult) -> str:
    table = regression_display(result)
    lines = [f"## {table.title}", "", f"**{table.intro}**", ""]
    if table.rows:
        lines += markdown_table(table.headers, table.rows) + [""]
    else:
        lines += ["Every cell is within the threshold or not significantly different.", ""]
    lines += [f"_{note}_" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def regression_junit(result: RegressionResult) -> str:
    """One <testcase> per cell; regressions, failed and missing cells are <failure>s."""
    suite = ET.Element("testsuite", {
        "name": "topo regress",
        "tests": str(len(result.comparisons)),
        "failures": str(len(result.failing)),
        "errors": "0",
        "skipped": str(len(result.with_status(Status.INCONCLUSIVE))),
    })
    properties = ET.SubElement(suite, "properties")
    for name, value in (("baseline", result.baseline_label), ("current", result.current_label),
                        ("threshold_pct", f"{result.policy.threshold_pct:g}"), ("test", result.policy.test),
                        ("alpha", f"{result.policy.alpha:g}")):
        ET.SubElement(properties, "property", {"name": name, "value": value})
    for comparison in result.comparisons:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"topo.regress.{comparison.topology}",
            "name": f"c{comparison.concurrency} {comparison.metric.key}",
            "time": "0",
        })
        detail = (f"{display_name(comparison.topology)} at c{comparison.concurrency}, {comparison.metric.description}: "
                  f"baseline {mean_std_text(comparison.baseline)}, current {mean_std_text(comparison.current)}, "
                  f"change {format_pct(comparison.change_pct)}, p(worse) {p_text(comparison.p_worse)}; "
                  f"{comparison.reason}")
        if comparison.status.fails_gate:
            failure = ET.SubElement(case, "failure", {"message": f"{comparison.status.value}: {comparison.reason}",
                                                      "type": comparison.status.value})
            failure.text = detail
        elif comparison.status is Status.INCONCLUSIVE:
            ET.SubElement(case, "skipped", {"message": comparison.reason})
        else:
            ET.SubElement(case, "system-out").text = f"{comparison.status.value}: {detail}"
    root = ET.Element("testsuites", {"tests": suite.get("tests", "0"), "failures": suite.get("failures", "0")})
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_gate_outputs(result: RegressionResult, junit: Path | str | None = None,
                       markdown: Path | str | None = None) -> int:
    """Write the JUnit XML and/or Markdown a CI job keeps; returns the exit code `topo regress` should use."""
    for path, text in ((junit, result.to_junit_xml() if junit else ""),
                       (markdown, result.to_markdown() if markdown else "")):
        if path is None:
            continue
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise RegressionInputError(f"cannot write {path}: {exc}") from exc
    return result.exit_code
