"""A bench session against one endpoint: choose the token counter, then measure cells one after another.

This is what `topo bench` and the sweep share: preflight (fail fast), the token counter decision, one
prompt factory (so the chat-template adaptation happens once), one client (connections reused across cells).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.client import BenchClient, Endpoint, LatencyMode
from bench.prompts import LocalTokenizer, PromptFactory, ServerTokenizer, TokenCounter
from bench.records import RequestRecord
from bench.runner import CellResult, RunDone, run_cell
from common.errors import EndpointError
from common.text import builtin_corpus, load_corpus

# A stretch of the corpus the server's /tokenize counts to decide whether the built-in tokenizer is the
# served model's (true for the twin and the tiny test model): equal counts on ~2000 characters.
_PROBE_TEXT = builtin_corpus()[5000:7000]


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


@dataclass
class BenchSession:
    endpoint: Endpoint
    model: str | None
    pp: int
    tg: int
    depth: int = 0
    latency_mode: LatencyMode = "api"
    tokenizer: Path | None = None
    corpus: Path | None = None
    unique_prefix: bool = True
    request_timeout: float = 600.0
    seed: int | None = None
    transport: httpx.AsyncBaseTransport | None = None
    notes: list[str] = field(default_factory=list)
    client: BenchClient | None = None
    prompts: PromptFactory | None = None
    latency: float | None = None

    async def open(self) -> str:
        """Preflight, counter, prompts and the latency probe; returns the model. Raises before any load."""
        self.client = BenchClient(self.endpoint, self.model, request_timeout=self.request_timeout,
                                  transport=self.transport)
        self.model = await self.client.preflight()
        counter = choose_counter(self.endpoint, self.model, self.tokenizer, self.notes)
        if isinstance(counter, LocalTokenizer):
            self.client.count_tokens = counter.count  # per-chunk token counts when usage is not streamed
        self.prompts = PromptFactory(counter, pp=self.pp, depth=self.depth, corpus=load_corpus(self.corpus),
                                     unique_prefix=self.unique_prefix, seed=self.seed)
        self.latency = await self.client.measure_latency(self.latency_mode)
        return self.model

    async def cell(self, concurrency: int, runs: int, *, topology: str = "",
                   on_run: Callable[[RunDone], None] | None = None,
                   on_request: Callable[[RequestRecord], None] | None = None) -> CellResult:
        if self.client is None or self.prompts is None:
            await self.open()
        assert self.client is not None and self.prompts is not None
        was_adapted = self.prompts.adapted
        result = await run_cell(self.endpoint, self.model, concurrency, runs, self.pp, self.tg, depth=self.depth,
                                topology=topology, latency=self.latency, prompts=self.prompts,
                                client=self.client, on_run=on_run, on_request=on_request,
                                request_timeout=self.request_timeout)
        if not was_adapted and result.prompt_adapted_by:
            self.notes.append(f"the server counts {result.prompt_adapted_by} more prompt tokens than the text "
                              "(chat template): the prompt text shrank by that much")
        return result

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        counter = self.prompts.counter if self.prompts else None
        if isinstance(counter, ServerTokenizer):
            counter.close()
