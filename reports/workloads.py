"""The report of a workload suite: per-test tables, the capacity table, "when to use which topology".

Input: cells rows with `workload` and `load` columns (a sweep's or `topo predict --workload`'s) and the
suite they measured (stored in meta.json under `workloads`). Per test the Arena's figures: tokens/s per
user, tokens/s total, TTFT mean and P99 (open loop: the user's, from the due time, METRICS.md), goodput
where the test has an SLO. Capacity (rate sweeps): the highest rate whose p95 TTFT stays under each
limit, and what that means in users at the suite's think time. "When to use" rows come from the tests
that declare what they decide (`decides:` in the YAML) and were measured; a sweep of the default shape
only says its answer is inferred from one synthetic shape.

Winners follow the one rule of the winner tables (reports.tables.decide, METRICS.md "Deciding"): the best
wins only when its 95% interval clears the runner-up's and the difference exceeds the margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from bench.metrics import Capacity, capacity
from bench.records import CLIENT_BOUND_MARK, client_cpu_bound, schedule_lag_bound, send_lag_bound
from bench.results_folder import FolderMeta
from bench.suite import Suite, WorkloadTest, test_points
from common.config import validate_model
from reports.names import display_name, layouts, ordered_topologies
from reports.display import DisplayTable, tables_markdown
from reports.report import meta_caveats
from reports.tables import (DEFAULT_MARGIN_PCT, CellStat, Verdict, better, cell_stat, decide, format_pct,
                            relative_pct)


@dataclass(frozen=True)
class MetricView:
    key: str  # column of the cells frame
    title: str
    unit: str
    higher_is_better: bool
    digits: int = 1


VIEWS = {
    "decode_tps_req": MetricView("decode_tps_req", "Per-user decode", "t/s", True),
    "decode_tps": MetricView("decode_tps", "Total decode", "t/s", True),
    "output_tps": MetricView("output_tps", "Output", "t/s", True),
    "prefill_tps": MetricView("prefill_tps", "Prefill", "t/s", True, 0),
    "ttft_ms": MetricView("ttft_ms", "TTFT mean", "ms", False, 0),
    "ttft_user_ms": MetricView("ttft_user_ms", "TTFT mean (user)", "ms", False, 0),
    "ttft_p99_ms": MetricView("ttft_user_p99_ms", "TTFT P99 (user)", "ms", False, 0),
    "ttft_user_p95_ms": MetricView("ttft_user_p95_ms", "TTFT P95 (user)", "ms", False, 0),
    "goodput": MetricView("goodput", "Goodput", "share", True, 2),
    "achieved_rate": MetricView("achieved_rate", "Achieved", "req/s", True, 2),
    "peak_in_flight": MetricView("peak_in_flight", "Peak in flight", "requests", True, 0),
}


def suite_from_meta(meta: FolderMeta | None) -> Suite | None:
    data = meta.workloads if meta is not None else None
    return validate_model(Suite, data, source="meta.json workloads") if data else None


def has_workloads(cells: pd.DataFrame) -> bool:
    return "workload" in cells.columns and "load" in cells.columns and cells["workload"].notna().any()


def _means(cells: pd.DataFrame, test: WorkloadTest) -> pd.DataFrame:
    """Mean over runs per (load, topology), loads in the test's order."""
    rows = cells[cells["workload"] == test.id]
    numeric = rows.select_dtypes("number").columns
    means = rows.groupby(["load", "topology"], sort=False)[list(numeric)].mean().reset_index()
    order = [p.label for p in test_points(test)]
    means["_order"] = means["load"].map(lambda label: order.index(label) if label in order else len(order))
    return means.sort_values(["_order"], kind="stable").drop(columns="_order")


