"""Trends over several sweeps, for the nightly report: each cell's mean, sweep after sweep.

Input: the cells.parquet rows of several sweeps concatenated, with a `sweep` column naming the sweep (its
folder name, say) and optionally `started` (when it ran; ISO text or a timestamp) to order them; without
`started` sweeps are ordered by name. `load_history(dirs)` builds this from results folders; `topo
history` may build the same frame with DuckDB over the Parquet files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from bench.results_folder import ResultsFolder
from common.errors import ResultsError
from reports.names import display_name, ordered_topologies
from reports.display import DisplayTable
from reports.tables import MetricSpec, format_value, validate_cells

TREND_COLUMNS_SHOWN = 10  # sweeps in a Markdown trend table (the chart shows them all)


def load_history(directories: Iterable[Path | str]) -> pd.DataFrame:
    """Every folder's cells with `sweep` (folder name) and `started` (meta.json's started_at)."""
    frames = []
    for directory in directories:
        contents = ResultsFolder(directory).load(with_requests=False)
        cells = validate_cells(contents.cells, source=str(contents.directory))
        cells["sweep"] = contents.directory.name
        cells["started"] = contents.meta.started_at if contents.meta else None
        frames.append(cells)
    if not frames:
        raise ResultsError("no results folders given for a history")
    return pd.concat(frames, ignore_index=True)


def sweep_order(history: pd.DataFrame) -> list[str]:
    """Sweeps oldest first: by `started` when every sweep has one, else by name."""
    sweeps = history.drop_duplicates("sweep")
    if "started" in sweeps.columns and sweeps["started"].notna().all():
        started = pd.to_datetime(sweeps["started"], utc=True, errors="coerce")
        if started.notna().all():
            return list(sweeps.assign(_t=started).sort_values(["_t", "sweep"])["sweep"].astype(str))
    return sorted(sweeps["sweep"].astype(str))


def cell_means(history: pd.DataFrame, metric: MetricSpec) -> pd.DataFrame:
    """One row per (sweep, topology, concurrency): mean and population std over the sweep's runs."""
    if "sweep" not in history.columns:
        raise ResultsError("a history needs a `sweep` column naming the sweep of every row")
    history = validate_cells(history, source="history")
    grouped = history.groupby(["sweep", "topology", "concurrency"])[metric.key]
    return grouped.agg(mean="mean", std=lambda v: float(v.std(ddof=0))).reset_index()


def trend_display(history: pd.DataFrame, metric: MetricSpec) -> DisplayTable:
    order = sweep_order(history)
    shown = order[-TREND_COLUMNS_SHOWN:]
    means = cell_means(history, metric).set_index(["sweep", "topology", "concurrency"])["mean"]
    rows = []
    for topology in ordered_topologies(history["topology"].astype(str)):
        for concurrency in sorted(history.loc[history["topology"] == topology, "concurrency"].unique()):
            row = [display_name(topology), str(int(concurrency))]
            for sweep in shown:
                value = means.get((sweep, topology, concurrency), math.nan)
                row.append(format_value(float(value)))
            rows.append(row)
    intro = f"Mean {metric.title.lower() if metric.title != 'TTFT' else 'TTFT'} ({metric.unit}) per sweep, oldest first"
    if len(order) > len(shown):
        intro += f"; the last {len(shown)} of {len(order)} sweeps"
    return DisplayTable(f"Trend: {metric.title} ({metric.unit})", ["Topology", "c", *shown], rows, intro=intro + ".")


def trend_figure(history: pd.DataFrame, metric: MetricSpec,
                 colours: Callable[[list[str]], dict[str, str]]) -> go.Figure:
    """One line per (topology, concurrency) across sweeps; only the highest concurrency shown at first."""
    order = sweep_order(history)
    means = cell_means(history, metric)
    figure = go.Figure()
    topologies = ordered_topologies(means["topology"].astype(str))
    top_level = int(means["concurrency"].max())
    colour_of = colours(topologies)
    for topology in topologies:
        mine = means[means["topology"] == topology]
        for concurrency in sorted(mine["concurrency"].unique()):
            rows = mine[mine["concurrency"] == concurrency].set_index("sweep").reindex(order)
            figure.add_trace(go.Scatter(
                x=order, y=rows["mean"], name=f"{display_name(topology)} c{int(concurrency)}",
                legendgroup=topology, mode="lines+markers",
                line={"color": colour_of[topology]},
                error_y={"type": "data", "array": rows["std"].fillna(0.0), "visible": True},
                visible=True if int(concurrency) == top_level else "legendonly",
            ))
    better = "higher" if metric.higher_is_better else "lower"
    figure.update_layout(
        title={"text": f"{metric.title} over sweeps ({metric.unit}, {better} is better)"},
        xaxis={"title": {"text": "sweep"}, "type": "category"},
        yaxis={"title": {"text": metric.unit}, "rangemode": "tozero"},
        height=420, template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 40},
    )
    return figure
