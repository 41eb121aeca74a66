"""Winner, margin, tie and vs-solo rules on fixture cells with hand-checked answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from common.errors import ResultsError
from reports.names import display_name, layout_display_name, layout_of, layouts, ordered_topologies, ray_pairs
from reports.report import build_report, format_cell, winner_display
from reports.tables import (
    DECODE,
    PREFILL,
    TTFT,
    CellStat,
    decide,
    format_pct,
    ray_tables,
    validate_cells,
    winner_table,
)
from tests.reports.fixtures import cell_rows, frame


def stat(topology: str, mean: float, lo: float = math.nan, hi: float = math.nan) -> CellStat:
    return CellStat(topology, 1, mean, 0.0, 3, 0, 3, lo, hi, "runs" if not math.isnan(lo) else "none")


def test_throughput_winner_and_margin_over_runner_up() -> None:
    # solo 39/40/41 -> 40 [37.5, 42.5]; tp2-mp 59/60/61 -> 60 [57.5, 62.5]: +50% over solo, intervals apart
    cells = frame(cell_rows("solo", 1, [39, 40, 41]), cell_rows("tp2-mp", 1, [59, 60, 61]))
    table = winner_table(cells, DECODE)
    row = table.rows[0]
    solo = row.cells["solo"]
    assert solo.mean == 40 and solo.std == pytest.approx(0.8165, abs=1e-4)  # population std (ddof=0)
    # t(2) = 4.303, s = 1: 40 ± 4.303 / sqrt(3) = ± 2.484
    assert (solo.lo, solo.hi) == (pytest.approx(37.516, abs=1e-3), pytest.approx(42.484, abs=1e-3))
    assert solo.method == "runs"
    assert row.verdict.winner == "tp2-mp" and row.verdict.runner_up == "solo"
    assert row.verdict.margin_pct == pytest.approx(50.0)
    assert row.verdict.label() == "Cluster TP=2 (+50%)"
    assert row.vs_solo == {"tp2": pytest.approx(50.0)}  # per layout


def test_ttft_lower_wins_and_margin_is_negative() -> None:
    # solo 200 (no spread); shuffle 150/154/158 -> 154: (154 - 200) / 200 = -23%
    cells = frame(cell_rows("solo", 1, [1, 1, 1], ttft=[200, 200, 200]),
                  cell_rows("2x-solo-shuffle", 1, [1, 1, 1], ttft=[150, 154, 158]))
    row = winner_table(cells, TTFT).rows[0]
    assert row.verdict.label() == "Shuffle (-23%)"
    assert row.vs_solo["2x-solo-shuffle"] == pytest.approx(-23.0)


@pytest.mark.parametrize(
    ("best", "runner", "higher", "margin", "why"),
    [
        ((100, 97, 103), (90, 87, 93), True, 3.0, ""),  # apart and +11%: a win
        ((100, 95, 105), (90, 85, 95), True, 3.0, "intervals overlap"),  # touching at 95
        ((100, 96, 104), (80, 70, 97), True, 3.0, "intervals overlap"),  # a wide runner-up reaching in
        ((100, 99.9, 100.1), (98, 97.9, 98.1), True, 3.0, "< 3%"),  # settled but +2.0%: does not matter
        ((100, 99.9, 100.1), (98, 97.9, 98.1), True, 1.0, ""),  # ... unless the margin is 1%
        ((100, math.nan, math.nan), (90, math.nan, math.nan), True, 3.0, "no interval"),  # one value each
        ((100, math.nan, math.nan), (99, math.nan, math.nan), True, 3.0, "< 3%"),  # too small either way
        ((100, 98, 102), (120, 118, 122), False, 3.0, ""),  # TTFT: lower wins, -17%
        ((100, 98, 110), (105, 104, 106), False, 3.0, "intervals overlap"),  # TTFT -4.8% but overlapping
    ],
)
def test_a_win_must_be_real_and_material(best: tuple, runner: tuple, higher: bool, margin: float, why: str) -> None:
    verdict = decide([stat("solo", *runner), stat("tp2-mp", *best)], higher_is_better=higher, margin_pct=margin)
    assert verdict.winner == "tp2-mp" and verdict.runner_up == "solo"
    assert verdict.tie is bool(why) and verdict.why == why


def test_a_tie_names_both_and_says_why() -> None:
    verdict = decide([stat("solo", 98, 97.9, 98.1), stat("tp2-mp", 100, 99.9, 100.1)], higher_is_better=True)
    assert verdict.label() == "tie: Cluster TP=2 or Solo (+2.0%, < 3%)"


def test_a_single_run_cell_takes_its_within_run_interval() -> None:
    rows = cell_rows("solo", 4, [100])
    rows[0].update(decode_tps_lo=96.0, decode_tps_hi=104.0)
    cell = winner_table(frame(rows), DECODE).rows[0].cells["solo"]
    assert (cell.lo, cell.hi, cell.method) == (96.0, 104.0, "within-run")
    assert format_cell(cell) == "100 [96–104]"
    # an old folder without the bounds: the mean and no interval
    assert format_cell(winner_table(frame(cell_rows("solo", 4, [100])), DECODE).rows[0].cells["solo"]) == "100 (no CI)"


def test_layouts_group_executor_variants() -> None:
    assert layout_of("tp2-ray") == layout_of("tp2-mp") == "tp2" and layout_of("solo") == "solo"
    assert layout_display_name("tp2-ray") == "Cluster TP=2" and layout_display_name("2x-solo-shuffle") == "Shuffle"
    assert layouts(["tp2-ray", "solo", "tp2-mp", "tp4-mp"]) == {
        "solo": ["solo"], "tp2": ["tp2-mp", "tp2-ray"], "tp4": ["tp4-mp"]}


def test_winner_table_compares_layouts_each_by_its_better_executor() -> None:
    # Ray is the better TP=2 executor at c1 (62 vs 60), no Ray at c2; solo trails at both levels
    cells = frame(cell_rows("solo", 1, [39, 40, 41]), cell_rows("tp2-mp", 1, [59, 60, 61]),
                  cell_rows("tp2-ray", 1, [61, 62, 63]),
                  cell_rows("solo", 2, [79, 80, 81]), cell_rows("tp2-mp", 2, [119, 120, 121]),
                  cell_rows("tp2-ray", 2, [109, 110, 111]))
    table = winner_table(cells, DECODE)
    assert list(table.layouts) == ["solo", "tp2"]
    first, second = table.rows
    assert first.cells["tp2"].topology == "tp2-ray" and second.cells["tp2"].topology == "tp2-mp"
    # the margin is against the best OTHER layout (solo, +55%), never against the same layout's other executor
    assert (first.verdict.winner, first.verdict.runner_up) == ("tp2-ray", "solo")
    assert first.verdict.margin_pct == pytest.approx(55.0)
    assert first.verdict.label() == "Cluster TP=2 (+55%)"
    display = winner_display(table)
    assert display.headers == ["c", "Solo", "Cluster TP=2", "Winner", "Cluster TP=2 vs solo"]
    assert display.rows[0][2].endswith("(Ray)") and display.rows[1][2].endswith("(no Ray)")
    # the executor choice has its own table, decided by the same rule: at c1 Ray's +3.3% is inside the
    # intervals ([59.5, 64.5] vs [57.5, 62.5]), a tie; at c2 no Ray's +9% is clear
    (executors,) = ray_tables(cells)
    c1, c2 = (row.verdict[DECODE.key] for row in executors.rows)
    assert c1.tie and c1.why == "intervals overlap"
    assert c2.winner == "tp2-mp" and not c2.tie


def test_lone_topology_wins_unopposed() -> None:
    verdict = decide([stat("tp2-mp", 10, 9, 11)], higher_is_better=True)
    assert verdict.runner_up is None and math.isnan(verdict.margin_pct)
    assert verdict.label() == "Cluster TP=2 (only one)"
    assert decide([], higher_is_better=True) is None


def test_missing_topology_at_a_level_shows_a_dash_and_no_vs_solo() -> None:
    cells = frame(cell_rows("solo", 1, [40, 40]), cell_rows("solo", 2, [70, 70]), cell_rows("tp2-mp", 1, [60, 60]))
    display = winner_display(winner_table(cells, DECODE))
    assert display.headers == ["c", "Solo", "Cluster TP=2", "Winner", "Cluster TP=2 vs solo"]
    assert display.rows[1] == ["2", "70.0 [70.0–70.0]", "—", "Solo (only one)", "—"]
    assert display.rows[0][-1] == "+50%"


def test_failed_requests_mark_the_cell() -> None:
    cells = frame(cell_rows("solo", 4, [100, 110], failed=[0, 2]))
    stat_ = winner_table(cells, DECODE).rows[0].cells["solo"]
    assert stat_.failed == 2 and stat_.requests == 8
    assert format_cell(stat_) == "105 [41–169] ⚠"  # 2 runs: 105 ± 12.706 * 7.07 / sqrt(2)
    report = build_report(cells)
    assert any("2 of 8 requests failed" in caveat for caveat in report.caveats)


def test_a_cell_whose_runs_all_failed_has_no_value_and_cannot_win() -> None:
    cells = frame(cell_rows("solo", 1, [40, 40]), cell_rows("tp2-mp", 1, [float("nan")], failed=[1]))
    row = winner_table(cells, DECODE).rows[0]
    assert row.verdict.winner == "solo" and row.verdict.runner_up is None
    assert format_cell(row.cells["tp2"]) == "⚠ all failed"


def test_unknown_topologies_keep_their_name_and_come_after_the_registered_ones() -> None:
    assert display_name("tp8-mp") == "tp8-mp"
    assert display_name("tp2-ray") == "Cluster TP=2 (Ray)"
    assert display_name("tp4-mp") == "Cluster TP=4"
    assert ordered_topologies(["tp8-mp", "tp4-mp", "2x-solo-shuffle", "solo", "4x-solo-shuffle", "3x-solo-shuffle"]) == [
        "solo", "2x-solo-shuffle", "tp4-mp", "4x-solo-shuffle", "3x-solo-shuffle", "tp8-mp"]


def test_ray_pairs_share_a_layout_for_any_size() -> None:
    assert ray_pairs(["tp2-ray", "tp2-mp", "tp4-ray", "tp4-mp", "tp8-ray", "tp8-mp", "2x-tp2-shuffle", "solo",
                      "not-a-topology"]) == [("tp2-ray", "tp2-mp"), ("tp4-ray", "tp4-mp"), ("tp8-ray", "tp8-mp")]
    assert ray_pairs(["tp2-ray", "tp4-mp"]) == []


def test_ray_table_gain() -> None:
    cells = frame(
        cell_rows("tp2-mp", 1, [50, 50], prefill=[1000, 1000], ttft=[100, 100]),
        cell_rows("tp2-ray", 1, [45, 45], prefill=[1100, 1100], ttft=[120, 120]),
        cell_rows("tp2-ray", 2, [80, 80]),
    )
    (table,) = ray_tables(cells)
    assert (table.ray_topology, table.no_ray_topology) == ("tp2-ray", "tp2-mp")
    first, second = table.rows
    assert first.gain_pct[DECODE.key] == pytest.approx(-10.0)
    assert first.gain_pct[PREFILL.key] == pytest.approx(10.0)
    assert first.gain_pct[TTFT.key] == pytest.approx(20.0)
    assert second.no_ray[DECODE.key] is None and math.isnan(second.gain_pct[DECODE.key])


@pytest.mark.parametrize(("pct", "text"), [(50.0, "+50%"), (-23.4, "-23%"), (7.84, "+7.8%"), (-0.44, "-0.4%"), (-0.004, "0.0%"),
                                           (float("nan"), "—")])
def test_percent_format(pct: float, text: str) -> None:
    assert format_pct(pct) == text


def test_validate_cells_names_missing_columns_and_bad_types() -> None:
    with pytest.raises(ResultsError, match="missing column.*decode_tps"):
        validate_cells(pd.DataFrame({"topology": ["solo"], "concurrency": [1], "run": [0]}))
    bad = frame(cell_rows("solo", 1, [1]))
    bad["ttft_ms"] = ["fast"]
    with pytest.raises(ResultsError, match="'ttft_ms' must be numeric"):
        validate_cells(bad)
    with pytest.raises(ResultsError, match="no rows"):
        validate_cells(frame())
