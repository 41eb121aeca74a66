"""The one bench API: a session against one endpoint that measures loads, one cell after another.

    settings = BenchSettings(pp=1024, tg=128)
    async with BenchSession(endpoint, model, settings) as session:     # preflight: fails before any load
        result = await session.run(ClosedLoad(4), runs=3, topology="solo", on_run=store_it)

`topo bench`, the sweep and benchmarks/ use it. A session shares across its cells: the preflight, the token
counter decision, one prompt factory (the prompt is adapted to the chat template once, after the first
warm-up) and one client (connections reused). A cell (docs/METRICS.md) is a discarded warm-up batch, then
`runs` batches of the load; `on_run` gets every finished run as soon as it is measured, so a caller stores
it at once: nothing measured is lost when a later run or the process dies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.client import LATENCY_MODES, BenchClient, Endpoint, LatencyMode, StreamActivity
from bench.metrics import e2e_ttft, run_metrics
from bench.prompts import LocalTokenizer, Prompt, PromptFactory, ServerTokenizer, TokenCounter
from bench.records import (CLIENT_BOUND_LAG_SHARE, CLIENT_BOUND_MARK, CLIENT_BOUND_SCHEDULE_SHARE, RequestRecord,
                           client_cpu_bound, schedule_lag_bound, send_lag_bound)
from bench.openloop import run_open
from bench.points import workload_row
from bench.shapes import RequestSpec
from bench.suite import LoadPoint
from bench.workload import DEFAULT_WORKLOAD, ClosedLoad, Load, OpenLoad
from common.errors import ConfigError, EndpointError
from common.text import builtin_corpus, load_corpus

# A stretch of the corpus the server's /tokenize counts to decide whether the built-in tokenizer is the
# served model's (true for the twin and the tiny test model): equal counts on ~2000 characters.
_PROBE_TEXT = builtin_corpus()[5000:7000]


@dataclass(frozen=True)
class BenchSettings:
    """How every request of a session is shaped and sent (the load is given per cell)."""

    pp: int = 1024  # prompt tokens, as the server counts them
    tg: int = 128  # generated tokens (max_tokens = min_tokens, ignore_eos)
    depth: int = 0  # context tokens before the prompt
    workload: str = DEFAULT_WORKLOAD  # the request shape's name, stored with every row
    latency_mode: LatencyMode = "api"  # how the network/API offset is measured (docs/METRICS.md `latency`)
    tokenizer: Path | None = None  # count prompt tokens with this tokenizer (default: see choose_counter)
    corpus: Path | None = None  # text to cut prompts from (default: the built-in corpus)
    unique_prefix: bool = True  # a unique tag at the start of each prompt: no prefix-cache hits
    request_timeout: float = 600.0  # deadline on progress: seconds a request may go without a generated token
    request_deadline: float | None = None  # a whole request at most (None: 10 x request_timeout)
    seed: int | None = None  # prompt offsets (None: random)
    warmup: bool = True  # one discarded batch before the measured runs of each cell
    # tokens each warm-up request generates (None: tg). The warm-up's job is the engine's first prefill and
    # decode steps at this batch size and the connections, not a full batch's decode: the sweep uses a few.
    warmup_tg: int | None = None
    # at least this many warm-up requests, whatever the load's c: at c1 behind a router one request warms one
    # engine's path, and the first measured run may go to a cold one
    warmup_min_requests: int = 1

    def __post_init__(self) -> None:
        if self.pp < 1 or self.tg < 1 or self.depth < 0:
            raise ConfigError(f"--pp and --tg must be at least 1, --depth at least 0 (got pp={self.pp}, "
                              f"tg={self.tg}, depth={self.depth})")
        if self.warmup_tg is not None and self.warmup_tg < 1:
            raise ConfigError(f"the warm-up's generated tokens must be at least 1 (got {self.warmup_tg})")
        if self.latency_mode not in LATENCY_MODES:
            raise ConfigError(f"--latency-mode {self.latency_mode!r}: expected one of {', '.join(LATENCY_MODES)}")


@dataclass
class RunDone:
    """What on_run receives: one measured run (or the warm-up, with `warmup=True`, run -1 and no row)."""

    load: Load
    run: int
    records: list[RequestRecord]
    row: dict[str, Any] | None
    warmup: bool = False


@dataclass
class CellResult:
    """The records and run rows of one cell; unpacks as `records, run_rows = await session.run(...)`."""

    records: list[RequestRecord]
    run_rows: list[dict[str, Any]]
    latency: float
    client_bound: bool = False
    warnings: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        yield self.records
        yield self.run_rows


def client_bound_reasons(records: list[RequestRecord], client_cpu_frac: float) -> list[str]:
    reasons = []
    ttfts = [e2e_ttft(r) for r in records if r.ok and r.first_token is not None]
    max_lag = max((r.send_lag for r in records), default=0.0)
    if ttfts:
        mean_ttft = sum(ttfts) / len(ttfts)
        if send_lag_bound(max_lag * 1000, mean_ttft * 1000):
            reasons.append(f"max send lag {max_lag * 1000:.1f} ms is over {CLIENT_BOUND_LAG_SHARE:.0%} of the "
                           f"mean TTFT {mean_ttft * 1000:.1f} ms")
    if client_cpu_bound(client_cpu_frac):
        reasons.append(f"the client process used {client_cpu_frac:.0%} of a CPU during the run")
    return reasons


def choose_counter(endpoint: Endpoint, model: str, tokenizer: Path | None,
                   notes: list[str]) -> TokenCounter:
    """--tokenizer PATH wins; else the built-in tokenizer if the server counts like it; else /tokenize."""
    if tokenizer is not None:
        return LocalTokenizer.from_path(tokenizer)
    builtin = LocalTokenizer.builtin()
    server = ServerTokenizer(endpoint.base_url, model, headers=endpoint.headers)
    try:
        server_count = server.count(_PROBE_TEXT)
    except EndpointError as exc:
        server.close()
        notes.append(f"the server cannot count tokens ({exc}); using the built-in tokenizer, corrected by "
                     "the warm-up's usage.prompt_tokens")
        return builtin
    if server_count == builtin.count(_PROBE_TEXT):
        server.close()
        notes.append("the server counts tokens like the built-in tokenizer: counting locally")
        return builtin
    notes.append("counting prompt tokens with the server's /tokenize (give --tokenizer PATH to count locally)")
    return server


class BenchSession:
    """Measures cells against one endpoint; `open()` (or `async with`) first, `close()` at the end."""

    def __init__(self, endpoint: Endpoint | str, model: str | None, settings: BenchSettings | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = Endpoint.from_url(endpoint) if isinstance(endpoint, str) else endpoint
        self.model = model
        self.settings = settings or BenchSettings()
        self.transport = transport
        self.notes: list[str] = []  # what the session decided (token counter, prompt adaptation)
        self.latency = 0.0  # the measured network/API offset, seconds
        self._client: BenchClient | None = None
        self._prompts: PromptFactory | None = None

    @property
    def activity(self) -> StreamActivity | None:
        """The client's in-flight requests and last data time (a watchdog reads it); None before open()."""
        return self._client.activity if self._client is not None else None

    async def __aenter__(self) -> BenchSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> str:
        """Preflight, counter, prompts and the latency probe; returns the model. Raises before any load."""
        settings = self.settings
        self._client = BenchClient(self.endpoint, self.model, request_timeout=settings.request_timeout,
                                   request_deadline=settings.request_deadline, transport=self.transport)
        self.model = await self._client.preflight()
        counter = choose_counter(self.endpoint, self.model, settings.tokenizer, self.notes)
        if isinstance(counter, LocalTokenizer):
            self._client.count_tokens = counter.count  # per-chunk token counts when usage is not streamed
        self._prompts = PromptFactory(counter, pp=settings.pp, depth=settings.depth,
                                      corpus=load_corpus(settings.corpus), unique_prefix=settings.unique_prefix,
                                      seed=settings.seed)
        self.latency = await self._client.measure_latency(settings.latency_mode)
        return self.model

    async def run(self, load: Load, runs: int, *, topology: str = "", first_run: int = 0,
                  on_run: Callable[[RunDone], None] | None = None,
                  on_request: Callable[[RequestRecord], None] | None = None,
                  warmup: bool | None = None) -> CellResult:
        """One cell: the warm-up, then `runs` runs numbered from `first_run` (a resumed cell continues its
        numbering). `on_run` gets every finished run (store it at once); `on_request` every request.
        `warmup` overrides the settings' (False: more runs of a cell already warmed up)."""
        if not isinstance(load, ClosedLoad):
            raise ConfigError(f"load {load}: this bench measures closed loads only")
        if runs < 1:
            raise ConfigError(f"runs must be at least 1 (got {runs})")
        if self._client is None or self._prompts is None:
            await self.open()
        assert self._client is not None and self._prompts is not None
        client, prompts, settings = self._client, self._prompts, self.settings

        async def batch(run: int, tg: int, size: int = load.concurrency) -> list[RequestRecord]:
            return await client.run_batch([prompts.build() for _ in range(size)], tg,
                                          topology=topology, workload=settings.workload, run=run,
                                          latency=self.latency, on_request=on_request)

        result = CellResult(records=[], run_rows=[], latency=self.latency)
        if settings.warmup if warmup is None else warmup:
            warm = await batch(-1, settings.warmup_tg or settings.tg,
                               max(load.concurrency, settings.warmup_min_requests))
            if not prompts.adapted:
                counted = [r.prompt_tokens for r in warm if r.ok and r.prompt_tokens is not None]
                if counted and (shrank := prompts.adapt(round(sum(counted) / len(counted)))):
                    self.notes.append(f"the server counts {shrank} more prompt tokens than the text "
                                      "(chat template): the prompt text shrank by that much")
            if on_run:
                on_run(RunDone(load, -1, warm, None, warmup=True))
        for run in range(first_run, first_run + runs):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            records = await batch(run, settings.tg)
            wall = time.perf_counter() - wall0
            cpu_frac = (time.process_time() - cpu0) / wall if wall > 0 else math.nan
            row = run_metrics(records, client_cpu_frac=cpu_frac)
            result.records.extend(records)
            result.run_rows.append(row)
            for reason in client_bound_reasons(records, cpu_frac):
                result.client_bound = True
                result.warnings.append(f"{load.label} run {run}: {CLIENT_BOUND_MARK} {reason}")
            if on_run:
                on_run(RunDone(load, run, records, row))
        return result

    async def run_point(self, point: LoadPoint, runs: int, *, topology: str = "", first_run: int = 0,
                        rate_scale: float = 1.0, on_run: Callable[[RunDone], None] | None = None,
                        on_request: Callable[[RequestRecord], None] | None = None) -> CellResult:
        """One cell of a workload test (bench/suite.py). Closed: the warm-up, then runs `first_run` up to the
        test's own number of runs (or `runs`) of exactly c requests, each shaped by the test's shape. Open: one run of the arrival schedule under
        the test's cap (bench/openloop.py), `rate_scale` times faster for a twin profile sped up as much."""
        if self._client is None or self._prompts is None:
            await self.open()
        assert self._client is not None and self._prompts is not None
        client, prompts = self._client, self._prompts
        result = CellResult(records=[], run_rows=[], latency=self.latency)

        def done(run: int, records: list[RequestRecord], cpu_frac: float, rate: float | None) -> None:
            row = workload_row(point, records, rate=rate, client_cpu_frac=cpu_frac)
            if run < 0 and not prompts.adapted:
                # the chat template's overhead, learned once (as run() does): what the server counted beyond
                # what each prompt was built to be
                extra = [r.prompt_tokens - r.prompt_tokens_sent for r in records if r.ok and r.prompt_tokens is not None]
                if extra and (shrank := prompts.adapt(prompts.target_prompt_tokens + round(sum(extra) / len(extra)))):
                    self.notes.append(f"the server counts {shrank} more prompt tokens than the text (chat template): "
                                      "every prompt's text shrank by that much")
            if run < 0:
                if on_run:
                    on_run(RunDone(point.load, run, records, None, warmup=True))
                return
            result.records.extend(records)
            result.run_rows.append(row)
            reasons = client_bound_reasons(records, cpu_frac)
            if isinstance(point.load, OpenLoad) and rate and schedule_lag_bound(row["max_send_lag_ms"], rate):
                reasons.append(f"the client fell behind the schedule by up to {row['max_send_lag_ms']:.0f} ms "
                               f"(over {CLIENT_BOUND_SCHEDULE_SHARE:.0%} of the mean gap between arrivals)")
            for reason in reasons:
                result.client_bound = True
                result.warnings.append(f"{point.workload} {point.label} run {run}: {CLIENT_BOUND_MARK} {reason}")
            if on_run:
                on_run(RunDone(point.load, run, records, row))

        def shaped(specs: list[RequestSpec]) -> list[Prompt]:
            return [prompts.build(pp=s.prompt, depth=s.depth) for s in specs]

        if isinstance(point.load, OpenLoad):
            load = point.load.scaled(rate_scale) if rate_scale != 1.0 else point.load
            schedule = load.schedule()
            specs = point.shape.requests(len(schedule), seed=load.seed)
            built = shaped(specs)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            records = await run_open(client, built, [s.output for s in specs], schedule,
                                     max_concurrency=load.max_concurrency, topology=topology, run=first_run,
                                     latency=self.latency, on_request=on_request)
            done(first_run, records, _cpu_frac(cpu0, wall0), load.rate)
            return result
        c = point.load.concurrency
        seed = self.settings.seed or 0
        todo = list(range(first_run, point.runs or runs))  # a resumed cell measures only its missing runs
        for run in ([-1] if self.settings.warmup else []) + todo:
            specs = point.shape.requests(c, seed=seed, run=max(run, 0))
            cpu0, wall0 = time.process_time(), time.perf_counter()
            records = await client.run_batch(shaped(specs), [s.output for s in specs], topology=topology,
                                             workload=point.workload, run=run, latency=self.latency,
                                             on_request=on_request)
            done(run, records, _cpu_frac(cpu0, wall0), None)
        return result

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        counter = self._prompts.counter if self._prompts else None
        if isinstance(counter, ServerTokenizer):
            counter.close()


def _cpu_frac(cpu0: float, wall0: float) -> float:
    wall = time.perf_counter() - wall0
    return (time.process_time() - cpu0) / wall if wall > 0 else math.nan
