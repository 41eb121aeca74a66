""""When to use which topology" rows derived from fixture cells (tests/reports/fixtures.py: study_cells)."""

from __future__ import annotations

import math

import pytest

from reports.recommend import recommend
from reports.tables import METRICS, winner_table
from tests.reports.fixtures import cell_rows, frame, study_cells


def recommendations(cells):
    return {r.use_case: r for r in recommend({m.key: winner_table(cells, m) for m in METRICS})}


def test_each_row_is_derived_from_the_cells() -> None:
    rows = recommendations(study_cells())

    single = rows["Single user / low latency"]
    assert single.levels == [1, 2, 4]
    # layouts compete: TP=2 (by its better executor, no Ray) against the best other layout, Solo (ties Shuffle
    # below c8 and comes first in display order)
    assert (single.winner, single.runner_up) == ("tp2-mp", "solo")
    assert single.margin_pct == pytest.approx(50.0)  # 60 vs 40 at every level
    assert single.executor_alternative is None  # Ray trails by 10%, well outside the intervals
    assert single.figures["decode_tps"] == pytest.approx(60 * 7 / 3)  # mean of 60, 120, 240
    assert single.figures["ttft_ms"] == pytest.approx(150 * 7 / 3)
    assert single.evidence().startswith("decode 140 t/s, prefill 7000 t/s, TTFT 350 ms (mean over c1–c4); +50% decode")
    assert single.choice() == "Cluster TP=2"

    moderate = rows["Moderate concurrency"]
    assert moderate.levels == [8, 16, 32]
    assert (moderate.winner, moderate.runner_up) == ("2x-solo-shuffle", "tp2-mp")
    assert moderate.margin_pct == pytest.approx(100 * (80 / 60 - 1))

    top = rows["Maximum throughput"]
    assert top.levels == [64] and top.winner == "2x-solo-shuffle"
    assert "(at c64)" in top.evidence() and "decode 5120 t/s" in top.evidence()

    prefill = rows["Prefill-heavy (long prompts)"]
    assert prefill.levels == [1, 2, 4, 8, 16, 32, 64]
    assert (prefill.winner, prefill.runner_up) == ("tp2-mp", "solo")
    assert "+40% prefill vs Solo" in prefill.evidence()

    latency = rows["Latency-sensitive at scale"]
    assert latency.levels == [16, 32, 64]
    assert (latency.winner, latency.runner_up) == ("2x-solo-shuffle", "tp2-mp")
    assert latency.margin_pct == pytest.approx(100 * (100 / 150 - 1))  # -33%: lower TTFT
    assert "-33% TTFT vs Cluster TP=2" in latency.evidence()
    assert not any(r.tie for r in rows.values())


def test_changing_the_cells_changes_the_answer() -> None:
    # the same study, but Ray made faster than no-Ray at low concurrency
    cells = study_cells()
    faster = (cells["topology"] == "tp2-ray") & (cells["concurrency"] <= 4)
    cells.loc[faster, "decode_tps"] *= 1.5
    assert recommendations(cells)["Single user / low latency"].winner == "tp2-ray"


def test_rows_the_sweep_does_not_cover_say_so() -> None:
    cells = frame(cell_rows("solo", 1, [40, 40]), cell_rows("solo", 2, [70, 70]),
                  cell_rows("tp2-mp", 1, [60, 60]), cell_rows("tp2-mp", 2, [100, 100]))
    rows = recommendations(cells)
    for title in ("Moderate concurrency", "Latency-sensitive at scale"):
        assert rows[title].winner is None
        assert rows[title].choice() == "—"
        assert rows[title].evidence().startswith("not covered: the sweep measured no level in")
    assert rows["Maximum throughput"].levels == [2]
    assert rows["Maximum throughput"].winner == "tp2-mp"


def test_topologies_missing_a_level_are_left_out_and_named() -> None:
    cells = frame(cell_rows("solo", 1, [40, 40]), cell_rows("solo", 2, [70, 70]),
                  cell_rows("tp2-mp", 1, [600, 600]))  # far faster, but only measured at c1
    single = recommendations(cells)["Single user / low latency"]
    assert single.winner == "solo" and single.runner_up is None
    assert "the only layout measured there" in single.evidence()
    assert "not compared: Cluster TP=2 (not measured at every level of c1–c2)" in single.evidence()


def test_a_difference_under_the_margin_names_both() -> None:
    # 41 vs 40 (runs 39/43 and 38/42): +2.5%, under the 3% margin
    cells = frame(cell_rows("solo", 1, [38, 42]), cell_rows("2x-solo-shuffle", 1, [39, 43]))
    single = recommendations(cells)["Single user / low latency"]
    assert single.tie and single.why == "< 3%"
    assert single.choice() == "Shuffle or Solo: within 2.5%"


def test_a_large_difference_inside_the_intervals_names_both() -> None:
    # 45 vs 40 (+12.5%), but from 2 runs 10 apart: s = 7.07, half-width t(1) * s / sqrt(2) = 63.5: overlap
    cells = frame(cell_rows("solo", 1, [35, 45]), cell_rows("2x-solo-shuffle", 1, [40, 50]))
    single = recommendations(cells)["Single user / low latency"]
    assert single.tie and single.why == "intervals overlap"
    assert single.choice() == "Shuffle or Solo: intervals overlap (+12%)"


def test_a_clear_layout_whose_executors_tie_names_both_executors() -> None:
    # TP=2 beats solo by far; Ray is 1% behind no Ray: either executor will do
    cells = frame(cell_rows("solo", 1, [39, 40, 41]), cell_rows("tp2-mp", 1, [99, 100, 101]),
                  cell_rows("tp2-ray", 1, [98, 99, 100]))
    single = recommendations(cells)["Single user / low latency"]
    assert not single.tie and single.runner_up == "solo"
    assert single.executor_alternative == "tp2-ray"
    assert single.choice() == "Cluster TP=2 or Cluster TP=2 (Ray): within 1.0%"
    # a clear executor call leaves the one executor
    cells.loc[cells["topology"] == "tp2-ray", "decode_tps"] *= 0.5
    assert recommendations(cells)["Single user / low latency"].choice() == "Cluster TP=2"


def test_no_topology_covering_the_range() -> None:
    cells = frame(cell_rows("solo", 8, [40, 40]), cell_rows("tp2-mp", 16, [60, 60]))
    moderate = recommendations(cells)["Moderate concurrency"]
    assert moderate.winner is None and math.isnan(moderate.margin_pct)
    assert "no topology was measured at every level of c8–c16" in moderate.evidence()
