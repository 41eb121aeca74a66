"""The report's telemetry part: energy next to the winner tables, the servers' view per cell, the roofline
shares with one sentence per topology, a cost row, and per topology a time chart of KV-cache use,
running/waiting and power with the cell boundaries marked.

    section = telemetry_section(cells, meta, requests, telemetry)   # None when there is nothing to show
    section.tables() -> list[DisplayTable];  section.warnings;  section.figures() -> [(topology, go.Figure)]

The arithmetic lives in telemetry/summary.py and telemetry/roofline.py; this module only lays it out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench.results_folder import FolderMeta
from common.errors import TopoError
from reports.display import DisplayTable
from reports.names import display_name, ordered_topologies
from reports.tables import DEFAULT_MARGIN_PCT, CellStat, decide
from telemetry.roofline import EngineShape, limit_sentences, roofline
from telemetry.summary import cell_telemetry, cell_warnings, run_windows, topology_costs

MISSING = "—"


@dataclass(frozen=True)
class TelemetrySection:
    summary: pd.DataFrame  # telemetry.summary.SUMMARY_COLUMNS, one row per cell
    roofline: pd.DataFrame  # telemetry.roofline.ROOFLINE_COLUMNS
    limits: dict[str, str]  # topology -> one sentence
    costs: pd.DataFrame
    client_ttft: dict[tuple[str, int], float]  # the client's mean TTFT per cell, next to the server's
    warnings: list[str] = field(default_factory=list)
    telemetry: pd.DataFrame | None = None  # raw samples, for the time charts
    windows: pd.DataFrame | None = None  # run windows, for the cell boundaries
    margin_pct: float = DEFAULT_MARGIN_PCT  # the winner rule's margin (`--margin`)

    def tables(self) -> list[DisplayTable]:
        tables = []
        if not self.summary.empty:
            tables.append(energy_display(self.summary, self.margin_pct))
            tables.append(server_display(self.summary, self.client_ttft))
        if not self.roofline.empty:
            tables.append(roofline_display(self.roofline, self.limits))
        if not self.costs.empty:
            tables.append(cost_display(self.costs))
        return tables

    def figures(self) -> list[tuple[str, go.Figure]]:
        if self.telemetry is None or self.telemetry.empty:
            return []
        out = []
        for topology in ordered_topologies(self.telemetry["topology"].unique()):
            figure = time_chart(self.telemetry[self.telemetry["topology"] == topology],
                                None if self.windows is None else self.windows[self.windows["topology"] == topology],
                                topology)
            if figure is not None:
                out.append((topology, figure))
        return out


def engine_shape(meta: FolderMeta | None) -> EngineShape | None:
    """The hardware, card and number formats a sweep (or prediction) ran with, or None when unknown (a real
    engine without `hardware:` in the cluster file, a folder without meta.json)."""
    from twin.cli import KV_CACHE_DTYPE_BYTES
    from twin.profiles import load_card, load_hardware

    if meta is None:
        return None
    spec = meta.spec
    recipe = meta.recipe or {}
    nodes = (meta.cluster or {}).get("nodes") or []
    hardware = spec.get("twin_hardware") or spec.get("hardware") or next(
        (n.get("engine", {}).get("hardware") for n in nodes if n.get("engine", {}).get("hardware")), None)
    card_name = recipe.get("twin_card") or (spec.get("model") if meta.kind == "prediction" else None)
    if not hardware or not card_name:
        return None
    try:
        card = load_card(card_name)
        quantization = recipe.get("quantization") or spec.get("quantization")
        weight_bytes = card.quantization_bytes.get(quantization) if quantization else None
        kv = KV_CACHE_DTYPE_BYTES.get(recipe.get("kv_cache_dtype") or "auto")
        return EngineShape(load_hardware(hardware), card, weight_bytes, kv, pp=int(spec.get("pp") or 1024),
                           tg=int(spec.get("tg") or 128))
    except TopoError:
        return None


def telemetry_section(cells: pd.DataFrame, meta: FolderMeta | None, requests: pd.DataFrame | None,
                      telemetry: pd.DataFrame | None, margin_pct: float = DEFAULT_MARGIN_PCT) -> TelemetrySection | None:
    summary = cell_telemetry(telemetry, requests)
    shape = engine_shape(meta)
    table = roofline(cells, shape) if shape is not None else pd.DataFrame()
    limits = limit_sentences(table, shape) if shape is not None and not table.empty else {}
    if summary.empty and table.empty:
        return None
    costs = topology_costs(summary, ((meta.cluster or {}) if meta else {}).get("costs"))
    client_ttft = {(str(t), int(c)): float(v) for (t, c), v in cells.groupby(["topology", "concurrency"])["ttft_ms"]
                   .mean().items()}
    limits = {topology: sentence + queued_before_engines(summary, client_ttft, topology)
              for topology, sentence in limits.items()}
    return TelemetrySection(summary, table, limits, costs, client_ttft, cell_warnings(summary), telemetry,
                            run_windows(requests) if requests is not None else None, margin_pct)


QUEUE_GAP = 2.0  # the client's TTFT this many times the engines' (and 100 ms more): a queue in front of them


def queued_before_engines(summary: pd.DataFrame, client_ttft: dict[tuple[str, int], float], topology: str) -> str:
    """A clause when, at the topology's highest measured load, requests waited mostly before the engines."""
    rows = summary[summary["topology"] == topology].dropna(subset=["server_ttft_ms"])
    if rows.empty:
        return ""
    top = rows.sort_values("concurrency").iloc[-1]
    client, server = client_ttft.get((topology, int(top["concurrency"])), math.nan), float(top["server_ttft_ms"])
    if math.isnan(client) or client < QUEUE_GAP * server or client - server < 100:
        return ""
    return (f" At c{int(top['concurrency'])} the client waited {client:.0f} ms for a first token where the engines "
            f"saw {server:.0f} ms: most of the wait was before the engines (API server, router or network).")


