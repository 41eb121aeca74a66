"""Winner, margin, tie and vs-solo rules on fixture cells with hand-checked answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from common.errors import ResultsError
from reports.names import display_name, ordered_topologies, ray_pairs
from reports.report import build_report, format_cell, winner_display
from reports.tables import (
    DECODE,
    PREFILL,
    TTFT,
    CellStat,
    decide,
    format_pct,
    ray_tables,
    spreads_overlap,
    validate_cells,
    winner_table,
)
from tests.reports.fixtures import cell_rows, frame


def stat(topology: str, mean: float, std: float) -> CellStat:
    return CellStat(topology, 1, mean, std, 2, 0, 2)


def test_throughput_winner_and_margin_over_runner_up() -> None:
    # solo 39/41 -> 40 ± 1; tp2-mp 59/61 -> 60 ± 1: +50% over solo, no overlap
    cells = frame(cell_rows("solo", 1, [39, 41]), cell_rows("tp2-mp", 1, [59, 61]))
    table = winner_table(cells, DECODE)
    row = table.rows[0]
    assert row.cells["solo"].mean == 40 and row.cells["solo"].std == 1  # population std (ddof=0)
    assert row.verdict.winner == "tp2-mp" and row.verdict.runner_up == "solo"
    assert row.verdict.margin_pct == pytest.approx(50.0)
    assert row.verdict.label() == "Cluster TP=2 (+50%)"
    assert row.vs_solo == {"tp2-mp": pytest.approx(50.0)}


def test_ttft_lower_wins_and_margin_is_negative() -> None:
    # solo 200 ± 0; shuffle 150/158 -> 154 ± 4: (154 - 200) / 200 = -23%
    cells = frame(cell_rows("solo", 1, [1, 1], ttft=[200, 200]), cell_rows("2x-solo-shuffle", 1, [1, 1], ttft=[150, 158]))
    row = winner_table(cells, TTFT).rows[0]
    assert row.verdict.label() == "Shuffle (-23%)"
    assert row.vs_solo["2x-solo-shuffle"] == pytest.approx(-23.0)


def test_margin_is_against_the_runner_up_not_the_worst() -> None:
    cells = frame(cell_rows("solo", 1, [100, 100]), cell_rows("tp2-mp", 1, [150, 150]),
                  cell_rows("tp2-ray", 1, [120, 120]))
    verdict = winner_table(cells, DECODE).rows[0].verdict
    assert verdict.runner_up == "tp2-ray"
    assert verdict.margin_pct == pytest.approx(25.0)


@pytest.mark.parametrize(
    ("best", "runner", "tie"),
    [
        ((100, 5), (90, 5), True),  # [95, 105] and [85, 95] touch: a tie
        ((100, 5), (89.9, 5), False),  # [95, 105] and [84.9, 94.9]: a gap of 0.1
        ((100, 0), (100, 0), True),  # single runs, equal means
        ((100, 0), (99.99, 0), False),  # single runs, any difference counts
        ((100, 20), (60, 20), True),  # [80, 120] and [40, 80]
        ((100, 1), (95, 10), True),  # a wide runner-up interval reaching into the winner's
    ],
)
def test_tie_is_overlap_of_closed_mean_std_intervals(best: tuple, runner: tuple, tie: bool) -> None:
    verdict = decide([stat("solo", *runner), stat("tp2-mp", *best)], higher_is_better=True)
    # equal means keep the display order, so only a strictly better mean is sure to win
    assert verdict.winner == ("tp2-mp" if best[0] > runner[0] else "solo")
    assert verdict.tie is tie
    assert spreads_overlap(stat("a", *best), stat("b", *runner)) is tie


def test_tie_edge_from_run_values() -> None:
    # runs 95/105 -> 100 ± 5, runs 85/95 -> 90 ± 5: intervals touch at 95
    cells = frame(cell_rows("solo", 1, [85, 95]), cell_rows("tp2-mp", 1, [95, 105]))
    verdict = winner_table(cells, DECODE).rows[0].verdict
    assert verdict.tie
    assert verdict.label() == "Cluster TP=2 ≈ Solo (tie)"


def test_lone_topology_wins_unopposed() -> None:
    verdict = decide([stat("tp2-mp", 10, 1)], higher_is_better=True)
    assert verdict.runner_up is None and math.isnan(verdict.margin_pct)
    assert verdict.label() == "Cluster TP=2 (only one)"
    assert decide([], higher_is_better=True) is None


def test_missing_topology_at_a_level_shows_a_dash_and_no_vs_solo() -> None:
    cells = frame(cell_rows("solo", 1, [40, 40]), cell_rows("solo", 2, [70, 70]), cell_rows("tp2-mp", 1, [60, 60]))
    display = winner_display(winner_table(cells, DECODE))
    assert display.headers == ["c", "Solo", "Cluster TP=2", "Winner", "Cluster TP=2 vs solo"]
    assert display.rows[1] == ["2", "70.0 ± 0.0", "—", "Solo (only one)", "—"]
    assert display.rows[0][-1] == "+50%"


def test_failed_requests_mark_the_cell() -> None:
    cells = frame(cell_rows("solo", 4, [100, 110], failed=[0, 2]))
    stat_ = winner_table(cells, DECODE).rows[0].cells["solo"]
    assert stat_.failed == 2 and stat_.requests == 8
    assert format_cell(stat_) == "105 ± 5 ⚠"
    report = build_report(cells)
    assert any("2 of 8 requests failed" in caveat for caveat in report.caveats)


def test_a_cell_whose_runs_all_failed_has_no_value_and_cannot_win() -> None:
    cells = frame(cell_rows("solo", 1, [40, 40]), cell_rows("tp2-mp", 1, [float("nan")], failed=[1]))
    row = winner_table(cells, DECODE).rows[0]
    assert row.verdict.winner == "solo" and row.verdict.runner_up is None
    assert format_cell(row.cells["tp2-mp"]) == "⚠ all failed"


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
