"""Prometheus text -> topo's series: against a real vLLM CPU /metrics page and the twin's, plus the counter
and histogram arithmetic (resets, quantiles)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import pytest

from common.errors import EndpointError
from telemetry.prometheus import (
    PROXY_METRICS,
    VLLM_METRICS,
    counter_increase,
    extract,
    histogram_increase,
    histogram_quantile,
    parse_prometheus,
)
from tests.twin.test_server import chat_body, running_twin

# Captured from the real vLLM CPU build (0.32.0+cpu, tiny model, 3 requests of which two share a long
# prefix) by tests/telemetry/capture_vllm_metrics.py.
VLLM_PAGE = Path(__file__).parent / "data" / "vllm_cpu_metrics.txt"


def readings(text: str, specs=VLLM_METRICS) -> dict[str, float]:
    return {r.metric if r.le is None else f"{r.metric}:{r.le}": r.value
            for r in extract(parse_prometheus(text, "test"), specs)}


def test_a_real_vllm_page_yields_every_series_topo_summarizes() -> None:
    found = readings(VLLM_PAGE.read_text(encoding="utf-8"))
    for key in ("kv_cache_usage", "requests_running", "requests_waiting", "preemptions", "prefix_cache_queries",
                "prefix_cache_hits", "prompt_tokens", "generation_tokens", "ttft_seconds_sum", "ttft_seconds_count"):
        assert key in found, f"{key} missing from the vLLM page"
    assert found["generation_tokens"] == 3 * 8  # three requests of 8 tokens each
    assert found["ttft_seconds_count"] == 3
    assert found["ttft_seconds_bucket:inf"] == 3
    assert found["requests_running"] == 0 and found["requests_waiting"] == 0
    # two prompts shared a 400-token prefix: the second and third found it cached
    assert 0 < found["prefix_cache_hits"] < found["prefix_cache_queries"]
    assert 0 <= found["kv_cache_usage"] <= 1


async def test_the_twin_page_parses_to_the_same_series() -> None:
    async with running_twin() as (url, _), httpx.AsyncClient(base_url=url) as client:
        await asyncio.gather(*(
            client.post("/v1/chat/completions", json=chat_body(max_tokens=5, ignore_eos=True)) for _ in range(3)
        ))
        text = (await client.get("/metrics")).text
    found = readings(text)
    vllm = readings(VLLM_PAGE.read_text(encoding="utf-8"))
    twin_keys = {key.split(":")[0] for key in found}
    assert {key.split(":")[0] for key in vllm} - {"process_cpu_seconds", "process_resident_bytes"} <= twin_keys
    assert found["generation_tokens"] == 15 and found["ttft_seconds_count"] == 3
    assert found["prefix_cache_hits"] == 0 and found["prefix_cache_queries"] == found["prompt_tokens"]


def test_label_sets_combine_counts_summed_and_kv_use_highest() -> None:
    text = "\n".join([
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="m"} 3',
        'vllm:num_requests_running{engine="1",model_name="m"} 4',
        "# TYPE vllm:gpu_cache_usage_perc gauge",  # the older spelling is still understood
        'vllm:gpu_cache_usage_perc{engine="0"} 0.25',
        'vllm:gpu_cache_usage_perc{engine="1"} 0.75',
        "",
    ])
    found = readings(text)
    assert found == {"requests_running": 7.0, "kv_cache_usage": 0.75}


def test_a_page_that_is_not_prometheus_text_names_its_source() -> None:
    with pytest.raises(EndpointError, match="http://n1:8000/metrics"):
        parse_prometheus("<html>not metrics</html>\n{{{", "http://n1:8000/metrics")


def test_a_proxy_page_without_litellm_series_keeps_its_process_figures() -> None:
    text = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.5\n"
    assert readings(text, PROXY_METRICS) == {"process_cpu_seconds": 12.5}


def test_counter_increase_survives_a_reset() -> None:
    assert counter_increase([10, 12, 15]) == 5
    # the engine restarted between the 2nd and 3rd scrape: 15 -> 2 means 2 new since the restart
    assert counter_increase([10, 15, 2, 6]) == 5 + 2 + 4
    assert counter_increase([0, 0, 0]) == 0
    assert math.isnan(counter_increase([7]))
    assert counter_increase([1, math.nan, 4]) == 3


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.1: 0.0, 0.2: 50.0, 0.4: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.2)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)
    assert math.isnan(histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}))
    # beyond the last finite bound: that bound (Prometheus does the same)
    assert histogram_quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == 0.1


def test_histogram_increase_is_per_bucket_across_a_reset() -> None:
    series = {0.1: [5, 6, 1], math.inf: [10, 12, 3]}
    assert histogram_increase(series) == {0.1: 1 + 1, math.inf: 2 + 3}