# ---- display tables --------------------------------------------------------------------------------------


def _fmt(value: float, spec: str, suffix: str = "") -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def _pivot(frame: pd.DataFrame, render) -> tuple[list[str], list[str], list[list[str]]]:  # type: ignore[no-untyped-def]
    topologies = ordered_topologies(frame["topology"].unique())
    rows = []
    for concurrency in sorted(frame["concurrency"].unique()):
        line = [str(concurrency)]
        for topology in topologies:
            match = frame[(frame["topology"] == topology) & (frame["concurrency"] == concurrency)]
            line.append(render(match.iloc[0]) if not match.empty else MISSING)
        rows.append(line)
    return topologies, [display_name(t) for t in topologies], rows


def energy_display(summary: pd.DataFrame, margin_pct: float = DEFAULT_MARGIN_PCT) -> DisplayTable:
    topologies, names, rows = _pivot(summary, lambda r: (
        f"{_fmt(r['j_per_token'], '.2f')} J · {_fmt(r['tokens_per_s_per_w'], '.2f')} t/s/W"
        if not math.isnan(r["j_per_token"]) else MISSING))
    for line, concurrency in zip(rows, sorted(summary["concurrency"].unique())):
        at = summary[summary["concurrency"] == concurrency]
        verdict = decide([energy_stat(r) for r in at.to_dict("records")], higher_is_better=False,
                         margin_pct=margin_pct)
        line.append(verdict.label() if verdict is not None else MISSING)
    return DisplayTable(
        "Energy per output token (J) — lower wins", ["c", *names, "Winner"], rows,
        intro="GPU energy over the cell's runs (nvidia-smi power.draw, sampled and integrated, summed over the "
              "topology's nodes) per output token; tokens/s per W is the same figure inverted.",
        notes=[f"Winner: called only when its 95% interval over runs clears the runner-up's and the difference "
               f"exceeds {margin_pct:g}% (the winner tables' rule); a cell of one run has no interval and ties. "
               "Twin nodes report the modeled power of their hardware profile (configs/hardware/*.yaml `power:`), "
               "read through the same nvidia-smi query as real nodes."],
    )


def energy_stat(row: dict) -> CellStat:
    """A cell's J per output token as the winner rule reads it: the pooled figure and its interval over runs."""
    lo, hi = float(row.get("j_per_token_lo", math.nan)), float(row.get("j_per_token_hi", math.nan))
    runs = int(row.get("runs") or 0)
    return CellStat(str(row["topology"]), int(row["concurrency"]), float(row["j_per_token"]), math.nan, runs, 0, 0,
                    lo, hi, "runs" if not math.isnan(lo) else "none")


def server_display(summary: pd.DataFrame, client_ttft: dict[tuple[str, int], float]) -> DisplayTable:
    headers = ["Topology", "c", "KV cache mean / max", "Running", "Waiting", "Preemptions", "Prefix-cache hits",
               "Server TTFT mean / p90 (ms)", "Client TTFT (ms)", "GPU power (W)"]
    rows = []
    for topology in ordered_topologies(summary["topology"].unique()):
        for r in summary[summary["topology"] == topology].sort_values("concurrency").to_dict("records"):
            rows.append([display_name(topology), str(r["concurrency"]),
                         f"{_fmt(r['kv_cache_mean'], '.0%')} / {_fmt(r['kv_cache_max'], '.0%')}",
                         _fmt(r["running_mean"], ".1f"), _fmt(r["waiting_mean"], ".1f"), _fmt(r["preemptions"], ".0f"),
                         _fmt(r["prefix_cache_hit_rate"], ".0%"),
                         f"{_fmt(r['server_ttft_ms'], '.0f')} / {_fmt(r['server_ttft_p90_ms'], '.0f')}",
                         _fmt(client_ttft.get((topology, int(r["concurrency"])), math.nan), ".0f"),
                         _fmt(r["power_w"], ".1f")])
    return DisplayTable(
        "What the servers saw, per cell", headers, rows,
        intro="From each engine's /metrics during the cell's runs: gauges averaged over the samples (running and "
              "waiting summed over engines), counters as increases (preemptions, prefix-cache hit rate, the "
              "TTFT histogram). The server's TTFT starts when the engine got the request, the client's when it "
              "sent it: the gap is the network, the API server and any router.",
    )