def _fmt(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if digits else f"{value:,.0f}"


def cell_stats(cells: pd.DataFrame, test: WorkloadTest, load: str, view: MetricView) -> list[CellStat]:
    """Each topology's runs of one load point of a test as a CellStat of the view's metric: its mean and its
    95% interval (over runs with 2+ runs; a single run has one only for the headline metrics, whose
    within-run bounds cells.parquet stores)."""
    rows = cells[(cells["workload"] == test.id) & (cells["load"] == load)]
    stats = []
    for topology in ordered_topologies(rows["topology"].astype(str)):
        runs = rows[rows["topology"] == topology]
        if view.key not in runs:
            continue
        levels = runs["concurrency"].dropna() if "concurrency" in runs else ()
        concurrency = int(levels.iloc[0]) if len(levels) else 0  # open loop: no level
        stats.append(cell_stat(runs, topology, concurrency, view.key))
    return stats


def verdict(cells: pd.DataFrame, test: WorkloadTest, load: str, view: MetricView,
            margin_pct: float = DEFAULT_MARGIN_PCT) -> tuple[Verdict | None, list[CellStat]]:
    """Best layout vs the runner-up by the winner tables' rule (reports.tables.decide: a win must clear
    the runner-up's interval and exceed the margin, else a tie naming both). As in the winner tables, a
    layout run with two executors (tp2-mp, tp2-ray) is represented by its better one at this load, named
    in the verdict (METRICS.md "The winner tables"). Returns the verdict and every measured topology's cell."""
    stats = [s for s in cell_stats(cells, test, load, view) if s.has_value]
    by_topology = {s.topology: s for s in stats}
    representatives = [better([by_topology[t] for t in variants], view.higher_is_better)
                       for variants in layouts(by_topology).values()]
    return decide([r for r in representatives if r is not None], view.higher_is_better, margin_pct), stats


def verdict_text(win: Verdict | None) -> str:
    return "—" if win is None else win.label()


def test_columns(test: WorkloadTest) -> list[MetricView]:
    if test.open_loop:
        views = [VIEWS["decode_tps_req"], VIEWS["output_tps"], VIEWS["ttft_user_ms"], VIEWS["ttft_p99_ms"],
                 VIEWS["achieved_rate"], VIEWS["peak_in_flight"]]
    else:
        views = [VIEWS["decode_tps_req"], VIEWS["decode_tps"], VIEWS["ttft_ms"], VIEWS["ttft_p99_ms"]]
    if test.slo is not None:
        views.append(VIEWS["goodput"])
    return views


def deciding_view(test: WorkloadTest) -> MetricView:
    if test.decides is not None and test.decides.metric in VIEWS:
        return VIEWS[test.decides.metric]
    return VIEWS["ttft_p99_ms"] if test.open_loop else VIEWS["decode_tps_req"]


def test_table(cells: pd.DataFrame, test: WorkloadTest, margin_pct: float = DEFAULT_MARGIN_PCT) -> DisplayTable:
    means = _means(cells, test)
    views = test_columns(test)
    topologies = ordered_topologies(means["topology"].astype(str))
    deciding = deciding_view(test)
    rows = []
    for load in dict.fromkeys(means["load"]):
        win, _ = verdict(cells, test, load, deciding, margin_pct)
        for topology in topologies:
            match = means[(means["load"] == load) & (means["topology"] == topology)]
            if match.empty:
                continue
            record = match.iloc[0]
            values = [_fmt(float(record[v.key]) if v.key in record else math.nan, v.digits) for v in views]
            rows.append([load, display_name(topology), *values, verdict_text(win) if topology == topologies[0] else ""])
    headers = ["Load", "Topology", *(f"{v.title} ({v.unit})" for v in views), f"Winner: {deciding.title}"]
    notes = [f"Winner: called only when its 95% interval clears the runner-up's and the difference exceeds "
             f"{margin_pct:g}%; otherwise `tie` names both and says why (METRICS.md \"Deciding\")."]
    if test.open_loop:
        notes.append("Open loop: TTFT is the user's, from the moment the request was due (queueing behind the "
                     "cap or a late client included); per-user t/s is decode after the first token.")
    if test.slo is not None:
        limits = [f"TTFT ≤ {test.slo.ttft_ms:g} ms" if test.slo.ttft_ms else "",
                  f"end-to-end ≤ {test.slo.e2e_ms:g} ms" if test.slo.e2e_ms else ""]
        notes.append("Goodput: share of requests with " + " and ".join(x for x in limits if x) + ".")
    title = f"{test.id}: {test.title or test.shape.describe()}"
    return DisplayTable(title, headers, rows, intro=test.shape.describe(), notes=notes)


def rate_steps(cells: pd.DataFrame, test: WorkloadTest, topology: str) -> list[tuple[float, float, float]]:
    """(offered rate, achieved rate, p95 user TTFT in s) per step of a rate sweep."""
    means = _means(cells, test)
    rows = means[means["topology"] == topology]
    return [(float(r["rate"]), float(r["achieved_rate"]), float(r["ttft_user_p95_ms"]) / 1000)
            for _, r in rows.iterrows()]


def capacity_table(cells: pd.DataFrame, test: WorkloadTest, think_time_s: float) -> DisplayTable:
    assert test.load.mode == "rate-sweep"
    limits = list(test.load.limits_s)
    topologies = ordered_topologies(cells.loc[cells["workload"] == test.id, "topology"].astype(str))
    rows = []
    for topology in topologies:
        steps = [(rate, p95) for rate, _, p95 in rate_steps(cells, test, topology)]
        row = [display_name(topology)]
        for limit in limits:
            found = capacity(steps, limit)
            users = f" ≈ {found.rate * think_time_s:.0f} users" if found.rate is not None else ""
            row.append(found.text() + users)
        rows.append(row)
    rates = ", ".join(f"{r:g}" for r in test.load.rates)
    return DisplayTable(
        f"Capacity ({test.id}): highest request rate under a p95 TTFT limit",
        ["Topology", *(f"p95 TTFT ≤ {limit:g} s" for limit in limits)], rows,
        intro=f"Steps at {rates} req/s; between the last step under a limit and the first over it the rate is "
              f"interpolated linearly. Users = rate × {think_time_s:g} s think time between a user's requests.",
        notes=["'none': even the lowest step was over the limit; '+': every step met it (capacity is higher)."],
    )


def capacity_verdict(found: dict[str, Capacity], margin_pct: float = DEFAULT_MARGIN_PCT) -> str:
    """The highest capacity wins only by more than the margin (one interpolated figure per topology: no
    interval to clear). Topologies that met the limit at every step share the top: their capacities lie
    above the highest step, by unknown amounts, so they tie until higher rates are measured."""
    ranked = sorted((t for t in found if found[t].rate), key=lambda t: found[t].rate or 0.0, reverse=True)
    if not ranked:
        return "none meets it"
    best = ranked[0]
    above = [t for t in ranked if not found[t].bounded]
    if len(above) > 1:
        names = " or ".join(display_name(t) for t in above)
        return f"tie: {names} (each met the limit at every step; measure higher rates)"
    if len(ranked) == 1:
        return display_name(best)
    runner = ranked[1]
    gain = relative_pct(found[best].rate or 0.0, found[runner].rate or 0.0)
    if gain <= margin_pct:
        return f"tie: {display_name(best)} or {display_name(runner)} ({format_pct(gain)}, < {margin_pct:g}%)"
    return f"{display_name(best)} ({format_pct(gain)})"


def when_to_use(cells: pd.DataFrame, suite: Suite, margin_pct: float = DEFAULT_MARGIN_PCT) -> DisplayTable:
    rows = []
    measured = set(cells["workload"].astype(str))
    for test in suite.tests:
        if test.decides is None or test.id not in measured:
            continue
        if test.decides.metric == "capacity":
            if test.load.mode != "rate-sweep":
                continue
            limit = 5.0 if 5.0 in test.load.limits_s else test.load.limits_s[0]
            found = {t: capacity([(r, p) for r, _, p in rate_steps(cells, test, t)], limit)
                     for t in ordered_topologies(cells.loc[cells["workload"] == test.id, "topology"].astype(str))}
            ranked = sorted(found, key=lambda t: found[t].rate or 0.0, reverse=True)
            detail = ", ".join(f"{display_name(t)} {found[t].text()}" for t in ranked)
            rows.append([test.decides.use, test.id, f"rate under {limit:g} s p95 TTFT",
                         capacity_verdict(found, margin_pct), detail])
            continue
        view = VIEWS.get(test.decides.metric, deciding_view(test))
        means = _means(cells, test)
        loads = list(dict.fromkeys(means["load"]))
        load = test.decides.at if test.decides.at in loads else (loads[-1] if loads else None)
        if load is None:
            continue
        win, stats = verdict(cells, test, load, view, margin_pct)
        detail = ", ".join(f"{display_name(s.topology)} {_fmt(s.mean, view.digits)}" for s in
                           sorted(stats, key=lambda s: s.mean, reverse=view.higher_is_better))
        if view.key == "ttft_user_p99_ms" and test.slo is not None:
            _, good = verdict(cells, test, load, VIEWS["goodput"], margin_pct)
            detail += "; goodput " + ", ".join(f"{display_name(s.topology)} {s.mean:.0%}" for s in good)
        rows.append([test.decides.use, test.id, f"{view.title} at {load}", verdict_text(win), detail])
    return DisplayTable("When to use which topology (measured workloads)",
                        ["Use", "Test", "Deciding metric", "Winner", "All topologies"], rows,
                        intro="Each row is a workload test that was measured, decided by the metric that matters "
                              "for that use.")


def workload_caveats(cells: pd.DataFrame, meta: FolderMeta | None = None) -> list[str]:
    """What a reader must know before trusting a row: the sweep's own record (status, failed topologies,
    warnings), then per cell its failed requests and whether the client, not the server, set the pace
    (bench.records' rules: send lag against TTFT, client CPU, and for open loop the lag behind the schedule)."""
    # the per-run client-bound warnings the sweep recorded are summed up per cell below, from the stored data
    notes = [note for note in meta_caveats(meta) if CLIENT_BOUND_MARK not in note]
    keys = ["topology", "workload", "load"]
    bound: list[str] = []
    cells_by_key = cells.groupby(keys, sort=False)
    for (topology, workload, load), rows in cells_by_key:
        where = f"{display_name(str(topology))} {workload} {load}"
        failed = int(_sum(rows, "failed"))
        if failed:
            sent = int(_sum(rows, "requests"))
            notes.append(f"{where}: {failed}{f' of {sent}' if sent else ''} requests failed; its figures cover the "
                         "successful requests only.")
        lag = _max(rows, "max_send_lag_ms")
        why = []
        if send_lag_bound(lag, _mean(rows, "ttft_ms")):
            why.append(f"the client's send lag reached {lag:.0f} ms, a large share of the TTFT it measured")
        if schedule_lag_bound(lag, _max(rows, "rate")):
            why.append(f"the client fell behind its arrival schedule by up to {lag:.0f} ms")
        if client_cpu_bound(_max(rows, "client_cpu_frac")):
            why.append(f"the client process used {_max(rows, 'client_cpu_frac'):.0%} of a CPU")
        if why:
            bound.append(f"{where} may be client-bound: {'; '.join(why)}; the figures may describe this machine's "
                         "client more than the server.")
    if bound and len(bound) * 2 > cells_by_key.ngroups:
        notes.append(f"{len(bound)} of {cells_by_key.ngroups} cells may be client-bound: this run measured the "
                     "machine it ran on as much as the topologies (a faster twin profile or a lower --rate-scale "
                     "leaves the client room).")
    return notes + bound


def _max(rows: pd.DataFrame, key: str) -> float:
    return float(pd.to_numeric(rows[key], errors="coerce").max()) if key in rows else math.nan


def _sum(rows: pd.DataFrame, key: str) -> float:
    return float(pd.to_numeric(rows[key], errors="coerce").fillna(0).sum()) if key in rows else 0.0


def _mean(rows: pd.DataFrame, key: str) -> float:
    return float(pd.to_numeric(rows[key], errors="coerce").mean()) if key in rows else math.nan


@dataclass(frozen=True)
class WorkloadReport:
    suite: Suite
    cells: pd.DataFrame
    margin_pct: float = DEFAULT_MARGIN_PCT  # the winner rule's margin (`--margin`)
    caveats: tuple[str, ...] = ()  # workload_caveats: shown last, as the sweep report's caveats are

    @property
    def only_default(self) -> bool:
        return set(self.cells["workload"].astype(str)) <= {"default"}

    def sections(self) -> list[DisplayTable]:
        tables: list[DisplayTable] = []
        measured = set(self.cells["workload"].astype(str))
        if self.only_default:
            tables.append(DisplayTable(
                "When to use which topology", ["Note"],
                [["Only the default shape (pp1024 tg128, closed batches) was measured: the use-case rows above "
                  "are inferred from one synthetic shape. Measure `--workload arena` to decide from chat, RAG, "
                  "agents, big contexts and a peak hour."]]))
        else:
            tables.append(when_to_use(self.cells, self.suite, self.margin_pct))
        for test in self.suite.tests:
            if test.id not in measured:
                continue
            tables.append(test_table(self.cells, test, self.margin_pct))
            if test.load.mode == "rate-sweep":
                tables.append(capacity_table(self.cells, test, self.suite.think_time_s))
        return tables

    def title(self, meta: FolderMeta | None) -> str:
        if meta is not None and meta.title:
            return meta.title
        model = meta.model if meta is not None else None
        return f"Workload report — {self.suite.name}" + (f" — {model}" if model else "")

    def header_lines(self, meta: FolderMeta | None) -> list[str]:
        if meta is None:
            return []
        lines = [f"Kind: {meta.kind}", f"Status: {meta.status}" if meta.status else "",
                 f"When: {meta.started_at} → {meta.finished_at}" if meta.finished_at else
                 (f"When: {meta.started_at}" if meta.started_at else ""),
                 f"Suite: {self.suite.name} ({self.suite.description})" if self.suite.description else "",
                 f"Cluster: {meta.cluster_name}" if meta.cluster_name else ""]
        scale = meta.spec.get("rate_scale")
        if scale and scale != 1:
            lines.append(f"Open-loop rates × {scale:g} (the twin profile is that much faster; the rate column "
                         "holds the rates sent)")
        if meta.spec.get("twin_hardware"):
            lines.append(f"Twin hardware: {meta.spec['twin_hardware']}")
        if meta.command_line:
            lines.append("Command: " + " ".join(meta.command_line))
        return [line for line in lines if line]

    def to_markdown(self, meta: FolderMeta | None) -> str:
        return workload_markdown(self, self.title(meta), self.header_lines(meta))

    def to_html(self, meta: FolderMeta | None) -> str:
        return workload_html(self, self.title(meta), self.header_lines(meta))

    def figures(self) -> list[tuple[str, go.Figure]]:
        from reports.html import topology_colours

        figures = []
        measured = set(self.cells["workload"].astype(str))
        topologies = ordered_topologies(self.cells["topology"].astype(str))
        colours = topology_colours(topologies)
        for test in self.suite.tests:
            if test.id not in measured:
                continue
            if test.load.mode == "rate-sweep":
                figures.append((f"rate-{test.id}", rate_figure(self.cells, test, topologies, colours)))
                continue
            figures += frontier_figures(self.cells, test)
            view = deciding_view(test)
            means = _means(self.cells, test)
            figure = go.Figure()
            for topology in topologies:
                rows = means[means["topology"] == topology]
                figure.add_trace(go.Scatter(x=list(rows["load"]), y=list(rows[view.key]), name=display_name(topology),
                                            mode="lines+markers", line={"color": colours[topology]}))
            better = "higher" if view.higher_is_better else "lower"
            figure.update_layout(title={"text": f"{test.id}: {view.title} ({view.unit}, {better} is better)"},
                                 xaxis={"type": "category", "title": {"text": "load"}},
                                 yaxis={"title": {"text": view.unit}, "rangemode": "tozero"},
                                 legend={"orientation": "h", "y": -0.25}, height=400, template="plotly_white",
                                 margin={"l": 60, "r": 20, "t": 50, "b": 40})
            figures.append((f"workload-{test.id}", figure))
        return figures


def frontier_figures(cells: pd.DataFrame, test: WorkloadTest) -> list[tuple[str, go.Figure]]:
    """A closed test's throughput-vs-interactivity chart (reports/html.py frontier_chart): per topology, its
    concurrency levels as (tokens/s per user, tokens/s total); one chart per prompt length of a test that
    has several. Open-loop tests have no levels to draw a line through."""
    from reports.html import frontier_chart

    means = _means(cells, test)
    groups: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    for point in test_points(test):
        if point.concurrency is None:
            continue
        prompt = point.label[: -len(f"c{point.concurrency}")].rstrip("-")  # "pp4096" of "pp4096-c5", "" of "c5"
        for _, row in means[means["load"] == point.label].iterrows():
            per_user, total = float(row.get("decode_tps_req", math.nan)), float(row.get("decode_tps", math.nan))
            if not (math.isnan(per_user) or math.isnan(total)):
                groups.setdefault(prompt, {}).setdefault(str(row["topology"]), []).append(
                    (point.concurrency, per_user, total))
    figures = []
    for prompt, points in groups.items():
        if max(len(levels) for levels in points.values()) < 2:
            continue
        suffix = f"-{prompt}" if prompt else ""
        figures.append((f"frontier-{test.id}{suffix}", frontier_chart(points, f"{test.id} {prompt}".strip())))
    return figures


def rate_figure(cells: pd.DataFrame, test: WorkloadTest, topologies: Sequence[str],
                colours: dict[str, str]) -> go.Figure:
    """p95 TTFT (the user's) against the achieved request rate, one line per topology, the limits drawn."""
    figure = go.Figure()
    for topology in topologies:
        steps = rate_steps(cells, test, topology)
        figure.add_trace(go.Scatter(x=[a for _, a, _ in steps], y=[p for _, _, p in steps], name=display_name(topology),
                                    mode="lines+markers", line={"color": colours[topology]}))
    assert test.load.mode == "rate-sweep"
    for limit in test.load.limits_s:
        figure.add_hline(y=limit, line_dash="dot", line_color="#888", annotation_text=f"{limit:g} s")
    figure.update_layout(title={"text": f"{test.id}: p95 TTFT vs achieved rate"},
                         xaxis={"title": {"text": "achieved request rate (req/s)"}},
                         yaxis={"title": {"text": "p95 TTFT, user's (s)"}, "type": "log"},
                         legend={"orientation": "h", "y": -0.25}, height=420, template="plotly_white",
                         margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return figure


def workload_report(cells: pd.DataFrame, meta: FolderMeta | None, suite: Suite | None = None) -> WorkloadReport | None:
    """The workload part of a report, when the cells have workload columns and the suite is known."""
    if not has_workloads(cells):
        return None
    suite = suite or suite_from_meta(meta)
    if suite is None:
        return None
    margin = meta.spec.get("margin_pct") if meta is not None else None
    measured = cells[cells["workload"].notna()].copy()
    return WorkloadReport(suite, measured, float(margin) if margin is not None else DEFAULT_MARGIN_PCT,
                          tuple(workload_caveats(measured, meta)))


def workload_markdown(report: WorkloadReport, title: str, header_lines: Sequence[str] = ()) -> str:
    out = [f"# {title}", ""]
    out += [f"- {line}" for line in header_lines]
    if header_lines:
        out.append("")
    out += tables_markdown(report.sections())
    if report.caveats:
        out += ["## Caveats", "", *(f"- {note}" for note in report.caveats), ""]
    return "\n".join(out)


def workload_html(report: WorkloadReport, title: str, header_lines: Sequence[str] = ()) -> str:
    import html as html_lib

    from reports.html import CSS, table_html

    charts = [figure.to_html(full_html=False, include_plotlyjs=index == 0, include_mathjax=False, div_id=key,
                             config={"displaylogo": False, "responsive": True, "displayModeBar": False})
              for index, (key, figure) in enumerate(report.figures())]
    meta = "".join(f"<li>{html_lib.escape(line)}</li>" for line in header_lines)
    tables = "\n".join(table_html(t) for t in report.sections())
    if report.caveats:
        tables += "\n<h2>Caveats</h2>\n<ul>" + "".join(f"<li>{html_lib.escape(c)}</li>" for c in report.caveats) + "</ul>"
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html_lib.escape(title)}"
            f"</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{html_lib.escape(title)}</h1>\n<ul class=\"meta\">"
            f"{meta}</ul>\n<div class=\"charts\">{''.join(f'<div class=chart>{c}</div>' for c in charts)}</div>\n"
            f"{tables}\n</body>\n</html>\n")
