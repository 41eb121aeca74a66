"""Trends over sweeps and the nightly report (gate first, trend tables and charts)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.results_folder import FolderMeta, ResultsFolder
from common.errors import ResultsError
from reports.history import cell_means, load_history, sweep_order, trend_display
from reports.html import render_html
from reports.regress import compare_sweeps
from reports.report import build_report
from reports.tables import DECODE
from tests.reports.fixtures import cell_rows, frame


def sweep_dir(root: Path, name: str, started: str | None, decode: list[float]) -> Path:
    directory = root / name
    directory.mkdir()
    frame(cell_rows("solo", 1, decode), cell_rows("tp2-mp", 1, [d * 1.5 for d in decode])).to_parquet(
        directory / "cells.parquet")
    if started is not None:
        ResultsFolder(directory).write_meta(FolderMeta(kind="sweep", started_at=started))
    return directory


def test_history_from_folders_is_ordered_by_start_time(tmp_path: Path) -> None:
    # names sort b < c < z, but z ran first
    dirs = [sweep_dir(tmp_path, "b", "2026-11-21T02:00:00Z", [40, 42]),
            sweep_dir(tmp_path, "z", "2026-11-20T02:00:00Z", [38, 40]),
            sweep_dir(tmp_path, "c", "2026-11-22T02:00:00Z", [30, 30])]
    history = load_history(dirs)
    assert sweep_order(history) == ["z", "b", "c"]
    means = cell_means(history, DECODE).set_index(["sweep", "topology"])
    assert means.loc[("b", "solo"), "mean"] == 41 and means.loc[("b", "solo"), "std"] == 1
    table = trend_display(history, DECODE)
    assert table.headers == ["Topology", "c", "z", "b", "c"]
    assert table.rows == [["Solo", "1", "39.0", "41.0", "30.0"], ["Cluster TP=2", "1", "58.5", "61.5", "45.0"]]


def test_without_start_times_sweeps_are_ordered_by_name(tmp_path: Path) -> None:
    history = load_history([sweep_dir(tmp_path, "2026-11-22", None, [1, 1]),
                            sweep_dir(tmp_path, "2026-11-20", None, [1, 1])])
    assert sweep_order(history) == ["2026-11-20", "2026-11-22"]


def test_history_errors(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no results folders"):
        load_history([])
    with pytest.raises(ResultsError, match="has no cells.parquet"):
        load_history([tmp_path])
    with pytest.raises(ResultsError, match="`sweep` column"):
        cell_means(frame(cell_rows("solo", 1, [1])), DECODE)


def nightly_report():
    sweeps = []
    for index, factor in enumerate((1.0, 1.01, 0.99, 0.8)):
        cells = frame(cell_rows("solo", 1, [40 * factor, 41 * factor, 39 * factor]),
                      cell_rows("tp2-mp", 1, [60 * factor, 61 * factor, 59 * factor]))
        cells["sweep"] = f"night-{index}"
        sweeps.append(cells)
    current = sweeps[-1].drop(columns="sweep")
    gate = compare_sweeps(sweeps[0].drop(columns="sweep"), current, baseline_label="night-0",
                          current_label="night-3")
    return build_report(current, FolderMeta(kind="sweep", spec={"model": "gemma4-26b"}), history=pd.concat(sweeps),
                        regression=gate)


def test_nightly_markdown_puts_the_gate_first_and_shows_trends() -> None:
    markdown = nightly_report().to_markdown()
    gate = markdown.index("## Regression gate: night-3 vs night-0")
    assert gate < markdown.index("## Decode (t/s)")
    assert "**FAIL: 2 regression, 4 unchanged of 6 cells" in markdown  # decode of both; prefill, TTFT constant
    assert "## Trend: Decode (t/s)" in markdown
    assert "| Solo | 1 | 40.0 | 40.4 | 39.6 | 32.0 |" in markdown


def test_nightly_html_has_the_gate_and_trend_charts() -> None:
    page = render_html(nightly_report())
    assert 'class="gate fail"' in page
    for metric in ("decode_tps", "prefill_tps", "ttft_ms"):
        assert f'id="trend-{metric}"' in page
