"""The report's telemetry part on hand-made data: the time chart's queues, the energy winner."""

from __future__ import annotations

import pandas as pd

from reports.telemetry import energy_display, time_chart


def test_a_run_end_sample_next_to_a_tick_is_not_counted_twice() -> None:
    # the agent samples on its rhythm and once more when a run ends: two samples of one engine in a second
    rows = [{"topology": "solo", "source": "engine:node1", "node": "node1", "t": t, "metric": "requests_running",
             "value": 64.0} for t in (10.0, 10.3, 11.0)]
    rows += [{"topology": "solo", "source": "engine:node2", "node": "node2", "t": t, "metric": "requests_running",
              "value": 8.0} for t in (10.1, 11.1)]
    figure = time_chart(pd.DataFrame(rows), None, "solo")
    running = next(trace for trace in figure.data if trace.name == "running")
    assert list(running.y) == [72.0, 72.0]  # per second: each engine once, summed over engines


def energy_row(topology: str, j_per_token: float, lo: float, hi: float, runs: int = 3) -> dict:
    return {"topology": topology, "concurrency": 1, "runs": runs, "j_per_token": j_per_token,
            "tokens_per_s_per_w": 1 / j_per_token, "j_per_token_lo": lo, "j_per_token_hi": hi}


def test_energy_table_calls_a_winner_by_the_winner_tables_rule() -> None:
    # separate intervals and 20% apart: a win
    table = energy_display(pd.DataFrame([energy_row("solo", 1.0, 0.95, 1.05), energy_row("tp2-mp", 1.25, 1.2, 1.3)]))
    assert table.rows == [["1", "1.00 J · 1.00 t/s/W", "1.25 J · 0.80 t/s/W", "Solo (-20%)"]]
    # 2% apart with tight intervals: under the margin, a tie naming both
    table = energy_display(pd.DataFrame([energy_row("solo", 1.0, 0.999, 1.001), energy_row("tp2-mp", 1.02, 1.019, 1.021)]))
    assert table.rows[0][-1] == "tie: Solo or Cluster TP=2 (-2.0%, < 3%)"
    # 20% apart but overlapping intervals, or one run each (no interval): not real enough to call
    table = energy_display(pd.DataFrame([energy_row("solo", 1.0, 0.6, 1.4), energy_row("tp2-mp", 1.25, 1.2, 1.3)]))
    assert table.rows[0][-1].startswith("tie: Solo or Cluster TP=2 (-20%, intervals overlap")
    nan = float("nan")
    table = energy_display(pd.DataFrame([energy_row("solo", 1.0, nan, nan, 1), energy_row("tp2-mp", 1.25, nan, nan, 1)]))
    assert table.rows[0][-1].startswith("tie: Solo or Cluster TP=2 (-20%, no interval")
    # a larger --margin turns the 20% win into a tie
    table = energy_display(pd.DataFrame([energy_row("solo", 1.0, 0.95, 1.05), energy_row("tp2-mp", 1.25, 1.2, 1.3)]),
                           margin_pct=25)
    assert table.rows[0][-1].startswith("tie: Solo or Cluster TP=2 (-20%, < 25%")
