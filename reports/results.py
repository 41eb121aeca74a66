"""Reading a results folder (one sweep) and writing its report.md / report.html next to the data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from common.errors import ResultsError
from reports.report import Report, build_report
from reports.tables import validate_cells
from telemetry.store import TelemetryStore

CELLS_FILE = "cells.parquet"
REQUESTS_FILE = "requests.parquet"
META_FILE = "meta.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


@dataclass(frozen=True)
class Results:
    directory: Path
    cells: pd.DataFrame
    meta: dict[str, Any]
    requests: pd.DataFrame | None
    telemetry: pd.DataFrame | None = None


# what the report uses of requests.parquet (its per-token timestamps are the bulk of the file)
REQUEST_COLUMNS = ("topology", "concurrency", "run", "batch_start", "start", "first_token", "end",
                   "completion_tokens", "error")


def _read_parquet(path: Path, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    try:
        if columns is not None:
            present = set(pq.read_schema(path).names)
            return pd.read_parquet(path, columns=[c for c in columns if c in present])
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt or foreign file
        raise ResultsError(f"{path}: cannot be read as Parquet ({type(exc).__name__}: {exc})") from exc


def load_results(directory: Path | str) -> Results:
    """cells.parquet (required), meta.json and requests.parquet (optional) of one results folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: no such results folder")
    cells_path = directory / CELLS_FILE
    if not cells_path.is_file():
        raise ResultsError(f"{directory}: has no {CELLS_FILE}; is it a results folder of `topo sweep`?")
    cells = validate_cells(_read_parquet(cells_path), source=str(cells_path))
    meta: dict[str, Any] = {}
    meta_path = directory / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{meta_path}: not readable JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise ResultsError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    requests_path = directory / REQUESTS_FILE
    requests = _read_parquet(requests_path, REQUEST_COLUMNS) if requests_path.is_file() else None
    store = TelemetryStore(directory)
    telemetry = store.read() if store.path.is_file() or any((directory / "parts").glob("telemetry-*")) else None
    return Results(directory, cells, meta, requests, telemetry)


def write_report(directory: Path | str, report: Report) -> tuple[Path, Path]:
    """Write report.md and report.html into the folder; returns their paths."""
    directory = Path(directory)
    md_path, html_path = directory / REPORT_MD, directory / REPORT_HTML
    try:
        md_path.write_text(report.to_markdown(), encoding="utf-8")
        html_path.write_text(report.to_html(), encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"{directory}: cannot write the report ({exc})") from exc
    return md_path, html_path


def render_results(directory: Path | str) -> tuple[Report, Path, Path]:
    """Re-render a results folder's report from its stored data (what `topo report DIR` does)."""
    results = load_results(directory)
    report = build_report(results.cells, results.meta, results.requests, telemetry=results.telemetry)
    md_path, html_path = write_report(results.directory, report)
    return report, md_path, html_path