def roofline_display(table: pd.DataFrame, limits: dict[str, str]) -> DisplayTable:
    _, names, rows = _pivot(table, lambda r: f"{_fmt(r['decode_share'], '.0%')} of {r['decode_ceiling_tps']:.0f}")
    prefill = {str(r["topology"]): r for r in table.groupby("topology").first().reset_index().to_dict("records")}
    notes = [limits[t] for t in ordered_topologies(limits)]
    notes.append("Prefill ceiling (t/s, published peak FLOPs): " + ", ".join(
        f"{display_name(t)} {prefill[t]['prefill_ceiling_tps']:.0f} (best share "
        f"{_fmt(table[table['topology'] == t]['prefill_share'].max(), '.0%')})" for t in ordered_topologies(prefill)))
    return DisplayTable(
        "Decode against the memory-bandwidth roofline", ["c", *names], rows,
        intro="Measured decode t/s as a share of the ceiling the hardware's published memory bandwidth allows "
              "for the bytes one decode step must read (weights of the experts the batch routes to, and its KV "
              "cache), times the replicas.",
        notes=notes,
    )


def cost_display(costs: pd.DataFrame) -> DisplayTable:
    currency = str(costs["currency"].iloc[0])
    by_topology = {str(r["topology"]): r for r in costs.to_dict("records")}
    rows = [[display_name(t), str(r["concurrency"]), str(r["boxes"]), _fmt(r["box_cost"], ",.0f"),
             _fmt(r["energy_per_mtok"], ".3f"), _fmt(r["hardware_per_mtok"], ".3f"), _fmt(r["total_per_mtok"], ".3f")]
            for t in ordered_topologies(by_topology) for r in [by_topology[t]]]
    return DisplayTable(
        f"Cost per million output tokens ({currency})",
        ["Topology", "c", "Boxes", "Hardware", "Energy", "Hardware, amortized", "Total"], rows,
        intro="At each topology's most energy-efficient measured cell, from the cluster file's `costs:` (price "
              "per box, per kWh, years of amortization), running around the clock at that load.",
    )


# ---- time chart --------------------------------------------------------------------------------------------

_SERIES = (("kv_cache_usage", "KV cache", 1), ("requests_running", "running", 2), ("requests_waiting", "waiting", 2))


def time_chart(samples: pd.DataFrame, windows: pd.DataFrame | None, topology: str) -> go.Figure | None:
    """KV-cache use, running/waiting (summed over engines) and GPU power per node over the topology's time,
    the measured runs shaded and labelled with their load (c4, ...)."""
    if samples.empty:
        return None
    origin = float(samples["t"].min())
    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=("KV-cache use (%)", "requests running / waiting", "GPU power (W)"))
    engines = samples[samples["source"].str.startswith("engine:")]
    for metric, label, row in _SERIES:
        series = engines[engines["metric"] == metric]
        if series.empty:
            continue
        if metric == "kv_cache_usage":
            for source, one in series.groupby("source"):
                figure.add_trace(go.Scatter(x=one["t"] - origin, y=one["value"] * 100, mode="lines",
                                            name=f"KV {source.split(':', 1)[1]}"), row=row, col=1)
        else:
            # engines are scraped together per tick: per second, each engine's mean, summed over engines
            per_engine = series.groupby([series["t"].round(0), "source"])["value"].mean()
            total = per_engine.groupby(level=0).sum()
            figure.add_trace(go.Scatter(x=total.index - origin, y=total.values, mode="lines", name=label),
                             row=row, col=1)
    power = samples[samples["metric"] == "gpu_power_w"]
    for node, one in power.groupby("node"):
        figure.add_trace(go.Scatter(x=one["t"] - origin, y=one["value"], mode="lines", name=f"power {node}"),
                         row=3, col=1)
    if windows is not None:
        for w in windows.itertuples():
            figure.add_vrect(x0=w.start - origin, x1=w.end - origin, fillcolor="#888", opacity=0.12, line_width=0,
                             row="all", col=1)
            figure.add_annotation(x=(w.start + w.end) / 2 - origin, y=1.0, yref="paper", text=str(w.load),
                                  showarrow=False, font={"size": 10})
    figure.update_layout(title={"text": f"{display_name(topology)} over time (s since its first sample)"},
                         height=520, template="plotly_white", margin={"l": 60, "r": 20, "t": 70, "b": 40},
                         legend={"orientation": "h", "y": -0.12})
    figure.update_xaxes(title={"text": "s"}, row=3, col=1)
    return figure
