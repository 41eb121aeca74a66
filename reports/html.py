"""report.html: plotly charts of decode, prefill and TTFT against concurrency, then the report's tables.

The page is fully offline: plotly.js is embedded inline once (no CDN, no MathJax, no fonts fetched), so it
opens from a results folder copied anywhere, on a head node without internet.
"""

from __future__ import annotations

import html
import plotly.graph_objects as go

from reports.display import DisplayTable
from reports.history import sweep_order, trend_figure
from reports.names import display_name, ordered_topologies, topology_colours
from reports.regress import regression_display
from reports.report import Report
from reports.tables import METRICS, WinnerTable

TEXT_COLUMNS = ("Use case", "Status", "Topology", "Metric")

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; vertical-align: bottom; text-align: center; }
.scroll { overflow-x: auto; }
td.text { text-align: left; white-space: normal; }
td.winner { font-weight: 600; background: #eef7ee; text-align: left; }
.meta { color: #555; font-size: 0.9em; } .note { color: #555; font-size: 0.85em; font-style: italic; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 1em; }
/* auto-fill keeps the empty tracks, so the first chart is drawn at its final width before the others exist */
.chart { min-width: 0; }
.gate.fail h2 { color: #b00020; } .gate.pass h2 { color: #1b5e20; }
"""


def chart(table: WinnerTable) -> go.Figure:
    """One line per topology: mean against concurrency (log2 axis), the 95% interval as error bars."""
    metric = table.metric
    figure = go.Figure()
    levels = [row.concurrency for row in table.rows]
    colours = topology_colours(table.topologies)
    for topology in table.topologies:
        xs, ys, above, below = [], [], [], []
        for row in table.rows:
            stat = row.topology_cells.get(topology)
            if stat is not None and stat.has_value:
                xs.append(row.concurrency)
                ys.append(stat.mean)
                known = stat.interval.known
                above.append(stat.hi - stat.mean if known else 0.0)
                below.append(stat.mean - stat.lo if known else 0.0)
        figure.add_trace(go.Scatter(
            x=xs, y=ys, name=display_name(topology), mode="lines+markers",
            line={"color": colours[topology]},
            error_y={"type": "data", "array": above, "arrayminus": below, "symmetric": False, "visible": True},
            hovertemplate=f"{display_name(topology)}<br>c%{{x}}: %{{y:.1f}} {metric.unit}"
                          " (95% interval +%{error_y.array:.1f} / −%{error_y.arrayminus:.1f})<extra></extra>",
        ))
    better = "higher" if metric.higher_is_better else "lower"
    figure.update_layout(
        title={"text": f"{metric.title} ({metric.unit}, {better} is better)"},
        # log axis with ticks at the measured powers of two reads as a log2 axis
        xaxis={"type": "log", "title": {"text": "concurrency"}, "tickvals": levels,
               "ticktext": [str(c) for c in levels]},
        yaxis={"title": {"text": metric.unit}, "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        height=420,
        template="plotly_white",
    )
    return figure


def frontier_chart(points: dict[str, list[tuple[int, float, float]]], workload: str = "") -> go.Figure:
    """Total tokens/s against tokens/s per user, one line per topology through its load levels: up and to
    the right is better; the upper-right envelope is the frontier (vLLM's sweep plot, InferenceX's charts)."""
    figure = go.Figure()
    topologies = ordered_topologies(points)
    colours = topology_colours(topologies)
    for topology in topologies:
        levels = sorted(points[topology])
        figure.add_trace(go.Scatter(
            x=[p[1] for p in levels], y=[p[2] for p in levels], name=display_name(topology),
            mode="lines+markers+text", text=[f"c{p[0]}" for p in levels], textposition="top center",
            line={"color": colours[topology]},
            hovertemplate=f"{display_name(topology)} %{{text}}<br>%{{x:.1f}} t/s per user, %{{y:.0f}} t/s total"
                          "<extra></extra>",
        ))
    title = "Throughput vs interactivity" + (f" — {workload}" if workload else "")
    figure.update_layout(
        title={"text": f"{title} (up and right is better)"},
        xaxis={"title": {"text": "decode tokens/s per user"}, "rangemode": "tozero"},
        yaxis={"title": {"text": "decode tokens/s total"}, "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        height=460,
        template="plotly_white",
    )
    return figure


def table_html(table: DisplayTable) -> str:
    parts = [f"<h2>{html.escape(table.title)}</h2>"]
    if table.intro:
        parts.append(f"<p>{html.escape(table.intro)}</p>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = []
        for header, value in zip(table.headers, row, strict=False):
            css = "winner" if header in ("Winner", "Use") else ("text" if header in TEXT_COLUMNS or
                                                                header.startswith("Because") else "")
            attr = f' class="{css}"' if css else ""
            cells.append(f"<td{attr}>{html.escape(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in table.notes]
    return "\n".join(parts)


def render_html(report: Report) -> str:
    charts = []
    for index, metric in enumerate(METRICS):
        charts.append(chart(report.winners[metric.key]).to_html(
            full_html=False,
            include_plotlyjs=index == 0,  # inline once; the other charts reuse it
            include_mathjax=False,
            div_id=f"chart-{metric.key}",
            config={"displaylogo": False, "responsive": True, "displayModeBar": False},
        ))
    frontiers = []
    for index, (workload, points) in enumerate(sorted((report.frontier or {}).items())):
        frontiers.append(frontier_chart(points, workload).to_html(
            full_html=False, include_plotlyjs=False, include_mathjax=False, div_id=f"frontier-{index}",
            config={"displaylogo": False, "responsive": True, "displayModeBar": False},
        ))
    frontier = ""
    if frontiers:
        frontier = ("<h2>Throughput vs interactivity</h2><p>Per workload, each topology's load levels from c1 up: "
                    "total decode tokens/s against what one user's stream gets. A topology whose line lies above and "
                    "to the right of another's gives more of both.</p>"
                    + "".join(f'<div class="frontier">{figure}</div>' for figure in frontiers))
    trends = ""
    if report.history is not None:
        figures = [
            trend_figure(report.history, metric, topology_colours).to_html(
                full_html=False, include_plotlyjs=False, include_mathjax=False, div_id=f"trend-{metric.key}",
                config={"displaylogo": False, "responsive": True, "displayModeBar": False},
            )
            for metric in METRICS
        ]
        trends = (f"<h2>Trend over {len(sweep_order(report.history))} sweeps</h2>"
                  "<p>Each cell's mean (± std over its runs) sweep after sweep. The highest concurrency is shown; "
                  "click a legend entry to show another level.</p>"
                  + "".join(f'<div class="trend">{figure}</div>' for figure in figures))
    gate = ""
    if report.regression is not None:
        verdict = "fail" if report.regression.exit_code else "pass"
        gate = f'<div class="gate {verdict}">{table_html(regression_display(report.regression))}</div>'
    timelines = ""
    if report.telemetry is not None and (figures := report.telemetry.figures()):
        timelines = ("<h2>Over time: KV cache, queues and power</h2><p>Per topology, from the samples of every "
                     "engine's /metrics and every node's nvidia-smi; the shaded spans are the measured runs, "
                     "labelled with their concurrency.</p>" + "".join(
                         '<div class="timeline">' + figure.to_html(
                             full_html=False, include_plotlyjs=False, include_mathjax=False,
                             div_id=f"timeline-{topology}",
                             config={"displaylogo": False, "responsive": True, "displayModeBar": False})
                         + "</div>" for topology, figure in figures))
    meta = "".join(f"<li>{html.escape(line)}</li>" for line in report.header_lines())
    tables = "\n".join(table_html(t) for t in report.sections())
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in report.caveats) or "<li>none found in the data.</li>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(report.title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{html.escape(report.title)}</h1>
<ul class="meta">{meta}</ul>
{gate}
<div class="charts">
{''.join(f'<div class="chart">{c}</div>' for c in charts)}
</div>
{frontier}
{trends}
{tables}
{timelines}
<h2>Caveats</h2>
<ul>{caveats}</ul>
</body>
</html>
"""
