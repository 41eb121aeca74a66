"""Workload tables call winners by the winner tables' rule: a win must clear the runner-up's 95% interval
and exceed the margin; otherwise a tie that names both (issue 11's rule on issue 10's tables)."""

from __future__ import annotations

import pandas as pd

from bench.suite import load_suite
from bench.metrics import Capacity
from reports.workloads import VIEWS, WorkloadReport, capacity_verdict, verdict, when_to_use

CHAT = next(t for t in load_suite("arena").tests if t.id == "01-chat")


def runs(topology: str, values: list[float], load: str = "c10", key: str = "decode_tps_req") -> list[dict]:
    return [{"workload": CHAT.id, "load": load, "topology": topology, "concurrency": 10, "run": run, key: value,
             "failed": 0, "requests": 10} for run, value in enumerate(values)]


def cells(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for group in groups for row in group])


def test_a_clear_material_difference_wins() -> None:
    frame = cells(runs("solo", [30.0, 30.3, 29.8]), runs("tp2-mp", [40.0, 40.4, 39.9]))
    win, _ = verdict(frame, CHAT, "c10", VIEWS["decode_tps_req"])
    assert win is not None and win.winner == "tp2-mp" and not win.tie
    assert win.label().startswith("Cluster TP=2 (+3")


def test_a_difference_under_the_margin_is_a_tie_naming_both() -> None:
    frame = cells(runs("solo", [30.0, 30.1, 30.05]), runs("tp2-mp", [30.6, 30.65, 30.7]))  # +2%, tight
    win, _ = verdict(frame, CHAT, "c10", VIEWS["decode_tps_req"])
    assert win is not None and win.tie and win.why == "< 3%"
    assert "Solo" in win.label() and "Cluster TP=2" in win.label()
    # a larger margin setting turns a 10% gap into a tie too; a smaller one lets 2% win
    frame = cells(runs("solo", [30.0, 30.1, 30.05]), runs("tp2-mp", [33.0, 33.1, 33.05]))
    assert not verdict(frame, CHAT, "c10", VIEWS["decode_tps_req"], margin_pct=3)[0].tie
    assert verdict(frame, CHAT, "c10", VIEWS["decode_tps_req"], margin_pct=15)[0].tie


def test_a_large_difference_inside_overlapping_intervals_is_a_tie() -> None:
    frame = cells(runs("solo", [20.0, 40.0, 30.0]), runs("tp2-mp", [25.0, 45.0, 35.0]))  # +17%, noisy
    win, _ = verdict(frame, CHAT, "c10", VIEWS["decode_tps_req"])
    assert win is not None and win.tie and win.why == "intervals overlap"


def test_one_run_of_a_metric_without_within_run_bounds_calls_no_winner() -> None:
    frame = cells(runs("solo", [30.0]), runs("tp2-mp", [40.0]))
    win, _ = verdict(frame, CHAT, "c10", VIEWS["decode_tps_req"])
    assert win is not None and win.tie and win.why == "no interval"


def test_a_layout_is_represented_by_its_better_executor() -> None:
    # Ray is the faster executor of TP=2 here: TP=2 wins as tp2-ray, and every topology is still listed
    frame = cells(runs("solo", [30.0, 30.3, 29.8]), runs("tp2-mp", [40.0, 40.4, 39.9]),
                  runs("tp2-ray", [44.0, 44.4, 43.9]))
    win, stats = verdict(frame, CHAT, "c10", VIEWS["decode_tps_req"])
    assert win is not None and win.winner == "tp2-ray" and not win.tie
    assert win.label().startswith("Cluster TP=2 (Ray) (+4")  # against solo, the best other layout, not tp2-mp
    assert {s.topology for s in stats} == {"solo", "tp2-mp", "tp2-ray"}
    # and when mp is the better executor, mp represents the layout
    frame = cells(runs("solo", [30.0, 30.3, 29.8]), runs("tp2-mp", [44.0, 44.4, 43.9]),
                  runs("tp2-ray", [20.0, 20.4, 19.9]))
    assert verdict(frame, CHAT, "c10", VIEWS["decode_tps_req"])[0].winner == "tp2-mp"


def test_when_to_use_and_the_test_table_say_tie_with_the_report_margin() -> None:
    suite = load_suite("arena").model_copy(update={"tests": [CHAT]})
    frame = cells(runs("solo", [30.0, 30.1, 30.05]), runs("tp2-mp", [31.5, 31.55, 31.6]))  # +5%
    assert "Cluster TP=2 (+5" in when_to_use(frame, suite).rows[0][3]
    report = WorkloadReport(suite, frame, margin_pct=10)
    rows = [row for table in report.sections() for row in table.rows]
    assert any(cell.startswith("tie: Cluster TP=2 or Solo") for row in rows for cell in row)


def test_an_open_loop_point_of_one_run_decides_on_its_own_bounds() -> None:
    peak = next(t for t in load_suite("arena").tests if t.id == "10-monday-peak")

    def one_run(topology: str, p99: float, lo: float, hi: float) -> dict:
        return {"workload": peak.id, "load": "1.5rps", "topology": topology, "concurrency": None, "run": 0,
                "ttft_user_p99_ms": p99, "ttft_user_p99_ms_lo": lo, "ttft_user_p99_ms_hi": hi,
                "failed": 0, "requests": 300}

    apart = pd.DataFrame([one_run("solo", 9000, 8000, 9900), one_run("tp2-mp", 3000, 2700, 3400)])
    win, _ = verdict(apart, peak, "1.5rps", VIEWS["ttft_p99_ms"])
    assert win is not None and win.winner == "tp2-mp" and not win.tie
    overlapping = pd.DataFrame([one_run("solo", 4000, 3000, 6000), one_run("tp2-mp", 3000, 2500, 4500)])
    win, _ = verdict(overlapping, peak, "1.5rps", VIEWS["ttft_p99_ms"])
    assert win is not None and win.tie and win.why == "intervals overlap"


def test_capacity_wins_by_the_margin_and_topologies_above_every_step_tie() -> None:
    assert capacity_verdict({"solo": Capacity(5, 0.71), "tp2-mp": Capacity(5, 0.95)}) == "Cluster TP=2 (+34%)"
    assert capacity_verdict({"solo": Capacity(5, 0.94), "tp2-mp": Capacity(5, 0.95)}) == \
        "tie: Cluster TP=2 or Solo (+1.1%, < 3%)"
    # three met the limit at every step up to 1 req/s: their capacities are somewhere above, not ranked
    found = {"solo": Capacity(5, 0.71), "tp2-mp": Capacity(5, 1.0, bounded=False),
             "tp2-ray": Capacity(5, 1.0, bounded=False), "2x-solo-shuffle": Capacity(5, 1.0, bounded=False)}
    assert capacity_verdict(found) == ("tie: Cluster TP=2 or Cluster TP=2 (Ray) or Shuffle (each met the limit at "
                                       "every step; measure higher rates)")
    # the only one above every step wins when the margin allows
    assert capacity_verdict({"solo": Capacity(5, 0.71), "tp2-mp": Capacity(5, 1.0, bounded=False)}) == \
        "Cluster TP=2 (+41%)"
    assert capacity_verdict({"solo": Capacity(5, None)}) == "none meets it"
