"""A report of one sweep (or one prediction): the analysis, and the same tables for every output format.

`build_report(cells, meta, requests)` computes everything once; `Report.to_markdown()`,
`render_html(report)` (reports/html.py) and `print_report(console, report)` (reports/console.py) only lay
out the display tables (reports/display.py) of `Report.sections()`, so a sweep, `topo predict` and `topo
report` print the same figures.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.records import CELL_KEY, RUN_KEY, client_cpu_bound, send_lag_bound
from bench.results_folder import FolderMeta
from reports.display import DisplayTable, tables_markdown
from reports.history import trend_display
from reports.names import BASELINE_TOPOLOGY, display_name, executor_partner, ordered_topologies
from reports.recommend import Recommendation, recommend
from reports.regress import RegressionResult
from reports.telemetry import TelemetrySection, telemetry_section
from reports.tables import (
    DEFAULT_MARGIN_PCT,
    METRICS,
    CellStat,
    RayTable,
    WinnerTable,
    format_pct,
    frontier_points,
    ray_tables,
    validate_cells,
    winner_table,
)

# A cell whose client needed more than this share of the TTFT (and more than the floor) just to put its
# batch on the wire did not load the server with c simultaneous requests: the client set the pace. The
# same rule as bench/session.py's per-run warning, applied to the stored cells.
FAILED_MARK = "⚠"
MISSING = "—"


@dataclass(frozen=True)
class ClientBoundCell:
    topology: str
    concurrency: int
    max_send_lag_ms: float
    ttft_ms: float
    client_cpu_frac: float = math.nan


@dataclass(frozen=True)
class Report:
    meta: FolderMeta | None  # None for a folder without meta.json
    winners: dict[str, WinnerTable]  # metric key -> table
    ray: list[RayTable]
    recommendations: list[Recommendation]
    startup_s: dict[str, float]
    ttft_percentiles: pd.DataFrame | None  # topology, concurrency, p50, p90, p99 (ms), from requests
    client_bound: list[ClientBoundCell]
    caveats: list[str]
    history: pd.DataFrame | None = None  # cells of earlier sweeps with a `sweep` column (reports/history.py)
    regression: RegressionResult | None = None  # the nightly gate's verdict against a baseline
    # workload -> topology -> (concurrency, t/s per user, t/s total): the frontier chart (reports/html.py)
    frontier: dict[str, dict[str, list[tuple[int, float, float]]]] | None = None
    telemetry: TelemetrySection | None = None  # energy, the servers' view, roofline (reports/telemetry.py)

    @property
    def topologies(self) -> list[str]:
        return self.winners[METRICS[0].key].topologies

    @property
    def model(self) -> str | None:
        return self.meta.model if self.meta else None

    @property
    def title(self) -> str:
        return f"Topology report — {self.model}" if self.model else "Topology report"

    def header_lines(self) -> list[str]:
        """Who/when/what from meta.json, the facts it has."""
        meta = self.meta
        if meta is None:
            return []
        lines = []

        def add(label: str, value: Any) -> None:
            if value not in (None, "", {}, []):
                lines.append(f"{label}: {_short(value)}")

        add("Kind", meta.kind)
        add("Status", meta.status)
        add("By", meta.who)
        when = meta.started_at
        if when and meta.finished_at:
            when = f"{when} → {meta.finished_at}"
        add("When", when)
        add("Cluster", meta.cluster)
        add("Recipe", meta.recipe)
        adaptive = meta.kind == "sweep" and "runs" in meta.spec and meta.spec["runs"] is None
        runs = (f"runs per cell until settled (at most {meta.spec.get('max_runs')})" if adaptive
                else f"{meta.runs} run(s) per level" if meta.runs else None)
        load = [f"pp{meta.pp}" if meta.pp else None, f"tg{meta.tg}" if meta.tg else None, runs]
        add("Load", ", ".join(part for part in load if part))
        if meta.timing:
            add("Time to decision", f"wall {meta.timing['wall_s']:.0f} s, serving measured requests "
                                    f"{meta.timing['serving_s']:.0f} s ({meta.timing['serving_share']:.0%})")
        add("Twin hardware", meta.spec.get("twin_hardware"))
        add("Git", meta.git_describe)
        add("Versions", ", ".join(f"{k} {v}" for k, v in meta.versions.items() if v))
        for topology, ran in meta.ran.items():  # what ran on each node (cluster/provenance.py)
            spans = ran.executor != "uni"  # NCCL crosses the link only when one engine spans nodes
            nodes = "; ".join(f"{node}: {facts.summary(with_link=spans)}" for node, facts in ran.nodes.items())
            lines.append(f"Ran {display_name(topology)}: executor {ran.executor}; {nodes}")
        add("Command", meta.command_line)
        return lines

    def _ray_kept(self, topology: str) -> str:
        """A start-up on a Ray cluster kept up from the topology before it left the Ray start out: say so."""
        source = self.meta.ray_kept_from.get(topology) if self.meta is not None else None
        return f": Ray cluster kept up from {display_name(source)}" if source else ""

    def sections(self) -> list[DisplayTable]:
        # the answer first, then the tables it rests on
        tables = [recommendations_display(self.recommendations)]
        tables += [winner_display(self.winners[m.key]) for m in METRICS]
        telemetry = self.telemetry.tables() if self.telemetry is not None else []
        tables += telemetry[:1]  # energy right after the winner tables
        tables += [ray_display(t) for t in self.ray]
        tables += telemetry[1:]
        if self.startup_s:
            tables.append(DisplayTable(
                "Start-up time per topology", ["Topology", "Start-up (s)"],
                [[display_name(t) + self._ray_kept(t), f"{self.startup_s[t]:.1f}"]
                 for t in ordered_topologies(self.startup_s)],
                intro="From launch to ready (readiness probe passed), as measured by the sweep."
                + (" A topology brought up on a Ray cluster kept up from the one before it did not start Ray."
                   if self.meta is not None and self.meta.ray_kept_from else ""),
            ))
        if self.ttft_percentiles is not None and not self.ttft_percentiles.empty:
            tables.append(percentiles_display(self.ttft_percentiles))
        if self.history is not None:
            tables += [trend_display(self.history, m) for m in METRICS]
        return tables

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        out += [f"- {line}" for line in self.header_lines()]
        if out[-1] != "":
            out.append("")
        if self.regression is not None:
            out += [self.regression.to_markdown()]
        out += tables_markdown(self.sections())
        out += ["## Caveats", ""]
        out += [f"- {caveat}" for caveat in self.caveats] or ["- none found in the data."]
        out.append("")
        return "\n".join(out)

def margin_of(meta: FolderMeta | None) -> float:
    """The practical margin the sweep was run with (its spec's margin_pct), else the default."""
    value = meta.spec.get("margin_pct") if meta else None
    return float(value) if isinstance(value, (int, float)) else DEFAULT_MARGIN_PCT


def build_report(cells: pd.DataFrame, meta: FolderMeta | None = None, requests: pd.DataFrame | None = None,
                 *, history: pd.DataFrame | None = None, regression: RegressionResult | None = None,
                 unmerged_parts: int = 0, telemetry: pd.DataFrame | None = None,
                 margin_pct: float | None = None) -> Report:
    """Analyse one sweep's cells (cells.parquet rows); meta.json and requests.parquet are optional.

    A nightly run adds `history` (earlier sweeps' cells with a `sweep` column, this one included: trend
    tables and charts) and `regression` (compare_sweeps against the baseline: shown first).
    `unmerged_parts` counts the folder's part files not merged yet (their rows are in `cells`).
    `telemetry` (telemetry.parquet) adds energy, the servers' view per cell and time charts; the roofline
    needs only the hardware and model the meta names.
    `margin_pct` (`--margin`) is the smallest difference that counts as a win; default: the sweep's own,
    else 3%.
    """
    cells = validate_cells(cells)
    margin = margin_of(meta) if margin_pct is None else margin_pct
    winners = {m.key: winner_table(cells, m, margin) for m in METRICS}
    startup = dict(meta.startup_s) if meta else {}
    client_bound = find_client_bound(cells)
    percentiles = ttft_percentiles(requests) if requests is not None else None
    notes = meta_caveats(meta) + caveats(cells, winners, client_bound)
    if unmerged_parts:
        notes.append(f"{unmerged_parts} part file(s) of this folder are not merged yet (a sweep still running, or "
                     "one that stopped before its end); their runs are included here.")
    section = telemetry_section(cells, meta, requests, telemetry, margin)
    if section is not None:
        notes += section.warnings
    return Report(
        meta=meta,
        winners=winners,
        ray=ray_tables(cells, margin),
        recommendations=recommend(winners),
        startup_s=startup,
        ttft_percentiles=percentiles,
        client_bound=client_bound,
        caveats=notes,
        history=history,
        regression=regression,
        frontier=frontier_points(cells),
        telemetry=section,
    )


def find_client_bound(cells: pd.DataFrame) -> list[ClientBoundCell]:
    """Cells whose worst send lag or client CPU makes them client-bound by bench.records' rule (the one the
    bench session warns with)."""
    found = []
    for (topology, concurrency), rows in cells.groupby(["topology", "concurrency"], sort=True):
        lag = rows["max_send_lag_ms"].max() if "max_send_lag_ms" in rows else math.nan
        cpu = rows["client_cpu_frac"].max() if "client_cpu_frac" in rows else math.nan
        ttft = rows["ttft_ms"].mean()
        if send_lag_bound(lag, ttft) or client_cpu_bound(cpu):
            found.append(ClientBoundCell(str(topology), int(concurrency), float(lag), float(ttft), float(cpu)))
    order = ordered_topologies(c.topology for c in found)
    return sorted(found, key=lambda c: (order.index(c.topology), c.concurrency))


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(text: str, limit: int = 300) -> str:
    """The first line of a multi-line message (log tails stay in meta.json), without terminal colours."""
    line = ANSI_ESCAPE.sub("", text).strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def meta_caveats(meta: FolderMeta | None) -> list[str]:
    """What the sweep itself recorded: an unfinished status, topologies that failed, warnings."""
    if meta is None:
        return []
    notes = []
    if meta.status not in (None, "complete"):
        notes.append(f"The sweep's status is {meta.status!r}: not every planned cell may be here "
                     f"(`topo sweep --resume DIR` continues it).")
    for topology, error in meta.errors.items():
        notes.append(f"{display_name(str(topology))} failed during the sweep: {first_line(str(error))} "
                     f"(the whole message is in meta.json under errors).")
    for incident in meta.incidents:  # the watchdog's: a topology that stopped serving
        runs = incident.runs_failed
        failed = f"; run(s) {', '.join(map(str, runs))} of that cell failed with it" if runs else ""
        notes.append(f"Incident: {display_name(incident.topology)} hung at {incident.load} "
                     f"({first_line(incident.reason)}){failed}; {incident.action}.")
    notes += [f"Recorded during the sweep: {warning}" for warning in meta.warnings]
    return notes


def caveats(cells: pd.DataFrame, winners: dict[str, WinnerTable], client_bound: list[ClientBoundCell]) -> list[str]:
    notes = []
    for cell in client_bound:
        why = []
        if send_lag_bound(cell.max_send_lag_ms, cell.ttft_ms):
            why.append(f"the client took up to {cell.max_send_lag_ms:.1f} ms to send its batch, "
                       f"{cell.max_send_lag_ms / cell.ttft_ms:.0%} of the mean TTFT ({cell.ttft_ms:.0f} ms)")
        if client_cpu_bound(cell.client_cpu_frac):
            why.append(f"the client process used {cell.client_cpu_frac:.0%} of a CPU")
        notes.append(f"{display_name(cell.topology)} at c{cell.concurrency} may be client-bound: {'; '.join(why)}; "
                     f"the figures may describe the client more than the server.")
    decode = winners[METRICS[0].key]
    for row in decode.rows:
        for topology, stat in row.cells.items():
            if stat.failed:
                sent = f" of {stat.requests}" if stat.requests else ""
                notes.append(f"{display_name(topology)} at c{row.concurrency}: {stat.failed}{sent} requests failed "
                             f"(marked {FAILED_MARK}); its figures cover the successful requests only.")
    duplicated = cells.duplicated(list(RUN_KEY), keep=False)
    if duplicated.any():
        twice = cells.loc[duplicated, ["topology", "concurrency"]].drop_duplicates()
        where = ", ".join(f"{display_name(t)} c{c}" for t, c in twice.itertuples(index=False))
        notes.append(f"Some runs are stored twice ({where}): the results folder may have been written by two "
                     f"sweeps at once; every copy is counted.")
    runs = cells.groupby(list(CELL_KEY))["run"].nunique()
    if not runs.empty and runs.min() < 2:
        notes.append("Some cells have a single run: their interval is the noise inside that one batch and cannot "
                     "show run-to-run drift (`--runs auto` measures until the call is settled).")
    measured = set(decode.topologies)
    for topology in ordered_topologies(measured):
        other = executor_partner(topology)
        if other is not None and other not in measured:
            notes.append(f"No Ray vs no-Ray table for {display_name(topology)}: {display_name(other)} has no "
                         f"cells in this sweep.")
    if BASELINE_TOPOLOGY not in decode.topologies:
        notes.append("Solo was not measured, so there are no `vs solo` figures.")
    return notes


def ttft_percentiles(requests: pd.DataFrame) -> pd.DataFrame | None:
    """p50/p90/p99 of per-request TTFT (first_token - start, successful requests) per topology x concurrency."""
    needed = {"topology", "concurrency", "start", "first_token"}
    if requests.empty or not needed <= set(requests.columns):
        return None
    ok = requests
    if "error" in ok.columns:
        ok = ok[ok["error"].isna()]
    ok = ok[ok["first_token"].notna()]
    if ok.empty:
        return None
    ttft = (ok["first_token"].astype(float) - ok["start"].astype(float)) * 1000.0
    frame = pd.DataFrame({"topology": ok["topology"].astype(str), "concurrency": ok["concurrency"].astype(int),
                          "ttft": ttft})
    rows = []
    for (topology, concurrency), group in frame.groupby(["topology", "concurrency"], sort=True):
        values = group["ttft"].to_numpy()
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        rows.append({"topology": topology, "concurrency": concurrency, "p50": p50, "p90": p90, "p99": p99,
                     "n": int(values.size)})
    return pd.DataFrame(rows)


# ---- display tables -------------------------------------------------------------------------------------


def format_cell(stat: CellStat | None) -> str:
    """`4807 [4750–4860]`: the mean and its 95% interval; `(no CI)` when one value cannot give one."""
    if stat is None:
        return MISSING
    if not stat.has_value:
        return f"{FAILED_MARK} all failed"
    decimals = 0 if abs(stat.mean) >= 100 else 1
    if stat.interval.known:
        text = f"{stat.mean:.{decimals}f} [{stat.lo:.{decimals}f}–{stat.hi:.{decimals}f}]"
    else:
        text = f"{stat.mean:.{decimals}f} (no CI)"
    return f"{text} {FAILED_MARK}" if stat.failed else text


EXECUTOR_LABELS = {"-mp": "no Ray", "-ray": "Ray"}


def executor_label(topology: str) -> str:
    return next((label for suffix, label in EXECUTOR_LABELS.items() if topology.endswith(suffix)), topology)


def interval_methods(stats: list[CellStat]) -> str:
    """How the shown intervals were computed, in one phrase (over runs, within one run, or both)."""
    methods = {s.method for s in stats if s.has_value}
    parts = []
    if "runs" in methods:
        parts.append("over runs (Student t) where a cell has 2+ runs")
    if "within-run" in methods:
        parts.append("within the one run (bootstrap: decode over its steps, prefill and TTFT over its requests)"
                     " where a cell has one run")
    if "none" in methods:
        parts.append("none where one value gives no interval (no CI)")
    return "; ".join(parts) or "none"


def winner_display(table: WinnerTable) -> DisplayTable:
    metric = table.metric
    layouts = list(table.layouts)
    vs = table.vs_solo_layouts
    headers = ["c"] + [table.layout_title(layout) for layout in layouts] + ["Winner"]
    headers += [f"{table.layout_title(layout)} vs solo" for layout in vs]
    rows = []
    for row in table.rows:
        line = [str(row.concurrency)]
        for layout in layouts:
            stat = row.cells.get(layout)
            text = format_cell(stat)
            if stat is not None and sum(t in row.topology_cells for t in table.layouts[layout]) > 1:
                text += f" ({executor_label(stat.topology)})"
            line.append(text)
        line.append(row.verdict.label() if row.verdict else MISSING)
        line += [format_pct(row.vs_solo.get(layout, math.nan)) for layout in vs]
        rows.append(line)
    better = "higher" if metric.higher_is_better else "lower"
    shown = [s for r in table.rows for s in r.cells.values()]
    notes = [
        f"Cells: mean [95% interval], {interval_methods(shown)}. Layouts are compared, each by its better executor "
        "at that level (named in brackets; the executors have their own table). A winner is called only when "
        f"its interval clears the runner-up's and the difference exceeds {table.margin_pct:g}%; otherwise "
        "`tie` names both and says why. The margin is relative to the best other layout.",
    ]
    if any(s.failed for s in shown):
        notes.append(f"{FAILED_MARK} = some requests of this cell failed (see Caveats).")
    main = list(range(len(layouts) + 2))
    parts = [("", main)]
    if vs:
        parts.append(("change vs solo", [0, *range(len(main), len(headers))]))
    return DisplayTable(f"{metric.title} ({metric.unit}) — {better} wins", headers, rows,
                        intro=f"{metric.description[0].upper()}{metric.description[1:]}, per concurrency level.",
                        notes=notes, parts=parts)


def ray_display(table: RayTable) -> DisplayTable:
    ray, mp = display_name(table.ray_topology), display_name(table.no_ray_topology)
    headers = ["c"]
    for metric in METRICS:
        headers += [f"{metric.title} ray", f"{metric.title} no-ray", f"{metric.title} gain", f"{metric.title} call"]
    rows = []
    for row in table.rows:
        line = [str(row.concurrency)]
        for metric in METRICS:
            verdict = row.verdict.get(metric.key)
            call = MISSING
            if verdict is not None and verdict.runner_up is not None:
                call = f"tie ({verdict.why})" if verdict.tie else executor_label(verdict.winner)
            line += [format_cell(row.ray[metric.key]), format_cell(row.no_ray[metric.key]),
                     format_pct(row.gain_pct[metric.key]), call]
        rows.append(line)
    return DisplayTable(
        f"Ray vs no-Ray: {ray} vs {mp}", headers, rows,
        intro=f"Same engine layout, executor over Ray ({table.ray_topology}) or PyTorch distributed "
              f"({table.no_ray_topology}).",
        notes=["gain = (ray − no-ray) / no-ray: positive is better for decode and prefill; for TTFT negative "
               "means Ray answers sooner. call: the better executor by the winner tables' rule, or tie."],
        parts=[(metric.title, [0, 1 + 4 * i, 2 + 4 * i, 3 + 4 * i, 4 + 4 * i]) for i, metric in enumerate(METRICS)],
    )


def recommendations_display(recommendations: list[Recommendation]) -> DisplayTable:
    rows = [[r.use_case, r.range_text if r.levels else MISSING, r.choice(), r.evidence()] for r in recommendations]
    return DisplayTable(
        "When to use which topology", ["Use case", "Levels", "Use", "Because (measured)"], rows,
        intro="Derived from the measured cells (tables below): the layout with the best mean relative standing over the levels "
              "(decode for the first three rows, prefill for prefill-heavy, TTFT for latency at scale), by its better "
              "executor. Two names mean the difference is not settled or does not matter (same rule as the tables).",
        notes=[SYNTHETIC_SHAPE_NOTE],
    )


# The use cases above are named after concurrency ranges of one request shape; a workload suite measures them.
SYNTHETIC_SHAPE_NOTE = ("These rows are inferred from one synthetic shape (one prompt and answer length, closed "
                        "batches), not measured on the workloads they name: `topo sweep --workload arena` measures "
                        "chat, RAG, agents, big contexts, a peak hour and capacity under a latency limit.")


def percentiles_display(percentiles: pd.DataFrame) -> DisplayTable:
    topologies = ordered_topologies(percentiles["topology"])
    headers = ["c"] + [f"{display_name(t)} p50 / p90 / p99" for t in topologies]
    rows = []
    for concurrency in sorted(percentiles["concurrency"].unique()):
        line = [str(concurrency)]
        for topology in topologies:
            match = percentiles[(percentiles["topology"] == topology) & (percentiles["concurrency"] == concurrency)]
            if match.empty:
                line.append(MISSING)
            else:
                p = match.iloc[0]
                line.append(f"{p.p50:.0f} / {p.p90:.0f} / {p.p99:.0f}")
        rows.append(line)
    return DisplayTable("TTFT percentiles (ms, per request)", headers, rows,
                        intro="Over every successful request of the cell (requests.parquet).")


def _short(value: Any) -> str:
    if isinstance(value, dict):
        if "name" in value:
            return str(value["name"])
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)
