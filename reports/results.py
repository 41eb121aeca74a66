"""A results folder's report: read its data through bench's ResultsFolder, build the report, write it back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.results_folder import ResultsFolder
from reports.html import render_html
from reports.regress import RegressionResult
from reports.report import Report, build_report

# what the report uses of requests.parquet (its per-token timestamps are the bulk of the file)
REPORT_REQUEST_COLUMNS = ("topology", "concurrency", "run", "batch_start", "start", "first_token", "end",
                          "completion_tokens", "error")


def folder_report(folder: ResultsFolder, *, history: pd.DataFrame | None = None,
                  regression: RegressionResult | None = None, margin_pct: float | None = None) -> Report:
    """The report of one folder's stored data (unmerged parts included, and named in the caveats);
    `margin_pct` overrides the margin the folder was swept with."""
    contents = folder.load(REPORT_REQUEST_COLUMNS)
    return build_report(contents.cells, contents.meta, contents.requests, history=history, regression=regression,
                        unmerged_parts=contents.unmerged_parts, telemetry=contents.telemetry,
                        margin_pct=margin_pct)


def write_report(folder: ResultsFolder, report: Report) -> tuple[Path, Path]:
    """Write report.md and report.html into the folder; returns their paths."""
    return folder.write_report(report.to_markdown(), render_html(report))


def render_results(directory: Path | str, margin_pct: float | None = None) -> tuple[Report, Path, Path]:
    """Re-render a results folder's report from its stored data (what `topo report DIR` does)."""
    folder = ResultsFolder(directory)
    report = folder_report(folder, margin_pct=margin_pct)
    md_path, html_path = write_report(folder, report)
    return report, md_path, html_path

