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


def test_energy_table_names_the_lowest_joules_per_token() -> None:
    summary = pd.DataFrame([
        {"topology": "solo", "concurrency": 1, "j_per_token": 1.0, "tokens_per_s_per_w": 1.0},
        {"topology": "tp2-mp", "concurrency": 1, "j_per_token": 1.25, "tokens_per_s_per_w": 0.8},
    ])
    table = energy_display(summary)
    assert table.rows == [["1", "1.00 J · 1.00 t/s/W", "1.25 J · 0.80 t/s/W", "Solo (-20%)"]]
