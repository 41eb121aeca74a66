"""The sweep's watchdog: tells a hung topology from a slow one while its cells are measured.

A TP engine across two Sparks has been seen to stop serving after 35-55 minutes (vLLM issue 41725): the
processes live, nothing comes out. Three signals, each with its own limit (WatchdogSettings):

    stall     requests are in flight and none of them received a byte for `stall_s`
    health    an engine's /health failed `health_failures` times in a row (polled every `health_every_s`)
    metrics   requests are in flight and the engines' token counters (vllm:prompt_tokens_total +
              vllm:generation_tokens_total, summed over engines) did not move for `metrics_stall_s`

`HangDetector` is the pure decision (fed timestamps and observations; unit-tested in memory); `watch()`
polls for real and returns the reason once the detector calls the topology hung. The sweep then records
the incident, tears the topology down, brings it up again (at most `restarts` times) and retries the cell.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from bench.client import StreamActivity
from topology.plan import HttpProbe, LaunchPlan

TOKEN_COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


@dataclass(frozen=True)
class WatchdogSettings:
    # Longer than any first token should take (c=64 x 1024-token prompts prefill in well under a minute on
    # a GB10); a real engine that is merely slow streams something within this.
    stall_s: float = 120.0
    health_every_s: float = 10.0
    health_failures: int = 3
    metrics_stall_s: float = 180.0
    poll_s: float = 1.0
    restarts: int = 1  # bring-ups after a hang, per topology; then the topology is given up


def token_counter_total(text: str) -> float | None:
    """Sum of the token counters in a Prometheus text page; None when the page has none of them."""
    total, seen = 0.0, False
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) in TOKEN_COUNTERS:
            try:
                total += float(match.group(3))
                seen = True
            except ValueError:
                continue
    return total if seen else None


@dataclass
class HangDetector:
    """Feed it observations with their (monotonic) time; each method returns the reason once hung."""

    settings: WatchdogSettings
    _health_failed: dict[str, int] = field(default_factory=dict)
    _counter: float | None = None
    _counter_moved: float | None = None

    def tokens(self, now: float, in_flight: int, last_data: float) -> str | None:
        quiet = now - last_data
        if in_flight > 0 and quiet >= self.settings.stall_s:
            return (f"no token on any of {in_flight} in-flight request(s) for {quiet:.0f} s "
                    f"(limit {self.settings.stall_s:g} s)")
        return None

    def health(self, url: str, ok: bool, detail: str = "") -> str | None:
        self._health_failed[url] = 0 if ok else self._health_failed.get(url, 0) + 1
        failures = self._health_failed[url]
        if failures >= self.settings.health_failures:
            return f"{url} failed {failures} times in a row" + (f" ({detail})" if detail else "")
        return None

    def metrics(self, now: float, in_flight: int, counter: float | None) -> str | None:
        if counter is None:
            return None  # an engine without the counters (or /metrics) says nothing either way
        if in_flight == 0 or self._counter is None or counter != self._counter:
            self._counter, self._counter_moved = counter, now
            return None
        still = now - (self._counter_moved if self._counter_moved is not None else now)
        if still >= self.settings.metrics_stall_s:
            return (f"the engines' token counters stayed at {counter:.0f} for {still:.0f} s with {in_flight} "
                    f"request(s) in flight (limit {self.settings.metrics_stall_s:g} s)")
        return None


def engine_health_urls(plan: LaunchPlan) -> list[str]:
    """The /health URL of every serving engine of the plan (its readiness probe's first URL)."""
    return [step.probe.urls[0] for step in plan.steps()
            if step.role == "engine" and isinstance(step.probe, HttpProbe) and step.probe.urls[0].endswith("/health")]


async def watch(
    plan: LaunchPlan,
    activity: Callable[[], StreamActivity | None],
    settings: WatchdogSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.perf_counter,  # the clock StreamActivity stamps with
) -> str:
    """Poll until the topology looks hung; return why. Cancel it when the watched work ends."""
    detector = HangDetector(settings)
    health_urls = engine_health_urls(plan)
    metrics_urls = [url.removesuffix("/health") + "/metrics" for url in health_urls]
    next_health = clock() + settings.health_every_s
    timeout = httpx.Timeout(max(1.0, min(settings.health_every_s, 10.0)))
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=timeout) as client:
        while True:
            await asyncio.sleep(settings.poll_s)
            now = clock()
            current = activity()
            in_flight = current.in_flight if current is not None else 0
            if current is not None and (reason := detector.tokens(now, in_flight, current.last_data)):
                return reason
            if now < next_health:
                continue
            next_health = now + settings.health_every_s
            for url in health_urls:
                try:
                    response = await client.get(url)
                    ok, detail = response.is_success, f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                if reason := detector.health(url, ok, detail):
                    return reason
            total: float | None = 0.0
            for url in metrics_urls:
                try:
                    response = await client.get(url)
                    value = token_counter_total(response.text) if response.is_success else None
                except httpx.HTTPError:
                    value = None
                total = None if value is None or total is None else total + value
            if reason := detector.metrics(clock(), in_flight, total):
                return reason
