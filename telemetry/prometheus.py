"""Prometheus text exposition -> samples -> the few series topo keeps, and the arithmetic on them.

    parse_prometheus(text, source) -> list[PromSample]          (prometheus_client's own parser)
    extract(samples, specs) -> list[Reading]                    vLLM's names -> topo's (VLLM_METRICS, ...)
    counter_increase(values)                                    increase over a series, across resets
    histogram_increase(series) / histogram_quantile(q, buckets) the server-side TTFT of a window

Names: vLLM renamed a few series over its versions (gpu_cache_usage_perc -> kv_cache_usage_perc,
gpu_prefix_cache_* -> prefix_cache_*); a spec lists every name it accepts, newest first. Several label sets
of one series (data-parallel engines, several `model_name`s) are combined: counts summed, KV-cache use
the highest (the fullest engine is the one that preempts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from common.errors import EndpointError

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class PromSample:
    name: str  # the sample's full name (`vllm:num_preemptions_total`, `..._bucket`)
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


@dataclass(frozen=True)
class MetricSpec:
    """One series topo keeps: its own name, the exposition names it accepts, how label sets combine."""

    key: str
    names: tuple[str, ...]  # sample names (histograms: the base name), newest spelling first
    kind: Kind
    combine: Literal["sum", "max"] = "sum"


@dataclass(frozen=True)
class Reading:
    """One value of one kept series at one scrape; histogram buckets carry their upper bound `le`."""

    metric: str  # e.g. kv_cache_usage, preemptions, ttft_seconds_bucket, ttft_seconds_sum
    value: float
    le: float | None = None


VLLM_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("kv_cache_usage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), "gauge", "max"),
    MetricSpec("requests_running", ("vllm:num_requests_running",), "gauge"),
    MetricSpec("requests_waiting", ("vllm:num_requests_waiting",), "gauge"),
    MetricSpec("preemptions", ("vllm:num_preemptions_total",), "counter"),
    MetricSpec("prefix_cache_queries", ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
               "counter"),
    MetricSpec("prefix_cache_hits", ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"), "counter"),
    MetricSpec("prompt_tokens", ("vllm:prompt_tokens_total",), "counter"),
    MetricSpec("generation_tokens", ("vllm:generation_tokens_total",), "counter"),
    MetricSpec("ttft_seconds", ("vllm:time_to_first_token_seconds",), "histogram"),
    MetricSpec("process_cpu_seconds", ("process_cpu_seconds_total",), "counter"),
    MetricSpec("process_resident_bytes", ("process_resident_memory_bytes",), "gauge"),
)

# The LiteLLM proxy exposes /metrics only with its prometheus callback on; a 404 there is no error.
PROXY_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("proxy_requests", ("litellm_proxy_total_requests_metric_total",), "counter"),
    MetricSpec("proxy_failed_requests", ("litellm_proxy_failed_requests_metric_total",), "counter"),
    MetricSpec("process_cpu_seconds", ("process_cpu_seconds_total",), "counter"),
    MetricSpec("process_resident_bytes", ("process_resident_memory_bytes",), "gauge"),
)


def _stem(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") else name


def only_families(text: str, specs: Sequence[MetricSpec]) -> str:
    """The lines of `text` that belong to the kept series' families (their # HELP/# TYPE lines included).

    prometheus_client's parser is pure Python: a real vLLM page of ~600 lines takes tens of ms, long enough
    to delay a batch the load client fires meanwhile on the same event loop; the kept families are ~50."""
    stems = tuple(_stem(name) for spec in specs for name in spec.names)
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 else ""
        else:
            name = line.split("{", 1)[0].split(None, 1)[0] if line.strip() else ""
        if name and name.startswith(stems):
            kept.append(line)
    return "\n".join(kept) + "\n"


def parse_prometheus(text: str, source: str, keep: Sequence[MetricSpec] | None = None) -> list[PromSample]:
    """Every sample of a Prometheus text page (only the families of `keep` when given); EndpointError
    naming `source` when it is not Prometheus text."""
    if keep is not None:
        text = only_families(text, keep)
    try:
        return [
            PromSample(sample.name, tuple(sorted(sample.labels.items())), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise EndpointError(f"{source}: /metrics is not Prometheus text ({type(exc).__name__}: {exc})") from exc


def _combine(values: list[float], how: str) -> float:
    return max(values) if how == "max" else float(sum(values))


def _first_present(spec: MetricSpec, by_name: Mapping[str, list[PromSample]], suffix: str = "") -> str | None:
    for name in spec.names:
        if name + suffix in by_name:
            return name
    return None


def extract(samples: Iterable[PromSample], specs: Sequence[MetricSpec]) -> list[Reading]:
    """The kept series of one scrape; a series the page does not have is simply absent."""
    by_name: dict[str, list[PromSample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    readings: list[Reading] = []
    for spec in specs:
        if spec.kind != "histogram":
            name = _first_present(spec, by_name)
            if name is not None:
                readings.append(Reading(spec.key, _combine([s.value for s in by_name[name]], spec.combine)))
            continue
        base = _first_present(spec, by_name, "_count")
        if base is None:
            continue
        buckets: dict[float, float] = {}
        for sample in by_name.get(base + "_bucket", []):
            bound = sample.label("le")
            if bound is not None:
                le = float(bound)  # "+Inf" parses to inf
                buckets[le] = buckets.get(le, 0.0) + sample.value
        readings.extend(Reading(f"{spec.key}_bucket", count, le) for le, count in sorted(buckets.items()))
        readings.append(Reading(f"{spec.key}_sum", sum(s.value for s in by_name.get(base + "_sum", []))))
        readings.append(Reading(f"{spec.key}_count", sum(s.value for s in by_name[base + "_count"])))
    return readings


def spec_kind(metric: str, specs: Sequence[MetricSpec] = VLLM_METRICS) -> Kind | None:
    for spec in specs:
        if metric == spec.key:
            return spec.kind
    return None


# ---------------------------------------------------------------------------------------- arithmetic


def counter_increase(values: Sequence[float]) -> float:
    """How much a counter grew over consecutive scrapes. A drop is a reset (a restarted engine): the
    value after it counts from zero, as Prometheus' increase() does. NaN for fewer than two scrapes."""
    clean = [v for v in values if not math.isnan(v)]
    if len(clean) < 2:
        return math.nan
    total = 0.0
    for before, after in zip(clean, clean[1:]):
        total += after - before if after >= before else after
    return total


def histogram_increase(series: Mapping[float, Sequence[float]]) -> dict[float, float]:
    """Per bucket bound, the increase of its cumulative count over the scrapes (resets handled per bucket)."""
    return {le: counter_increase(values) for le, values in sorted(series.items())}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """The q-quantile of cumulative bucket counts {le: count}, interpolated linearly inside the bucket it
    falls in (Prometheus' histogram_quantile). NaN when the window saw no observation; the highest finite
    bound when it falls in the +Inf bucket."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be within 0..1 (got {q})")
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return math.nan
    total = buckets[bounds[-1]]
    if not total or math.isnan(total) or total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return bounds[-2] if len(bounds) > 1 else math.nan
