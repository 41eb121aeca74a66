"""The sweep's terminal lines: a suite's points are told apart by their test, not only by a shared label."""

from __future__ import annotations

from rich.console import Console

from bench.workload import ClosedLoad, OpenLoad
from topo.progress import RichSweepProgress


def row(workload: str, **values: float) -> dict:
    return {"workload": workload, "decode_tps": 100.0, "prefill_tps": 2000.0, "ttft_ms": 150.0, "failed": 0} | values


def printed(action) -> str:
    console = Console(record=True, width=120, force_terminal=False)
    progress = RichSweepProgress(console)
    action(progress)
    return console.export_text()


def test_a_suites_cell_line_names_its_test_and_the_default_shape_does_not() -> None:
    text = printed(lambda p: (p.cell_done("solo", OpenLoad(0.3, requests=50), [row("07-office-baseline")], []),
                              p.cell_done("solo", OpenLoad(0.3, requests=50), [row("08-sharegpt", failed=2)], ["lag"]),
                              p.cell_done("solo", ClosedLoad(4), [row("default")], [])))
    lines = text.splitlines()
    assert lines[0].startswith("  solo 07-office-baseline 0.3rps decode  100.0 t/s")
    assert lines[1].startswith("  solo 08-sharegpt 0.3rps decode") and "2 failed  client-bound?" in lines[1]
    assert lines[2].startswith("  solo c4   decode  100.0 t/s")


def test_the_plan_line_lists_repeated_labels_once_with_the_count() -> None:
    loads = [ClosedLoad(1), ClosedLoad(5), OpenLoad(0.3, requests=50), OpenLoad(0.3, requests=50),
             OpenLoad(0.2, requests=50)]

    def plan_line(shown: list) -> str:
        return printed(lambda p: (p.sweep_started(10, 0), p.topology_started("solo", shown)))

    assert "bringing it up, then 5 load points (c1,c5,0.3rps,0.2rps)" in plan_line(loads)
    assert "bringing it up, then c1,c5" in plan_line(loads[:2])
