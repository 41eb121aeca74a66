"""The workload report says what a reader must know before trusting a row: failed requests, and cells
where the client (not the server) set the pace, by bench.records' rules."""

from __future__ import annotations

import pandas as pd

from bench.results_folder import FolderMeta
from bench.suite import load_suite
from reports.workloads import WorkloadReport, workload_caveats, workload_markdown


def cell(topology: str, load: str, **values: float) -> dict:
    row = {"topology": topology, "workload": "10-monday-peak", "load": load, "run": 0, "requests": 300,
           "failed": 0, "rate": 1.5, "max_send_lag_ms": 2.0, "ttft_ms": 400.0, "client_cpu_frac": 0.2}
    return row | values


def test_failed_requests_and_a_client_behind_its_schedule_are_named_per_cell() -> None:
    cells = pd.DataFrame([cell("solo", "1.5rps"),
                          cell("tp2-mp", "1.5rps", failed=7),
                          cell("tp2-ray", "1.5rps", max_send_lag_ms=90.0)])  # a tenth of a 667 ms gap is 67 ms
    notes = workload_caveats(cells)
    assert notes == [
        "Cluster TP=2 10-monday-peak 1.5rps: 7 of 300 requests failed; its figures cover the successful requests only.",
        "Cluster TP=2 (Ray) 10-monday-peak 1.5rps may be client-bound: the client's send lag reached 90 ms, a large "
        "share of the TTFT it measured; the client fell behind its arrival schedule by up to 90 ms; the figures may "
        "describe this machine's client more than the server.",
    ]


def test_a_lag_inside_a_tenth_of_the_gap_and_of_the_ttft_is_not_flagged() -> None:
    cells = pd.DataFrame([cell("solo", "1.5rps", max_send_lag_ms=30.0), cell("solo", "3rps", rate=3.0,
                                                                              max_send_lag_ms=30.0)])
    assert workload_caveats(cells) == []


def test_when_most_cells_are_client_bound_the_report_says_so_first_and_keeps_the_sweeps_record() -> None:
    cells = pd.DataFrame([cell("solo", "1.5rps", client_cpu_frac=0.95), cell("tp2-mp", "1.5rps", client_cpu_frac=0.9),
                          cell("tp2-ray", "1.5rps")])
    meta = FolderMeta(kind="sweep", status="interrupted", errors={"2x-solo-shuffle": "proxy did not start"},
                      warnings=["solo: 10-monday-peak 1.5rps run 0: client-bound? the client process used 95% of a CPU"])
    notes = workload_caveats(cells, meta)
    assert notes[0].startswith("The sweep's status is 'interrupted'")
    assert notes[1].startswith("Shuffle failed during the sweep: proxy did not start")
    assert notes[2].startswith("2 of 3 cells may be client-bound")
    assert [n for n in notes if "used 95% of a CPU" in n] == [
        "Solo 10-monday-peak 1.5rps may be client-bound: the client process used 95% of a CPU; the figures may "
        "describe this machine's client more than the server."]  # once, from the data, not again from the warning
    markdown = workload_markdown(WorkloadReport(load_suite("arena"), cells, caveats=tuple(notes)), "t")
    caveats = markdown[markdown.index("## Caveats"):]
    assert "- 2 of 3 cells may be client-bound" in caveats and markdown.index("## 10-monday-peak") < markdown.index("## Caveats")
