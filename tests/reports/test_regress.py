"""The regression gate's statistics on fixture data with known answers, its outputs and exit codes."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.results_folder import FolderMeta
from common.errors import RegressionInputError
from reports.regress import (
    RegressionPolicy,
    Status,
    compare_sweeps,
    compare_values,
    min_mannwhitney_p,
    parse_threshold,
)
from reports.regress import compare_result_dirs
from reports.tables import DECODE, PREFILL, TTFT
from tests.reports.fixtures import cell_rows, frame, study_cells

WELCH = RegressionPolicy(threshold_pct=5.0, test="welch")  # the per-run test, on request


def compare(metric, baseline, current, policy=WELCH, **kw):
    return compare_values("solo", 1, metric, np.array(baseline, float), np.array(current, float), policy, **kw)


def test_by_default_the_intervals_judge_a_cell_without_history() -> None:
    # [100, 102, 98, 100]: s = 1.633, t(3) = 3.182 -> 100 ± 2.60; [90, 92, 88, 90] -> 90 ± 2.60: apart, 10% worse
    policy = RegressionPolicy()
    assert (policy.test, policy.threshold_pct) == ("intervals", 3.0)
    slower = compare(DECODE, [100, 102, 98, 100], [90, 92, 88, 90], policy)
    assert slower.status is Status.REGRESSION and slower.reason == "10.0% worse, the intervals are apart"
    # the same 10% inside wide intervals: not settled
    noisy = compare(DECODE, [80, 120, 100, 100], [70, 110, 90, 90], policy)
    assert noisy.status is Status.UNCHANGED and "the intervals overlap" in noisy.reason
    # apart but by less than the 3% threshold: does not matter
    assert compare(DECODE, [100, 100.1, 99.9, 100], [98, 98.1, 97.9, 98], policy).status is Status.UNCHANGED
    assert compare(TTFT, [200, 202, 198, 200], [180, 182, 178, 180], policy).status is Status.IMPROVEMENT
    # one run a side without within-run bounds: no interval, no verdict
    assert compare(DECODE, [100], [80], policy).status is Status.INCONCLUSIVE


def test_single_run_cells_are_judged_by_their_within_run_intervals() -> None:
    base, cur = cell_rows("solo", 8, [100]), cell_rows("solo", 8, [90])
    base[0].update(decode_tps_lo=98.0, decode_tps_hi=102.0)
    cur[0].update(decode_tps_lo=88.0, decode_tps_hi=92.0)
    (decode,) = [c for c in compare_sweeps(frame(base), frame(cur)).comparisons if c.metric is DECODE]
    assert decode.status is Status.REGRESSION
    cur[0].update(decode_tps_lo=80.0, decode_tps_hi=99.0)  # the same mean, a wider interval reaching the baseline's
    (decode,) = [c for c in compare_sweeps(frame(base), frame(cur)).comparisons if c.metric is DECODE]
    assert decode.status is Status.UNCHANGED


def history_of(values_by_sweep: list[float]) -> pd.DataFrame:
    rows = [dict(row, sweep=f"s{index}") for index, value in enumerate(values_by_sweep)
            for row in cell_rows("solo", 1, [value, value])]
    return pd.DataFrame(rows)


def test_a_cell_with_history_is_judged_by_the_spread_it_has_shown() -> None:
    base, cur = frame(cell_rows("solo", 1, [100, 100])), frame(cell_rows("solo", 1, [94, 94]))
    # a cell that wandered 100, 96, 104, 100, 97, 103 between sweeps: s = 3.16; alone (one metric, so all
    # of alpha) t(0.95, 5) = 2.015 and the tolerance is 2.015 * 3.16 * sqrt(2) = 9.0%: 6% worse is what
    # this cell does on its own
    wandering = history_of([100, 96, 104, 100, 97, 103])
    result = compare_sweeps(base, cur, RegressionPolicy(metrics=(DECODE,)), history=wandering)
    (decode,) = result.comparisons
    assert decode.status is Status.UNCHANGED and decode.history_sweeps == 6
    assert decode.tolerance_pct == pytest.approx(2.015 * math.sqrt(10) * math.sqrt(2), rel=1e-3)
    assert "its 6 earlier sweeps allow ±9.0%" in decode.reason
    # three cells judged by history share alpha: each gets t(1 - 0.05/3, 5) = 2.912 -> 13.0%
    (decode,) = [c for c in compare_sweeps(base, cur, history=wandering).comparisons if c.metric is DECODE]
    assert decode.tolerance_pct == pytest.approx(2.912 * math.sqrt(10) * math.sqrt(2), rel=1e-3)
    assert "by their history's spread" in result.summary()
    # a steady cell (±0.2% between sweeps): the threshold holds, and 6% worse regresses
    steady = history_of([100, 100.2, 99.8, 100, 100.1, 99.9])
    (decode,) = [c for c in compare_sweeps(base, cur, history=steady).comparisons if c.metric is DECODE]
    assert decode.status is Status.REGRESSION and decode.tolerance_pct == 3.0
    assert "so the 3% threshold holds" in decode.reason
    # too little history (2 sweeps): the intervals decide
    (decode,) = [c for c in compare_sweeps(base, cur, history=history_of([100, 104])).comparisons
                 if c.metric is DECODE]
    assert decode.history_sweeps == 0


def test_ten_percent_slower_and_consistent_is_a_regression() -> None:
    # means 100 and 90, sample variances 8/3 each: t = -10 / sqrt(2 * (8/3) / 4) = -5 * sqrt(3) = -8.660,
    # Welch df = 6; one-sided P(T6 < -8.660) = 6.5e-5
    result = compare(DECODE, [100, 102, 98, 100], [90, 92, 88, 90])
    assert result.status is Status.REGRESSION
    assert result.worse_pct == pytest.approx(10.0)
    assert result.change_pct == pytest.approx(-10.0)
    assert result.p_worse == pytest.approx(6.535e-5, rel=1e-3)


def test_ten_percent_slower_inside_the_noise_is_not_flagged() -> None:
    # sample variances 800/3: t = -10 / sqrt(2 * (800/3) / 4) = -0.866, df = 6, one-sided p = 17/81 = 0.2099
    result = compare(DECODE, [80, 120, 100, 100], [70, 110, 90, 90])
    assert result.status is Status.UNCHANGED
    assert result.p_worse == pytest.approx(17 / 81, rel=1e-6)
    assert "not significant" in result.reason


def test_significant_but_under_the_threshold_is_not_flagged() -> None:
    result = compare(DECODE, [100, 100.1, 99.9, 100], [97, 97.1, 96.9, 97])  # -3%, p tiny
    assert result.p_worse < 1e-6
    assert result.status is Status.UNCHANGED and "within the 5% threshold" in result.reason


def test_same_distribution_is_unchanged() -> None:
    assert compare(DECODE, [100, 101, 99, 100], [99, 100, 101, 100]).status is Status.UNCHANGED


def test_direction_depends_on_the_metric() -> None:
    later = compare(TTFT, [200, 202, 198, 200], [220, 222, 218, 220])  # TTFT +10%: worse
    assert later.status is Status.REGRESSION and later.worse_pct == pytest.approx(10.0)
    sooner = compare(TTFT, [200, 202, 198, 200], [180, 182, 178, 180])  # TTFT -10%: better
    assert sooner.status is Status.IMPROVEMENT and sooner.worse_pct == pytest.approx(-10.0)
    faster = compare(PREFILL, [1000, 1010, 990, 1000], [1100, 1110, 1090, 1100])
    assert faster.status is Status.IMPROVEMENT


def test_no_spread_on_either_side_is_an_exact_difference() -> None:
    # a deterministic twin: equal values never flag, a 10% drop always does
    same = compare(DECODE, [50, 50, 50], [50, 50, 50])
    assert same.status is Status.UNCHANGED and same.p_worse == 1.0
    slower = compare(DECODE, [50, 50, 50], [45, 45, 45])
    assert slower.status is Status.REGRESSION and slower.p_worse == 0.0


def test_too_few_runs_is_inconclusive_not_a_failure() -> None:
    result = compare(DECODE, [100, 101], [80])
    assert result.status is Status.INCONCLUSIVE and not result.status.fails_gate
    assert math.isnan(result.p_worse)
    # one run each: no spread is seen only because there is nothing to compare, so it is not "exact"
    assert compare(DECODE, [100], [80]).status is Status.INCONCLUSIVE


def test_float_noise_of_a_deterministic_system_counts_as_no_spread() -> None:
    base = [50.0, 50.0 * (1 + 1e-13), 50.0]
    assert compare(DECODE, base, [50.0, 50.0, 50.0 * (1 - 1e-13)]).status is Status.UNCHANGED
    slower = compare(DECODE, base, [45.0, 45.0 * (1 + 1e-13), 45.0])
    assert slower.status is Status.REGRESSION and slower.p_worse == 0.0


def test_mann_whitney_known_answer() -> None:
    policy = RegressionPolicy(test="mannwhitney")
    # 5 vs 5, every current value below every baseline value: exact one-sided p = 1 / C(10, 5) = 1/252
    result = compare(DECODE, [100, 101, 102, 103, 104], [90, 91, 92, 93, 94], policy)
    assert result.p_worse == pytest.approx(1 / 252)
    assert result.status is Status.REGRESSION
    assert min_mannwhitney_p(3, 3) == pytest.approx(1 / 20)
    # 3 vs 3 can never get below 0.05: the gate notes it
    cells_a = frame(cell_rows("solo", 1, [100, 101, 102]))
    cells_b = frame(cell_rows("solo", 1, [90, 91, 92]))
    outcome = compare_sweeps(cells_a, cells_b, policy)
    assert outcome.regressions == [] and any("cannot reach" in note for note in outcome.notes)


def test_failed_requests_fail_the_cell() -> None:
    result = compare(DECODE, [100, 100], [100, 100], current_failed=3)
    assert result.status is Status.FAILED and "3 request(s) failed" in result.reason
    assert compare(DECODE, [100, 100], [100, 100], baseline_failed=1, current_failed=1).status is Status.UNCHANGED
    assert compare(DECODE, [100, 100], [math.nan, math.nan]).status is Status.FAILED


def noisy(cells: pd.DataFrame, seed: int, spread: float = 0.02) -> pd.DataFrame:
    """The same sweep measured again: every value times N(1, spread), 4 runs per cell."""
    rng = np.random.default_rng(seed)
    copies = []
    for run in range(4):
        copy = cells[cells["run"] == 0].copy()
        copy["run"] = run
        for column in ("decode_tps", "prefill_tps", "ttft_ms"):
            copy[column] = copy[column] * rng.normal(1.0, spread, len(copy))
        copies.append(copy)
    return pd.concat(copies, ignore_index=True)


def test_a_second_sweep_of_the_same_system_is_clean() -> None:
    base = study_cells()
    result = compare_sweeps(noisy(base, seed=1), noisy(base, seed=2))
    assert len(result.comparisons) == 4 * 7 * 3
    assert result.failing == [] and result.improvements == []
    assert result.exit_code == 0
    assert result.summary().startswith("PASS: 84 unchanged of 84 cells")


def test_ten_percent_slower_decode_is_flagged_on_exactly_those_cells() -> None:
    base = study_cells()
    current = noisy(base, seed=2)
    slower = current["topology"] == "tp2-ray"
    current.loc[slower, "decode_tps"] *= 0.9
    result = compare_sweeps(noisy(base, seed=1), current)
    flagged = {(c.topology, c.concurrency, c.metric.key) for c in result.regressions}
    assert flagged == {("tp2-ray", c, "decode_tps") for c in (1, 2, 4, 8, 16, 32, 64)}
    assert result.exit_code == 1

    suite = ET.fromstring(result.to_junit_xml()).find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 84 and suite.get("failures") == "7"
    failed_cases = {(case.get("classname"), case.get("name")) for case in cases if case.find("failure") is not None}
    assert failed_cases == {("topo.regress.tp2-ray", f"c{c} decode_tps") for c in (1, 2, 4, 8, 16, 32, 64)}

    markdown = result.to_markdown()
    assert markdown.count("| ✗ |") == 7
    assert "| ✗ | Cluster TP=2 (Ray) | 64 | Decode (t/s) |" in markdown
    assert "FAIL: 7 regression, 77 unchanged of 84 cells" in markdown


def test_missing_and_new_cells() -> None:
    base = frame(cell_rows("solo", 1, [40, 40]), cell_rows("tp2-ray", 1, [50, 50]))
    current = frame(cell_rows("solo", 1, [40, 40]), cell_rows("tp2-mp", 1, [55, 55]))
    result = compare_sweeps(base, current)
    statuses = {(c.topology, c.metric.key): c.status for c in result.comparisons}
    assert statuses[("tp2-ray", "decode_tps")] is Status.MISSING
    assert statuses[("tp2-mp", "decode_tps")] is Status.NEW
    assert statuses[("solo", "decode_tps")] is Status.UNCHANGED
    assert result.exit_code == 1  # a topology that stopped coming up fails the gate
    junit = ET.fromstring(result.to_junit_xml())
    assert {f.get("type") for f in junit.iter("failure")} == {"missing"}


def test_unusable_input_is_a_regression_input_error(tmp_path: Path) -> None:
    with pytest.raises(RegressionInputError, match="no .topology, concurrency. cell in common"):
        compare_sweeps(frame(cell_rows("solo", 1, [1])), frame(cell_rows("solo", 2, [1])))
    with pytest.raises(RegressionInputError, match="pp is 1024 in the baseline and 512"):
        compare_sweeps(frame(cell_rows("solo", 1, [1])), frame(cell_rows("solo", 1, [1])),
                       baseline_meta=FolderMeta(kind="sweep", spec={"pp": 1024}),
                       current_meta=FolderMeta(kind="prediction", spec={"pp": 512}))
    with pytest.raises(RegressionInputError, match="missing column"):
        compare_sweeps(pd.DataFrame({"topology": ["solo"]}), frame(cell_rows("solo", 1, [1])))
    with pytest.raises(RegressionInputError, match="cannot compare: .*no such results folder"):
        compare_result_dirs(tmp_path / "a", tmp_path / "b")
    with pytest.raises(RegressionInputError):
        RegressionPolicy(threshold_pct=-1)


def test_compare_result_dirs(tmp_path: Path) -> None:
    for name, factor in (("base", 1.0), ("cur", 0.8)):
        (tmp_path / name).mkdir()
        cells = frame(cell_rows("solo", 1, [100 * factor, 101 * factor, 99 * factor]))
        cells.to_parquet(tmp_path / name / "cells.parquet")
    result = compare_result_dirs(tmp_path / "base", tmp_path / "cur")
    assert [c.metric.key for c in result.regressions] == ["decode_tps"]
    assert result.baseline_label == str(tmp_path / "base")


@pytest.mark.parametrize(("text", "value"), [("5%", 5.0), ("7.5", 7.5), (" 10 % ", 10.0), (3, 3.0)])
def test_parse_threshold(text, value) -> None:
    assert parse_threshold(text) == value


def test_parse_threshold_rejects_nonsense() -> None:
    with pytest.raises(RegressionInputError, match="expected a percentage"):
        parse_threshold("five")


def test_what_ran_differently_is_a_warning_not_a_verdict() -> None:
    from bench.results_folder import NodeFacts, WhatRan
    from reports.regress import regression_markdown

    def meta(version: str, nccl: str) -> FolderMeta:
        return FolderMeta(kind="sweep", spec={"pp": 1024}, ran={"solo": WhatRan(executor="uni", nodes={
            "spark1": NodeFacts(engine="vllm", engine_version=version, nccl=nccl, kernel="6.11.0")})})

    base = study_cells()
    same = compare_sweeps(base, base, baseline_meta=meta("0.19.1", "2.27.3"), current_meta=meta("0.19.1", "2.27.3"))
    assert not any("What ran" in note for note in same.notes)
    result = compare_sweeps(base, base, baseline_meta=meta("0.19.1", "2.27.3"), current_meta=meta("0.19.2", "2.27.3"))
    assert result.exit_code == 0  # a warning: the gate still decides on the numbers
    assert "What ran differs from the baseline: solo on spark1: engine_version 0.19.1 -> 0.19.2" in result.notes
    assert "engine_version 0.19.1 -> 0.19.2" in regression_markdown(result)
