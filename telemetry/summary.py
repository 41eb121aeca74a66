"""Per cell: what the servers and nodes saw while it was measured, and what it cost in energy.

A cell's runs are time windows of the client's clock (requests.parquet: first `batch_start` to last `end`);
telemetry samples carry the same clock (telemetry/sampler.py), so a window selects its samples:

- gauges (KV-cache use, requests running / waiting): the samples inside the window (for a run shorter than
  the interval, the ones right before and after it), per engine; running and waiting are summed over a
  topology's engines, KV-cache use is their mean (and the highest sample);
- counters (preemptions, prefix-cache queries/hits, the TTFT histogram): the increase from the last sample
  at or before the window's start to the first at or after its end (so at most one interval more than the
  window; counter resets handled), summed over engines. Server-side TTFT = increase of the histogram's sum
  over the increase of its count, next to the client's TTFT;
- energy: each node's nvidia-smi power, linearly interpolated between samples and integrated over the
  window, summed over the topology's nodes. J per output token = that energy / the output tokens of the
  run's successful requests; tokens/s per W = output tokens / energy (the same figure inverted, in the unit
  published benchmarks use).

    cell_telemetry(telemetry, requests) -> DataFrame, one row per cell (topology, workload, load)
    topology_costs(cell_table, costs) -> DataFrame, one row per topology
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from bench.results_folder import fill_load_keys
from bench.stats import cell_interval
from telemetry.prometheus import counter_increase, histogram_quantile

# A window whose nearest power sample is further than this is not measured (the sampler was not running).
MAX_GAP_S = 2.5
KV_FULL = 0.99  # KV-cache use at or above this counts as a full cache (vLLM then preempts or queues)
CELL_KEY = ["topology", "workload", "load"]
SUMMARY_COLUMNS = (
    "topology", "workload", "load", "concurrency", "runs", "kv_cache_mean", "kv_cache_max", "running_mean", "waiting_mean",
    "preemptions", "prefix_cache_hit_rate", "server_ttft_ms", "server_ttft_p90_ms", "power_w", "energy_j",
    "output_tokens", "seconds", "j_per_token", "tokens_per_s_per_w", "power_nodes", "j_per_token_lo", "j_per_token_hi",
)


def run_windows(requests: pd.DataFrame) -> pd.DataFrame:
    """(topology, workload, load, run) -> concurrency, start, end, output_tokens of successful requests."""
    columns = [*CELL_KEY, "run", "concurrency", "start", "end", "output_tokens"]
    if requests is None or requests.empty:
        return pd.DataFrame(columns=columns)
    frame = fill_load_keys(requests)
    begin = frame["batch_start"] if "batch_start" in frame else frame["start"]
    frame["_begin"] = begin
    frame["_end"] = frame["end"].fillna(frame["start"]) if "end" in frame else frame["start"]
    ok = frame["error"].isna() if "error" in frame else pd.Series(True, index=frame.index)
    tokens = frame["completion_tokens"] if "completion_tokens" in frame else pd.Series(np.nan, index=frame.index)
    frame["_tokens"] = tokens.where(ok, 0).fillna(0)
    grouped = frame.groupby([*CELL_KEY, "run"], as_index=False).agg(
        concurrency=("concurrency", "first"), start=("_begin", "min"), end=("_end", "max"),
        output_tokens=("_tokens", "sum"))
    return grouped[columns]


def integrate_power(times: np.ndarray, watts: np.ndarray, start: float, end: float) -> float:
    """Joules over [start, end] of a power series interpolated linearly (held flat beyond its ends)."""
    if len(times) == 0 or end <= start:
        return math.nan
    order = np.argsort(times)
    times, watts = times[order], watts[order]
    if times[-1] < start - MAX_GAP_S or times[0] > end + MAX_GAP_S:
        return math.nan
    if not ((times >= start - MAX_GAP_S) & (times <= end + MAX_GAP_S)).any():
        return math.nan
    inside = times[(times > start) & (times < end)]
    grid = np.concatenate([[start], inside, [end]])
    return float(np.trapezoid(np.interp(grid, times, watts), grid))


def _bracket(series: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    """Samples from the last one at or before `start` to the first at or after `end` (sorted by t)."""
    series = series.sort_values("t")
    before = series[series["t"] <= start]
    after = series[series["t"] >= end]
    lo = before["t"].iloc[-1] if not before.empty else -math.inf
    hi = after["t"].iloc[0] if not after.empty else math.inf
    return series[(series["t"] >= lo) & (series["t"] <= hi)]


def _counter(engine: pd.DataFrame, metric: str, start: float, end: float) -> float:
    series = engine[engine["metric"] == metric]
    if series.empty:
        return math.nan
    return counter_increase(_bracket(series, start, end)["value"].tolist())


def _ttft_buckets(engine: pd.DataFrame, start: float, end: float) -> dict[float, float]:
    buckets = engine[engine["metric"] == "ttft_seconds_bucket"]
    out: dict[float, float] = {}
    for le, series in buckets.groupby("le"):
        out[float(le)] = counter_increase(_bracket(series, start, end)["value"].tolist())
    return out


def _nansum(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return float(sum(clean)) if clean else math.nan


def _window_summary(samples: pd.DataFrame, start: float, end: float) -> dict[str, Any]:
    """One run window of one topology."""
    engines = samples[samples["source"].str.startswith("engine:")]
    out: dict[str, Any] = {}
    gauges = engines[(engines["t"] >= start) & (engines["t"] <= end)]
    if gauges.empty:  # a run shorter than the interval: the samples right around it
        gauges = pd.concat([_bracket(one, start, end) for _, one in engines.groupby(["source", "metric"])]
                           ) if not engines.empty else engines
    kv = gauges[gauges["metric"] == "kv_cache_usage"]
    out["kv_cache_mean"] = float(kv.groupby("source")["value"].mean().mean()) if not kv.empty else math.nan
    out["kv_cache_max"] = float(kv["value"].max()) if not kv.empty else math.nan
    for metric, column in (("requests_running", "running_mean"), ("requests_waiting", "waiting_mean")):
        values = gauges[gauges["metric"] == metric]
        out[column] = float(values.groupby("source")["value"].mean().sum()) if not values.empty else math.nan
    per_engine = [engine for _, engine in engines.groupby("source")]
    out["preemptions"] = _nansum([_counter(e, "preemptions", start, end) for e in per_engine])
    out["prefix_queries"] = _nansum([_counter(e, "prefix_cache_queries", start, end) for e in per_engine])
    out["prefix_hits"] = _nansum([_counter(e, "prefix_cache_hits", start, end) for e in per_engine])
    out["ttft_sum"] = _nansum([_counter(e, "ttft_seconds_sum", start, end) for e in per_engine])
    out["ttft_count"] = _nansum([_counter(e, "ttft_seconds_count", start, end) for e in per_engine])
    buckets: dict[float, float] = {}
    for engine in per_engine:
        for le, count in _ttft_buckets(engine, start, end).items():
            if not math.isnan(count):
                buckets[le] = buckets.get(le, 0.0) + count
    out["ttft_buckets"] = buckets
    power = samples[samples["metric"] == "gpu_power_w"]
    joules, nodes = [], 0
    for _, series in power.groupby("node"):
        energy = integrate_power(series["t"].to_numpy(float), series["value"].to_numpy(float), start, end)
        if not math.isnan(energy):
            joules.append(energy)
            nodes += 1
    out["energy_j"] = float(sum(joules)) if joules else math.nan
    out["power_nodes"] = nodes
    return out


def cell_telemetry(telemetry: pd.DataFrame | None, requests: pd.DataFrame | None) -> pd.DataFrame:
    """One row per cell (topology, workload, load) with request windows and telemetry (SUMMARY_COLUMNS)."""
    if telemetry is None or telemetry.empty or requests is None or requests.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    windows = run_windows(requests)
    rows = []
    for (topology, workload, load), cell in windows.groupby(CELL_KEY):
        concurrency = cell["concurrency"].iloc[0]
        samples = telemetry[telemetry["topology"] == topology]
        if samples.empty:
            continue
        parts = [(_window_summary(samples, w.start, w.end), w) for w in cell.itertuples()]
        seconds = float(sum(w.end - w.start for _, w in parts))
        tokens = float(sum(w.output_tokens for _, w in parts))

        def mean_of(key: str) -> float:
            values = [p[key] for p, _ in parts if not math.isnan(p[key])]
            return float(np.mean(values)) if values else math.nan

        buckets: dict[float, float] = {}
        for part, _ in parts:
            for le, count in part["ttft_buckets"].items():
                buckets[le] = buckets.get(le, 0.0) + count
        ttft_count = _nansum([p["ttft_count"] for p, _ in parts])
        queries = _nansum([p["prefix_queries"] for p, _ in parts])
        energies = [p["energy_j"] for p, _ in parts]
        energy = math.nan if any(math.isnan(e) for e in energies) else float(sum(energies))
        # each run's own J per token: the spread over runs is what a winner call on energy must clear
        per_run = cell_interval([p["energy_j"] / w.output_tokens if w.output_tokens > 0 else math.nan
                                 for p, w in parts])
        rows.append({
            "topology": topology, "workload": workload, "load": load,
            "concurrency": int(concurrency) if pd.notna(concurrency) else None, "runs": len(parts),
            "kv_cache_mean": mean_of("kv_cache_mean"),
            "kv_cache_max": max((p["kv_cache_max"] for p, _ in parts if not math.isnan(p["kv_cache_max"])),
                                default=math.nan),
            "running_mean": mean_of("running_mean"), "waiting_mean": mean_of("waiting_mean"),
            "preemptions": _nansum([p["preemptions"] for p, _ in parts]),
            "prefix_cache_hit_rate": (_nansum([p["prefix_hits"] for p, _ in parts]) / queries
                                      if queries and not math.isnan(queries) else math.nan),
            "server_ttft_ms": (1000 * _nansum([p["ttft_sum"] for p, _ in parts]) / ttft_count
                               if ttft_count and not math.isnan(ttft_count) else math.nan),
            "server_ttft_p90_ms": 1000 * histogram_quantile(0.9, buckets) if buckets else math.nan,
            "power_w": energy / seconds if seconds > 0 else math.nan,
            "energy_j": energy, "output_tokens": tokens, "seconds": seconds,
            "j_per_token": energy / tokens if tokens > 0 else math.nan,
            "tokens_per_s_per_w": tokens / energy if energy and energy > 0 else math.nan,
            "power_nodes": min((p["power_nodes"] for p, _ in parts), default=0),
            "j_per_token_lo": per_run.lo, "j_per_token_hi": per_run.hi,
        })
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def cell_warnings(summary: pd.DataFrame) -> list[str]:
    """A line per cell that hit preemptions or a full KV cache: its throughput is the cache's, not the GPU's."""
    lines = []
    for row in summary.itertuples():
        if row.preemptions and not math.isnan(row.preemptions) and row.preemptions > 0:
            lines.append(f"{row.topology} {row.load}: {int(row.preemptions)} preemption(s) during the cell "
                         "(the KV cache ran out; requests were recomputed)")
        if not math.isnan(row.kv_cache_max) and row.kv_cache_max >= KV_FULL:
            lines.append(f"{row.topology} {row.load}: the KV cache was full ({row.kv_cache_max:.0%}); "
                         "requests waited for cache space")
    return lines


def topology_costs(summary: pd.DataFrame, costs: Mapping[str, Any] | None) -> pd.DataFrame:
    """Per topology, at its most energy-efficient measured cell: energy cost and amortized hardware cost per
    million output tokens, from the cluster file's `costs:` (price per box, per kWh). Empty without prices."""
    columns = ["topology", "concurrency", "boxes", "box_cost", "energy_per_mtok", "hardware_per_mtok",
               "total_per_mtok", "currency"]
    if not costs or summary.empty:
        return pd.DataFrame(columns=columns)
    box_price = costs.get("box_price")
    kwh_price = costs.get("kwh_price")
    years = float(costs.get("amortization_years") or 3.0)
    rows = []
    for topology, cells in summary.groupby("topology", sort=False):
        cells = cells.dropna(subset=["j_per_token"])
        if cells.empty:
            continue
        best = cells.loc[cells["j_per_token"].idxmin()]
        boxes = int(best["power_nodes"])
        tokens_per_s = best["output_tokens"] / best["seconds"] if best["seconds"] > 0 else math.nan
        energy = best["j_per_token"] * 1e6 / 3.6e6 * kwh_price if kwh_price is not None else math.nan
        hardware = (boxes * box_price / (years * 365.25 * 86400) / tokens_per_s * 1e6
                    if box_price is not None and tokens_per_s > 0 else math.nan)
        rows.append({"topology": topology, "concurrency": int(best["concurrency"]), "boxes": boxes,
                     "box_cost": boxes * box_price if box_price is not None else math.nan,
                     "energy_per_mtok": energy, "hardware_per_mtok": hardware,
                     "total_per_mtok": _nansum([energy, hardware]),
                     "currency": str(costs.get("currency") or "USD")})
    return pd.DataFrame(rows, columns=columns)
