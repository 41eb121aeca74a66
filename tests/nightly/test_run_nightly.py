"""run_nightly's policy (gate, meta, report, exit code) with the sweep replaced by stored cells: fast.

The real sweep under `topo nightly` is covered by test_nightly_command.py (slow)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.results_folder import FolderMeta, ResultsFolder
from common.errors import ResultsError
from reports.regress import RegressionPolicy
from tests.reports.fixtures import cell_rows, frame
from topo import nightly
from topo.exits import EXIT_FAILURES
from topo.nightly import plan_nightly, run_nightly, set_tag
from topo.sweep import SweepOutcome, SweepSpec

SPEC = SweepSpec(topologies=("solo", "tp2-mp"), concurrency=(1,), runs=3, twin_hardware="fast")


def fake_sweep(decode: float, errors: dict[str, str] | None = None):
    """A run_sweep that stores three runs per cell at once, as the real one would have measured them."""

    async def run_sweep(sweep, directory: Path, progress, *, command_line=()) -> SweepOutcome:
        folder = ResultsFolder(directory)
        started = f"2026-11-2{directory.name[0]}T02:00:00+00:00"  # the folders are named 1-..., 2-..., in order
        folder.write_meta(FolderMeta(kind="sweep", status="incomplete" if errors else "complete",
                                     spec=sweep.spec.to_json(), started_at=started, errors=errors or {}))
        runs = [decode * 0.99, decode, decode * 1.01]
        folder.write_cells(frame(cell_rows("solo", 1, runs), cell_rows("tp2-mp", 1, [1.5 * d for d in runs])))
        return SweepOutcome(directory, "incomplete" if errors else "complete", dict(errors or {}), measured_runs=6)

    return run_sweep


def night(monkeypatch: pytest.MonkeyPatch, root: Path, name: str, decode: float, **sweep: object):
    monkeypatch.setattr(nightly, "run_sweep", fake_sweep(decode, **sweep))  # type: ignore[arg-type]
    plan = plan_nightly(SPEC, root, "nightly", RegressionPolicy(), out=root / name)
    return plan, asyncio.run(run_nightly(plan, progress=None))  # type: ignore[arg-type]


def test_a_first_night_then_a_clean_one_then_a_regression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "results"
    plan, first = night(monkeypatch, root, "1-first", 40.0)
    assert plan.baseline_dir is None and first.regression is None and first.exit_code == 0
    meta = ResultsFolder(root / "1-first").read_meta()
    assert meta.nightly is not None and meta.nightly.baseline == "nightly" and meta.nightly.exit_code == 0
    assert not plan.paths.junit.exists() and first.report_paths[0].is_file()
    set_tag(root, root / "1-first", "nightly")

    _, clean = night(monkeypatch, root, "2-clean", 40.0)
    assert clean.exit_code == 0 and clean.regression is not None and not clean.regression.failing
    assert clean.trend_sweeps == 2

    plan, slow = night(monkeypatch, root, "3-slow", 30.0)
    assert slow.exit_code == 1
    assert {(c.topology, c.metric.key) for c in slow.regression.regressions} == {("solo", "decode_tps"),
                                                                                 ("tp2-mp", "decode_tps")}
    assert plan.paths.junit.is_file() and plan.paths.markdown.is_file()
    meta = ResultsFolder(root / "3-slow").read_meta()
    assert meta.nightly.exit_code == 1 and meta.nightly.baseline_folder.endswith("1-first")
    assert meta.nightly.summary.startswith("FAIL")
    report = slow.report_paths[0].read_text()
    assert report.index("Regression gate") < report.index("Trend: Decode")
    assert all(name in report.split("Trend: Decode")[1] for name in ("1-first", "2-clean", "3-slow"))


def test_without_a_baseline_a_failed_topology_still_fails_the_night(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, outcome = night(monkeypatch, tmp_path / "results", "1", 40.0, errors={"tp2-mp": "did not come up"})
    assert outcome.regression is None and outcome.exit_code == EXIT_FAILURES  # 3: results written, a part failed


def test_a_night_that_measured_nothing_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def nothing(sweep, directory: Path, progress, *, command_line=()) -> SweepOutcome:
        return SweepOutcome(directory, "incomplete", {"solo": "no node"}, measured_runs=0)

    monkeypatch.setattr(nightly, "run_sweep", nothing)
    plan = plan_nightly(SPEC, tmp_path, "nightly", RegressionPolicy(), out=tmp_path / "n")
    with pytest.raises(ResultsError, match="measured nothing .no node."):
        asyncio.run(run_nightly(plan, progress=None))  # type: ignore[arg-type]
