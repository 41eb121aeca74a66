"""Streaming client for one OpenAI-compatible endpoint, recording raw perf_counter timestamps.

Why it is built this way (METRICS.md): a load generator must not measure itself. Before a batch fires,
every concurrent request gets its own connection (one `httpx.AsyncClient` per slot, opened with a GET) and
its body serialized; `start` is taken by httpx's trace hook the moment the request headers are written to
the socket, so the client's own queueing shows up as `send_lag = start - batch_start`, not as TTFT.

Failures during a batch are data: each request's record keeps an error string that says what and where
(HTTP status, malformed SSE with event/line/byte, stream cut, timeout) and the batch goes on. Only an
endpoint that cannot be used at all (wrong URL, unknown model, refused connection at the first probe) raises
EndpointError, and it does so before any load.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from bench.prompts import Prompt
from bench.records import RequestRecord
from bench.wire import SENT_AT, WireTransport
from bench.workload import DEFAULT_WORKLOAD
from common.errors import ConfigError, EndpointError, StreamError

LatencyMode = Literal["api", "generation", "none"]
LATENCY_MODES: tuple[str, ...] = ("api", "generation", "none")
ROUTER_BACKEND_HEADER = "x-litellm-model-id"
CONTENT_KEYS = ("content", "reasoning_content", "reasoning")
# Servers close idle keep-alive connections after ~5 s (uvicorn's and vLLM's default); a slot idle for
# less than this is assumed still connected and is not warmed again.
WARM_IDLE_S = 2.0


@dataclass(frozen=True)
class Endpoint:
    """Where the server is and how to talk to it. `base_url` has no trailing `/v1`."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None) -> Endpoint:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--url {url!r}: expected http(s)://HOST:PORT (optionally ending in /v1)")
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):
            path = path[: -len("/v1")]
        return cls(base_url=f"{parts.scheme}://{parts.netloc}{path}", api_key=api_key or None)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def __str__(self) -> str:
        return self.base_url + (" (api key ***)" if self.api_key else "")

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    @property
    def models_url(self) -> str:
        return f"{self.base_url}/v1/models"


@dataclass
class _Chunk:
    """One SSE event that carried generated text (kept raw; tokens are assigned after the batch)."""

    time: float
    text: str
    completion_tokens: int | None  # cumulative, when the server streams usage with every chunk


def chat_payload(model: str, prompt: Prompt, tg: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": prompt.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": tg,
        "min_tokens": tg,
        "ignore_eos": True,
        "temperature": 0.0,
    }


class BenchClient:
    """Drives closed batches against one endpoint. Use as `async with BenchClient(...) as client:`."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str | None = None,
        *,
        request_timeout: float = 600.0,
        connect_timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.request_timeout = request_timeout
        self._timeout = httpx.Timeout(connect=connect_timeout, read=request_timeout, write=connect_timeout,
                                      pool=None)
        self._transport = transport
        self.count_tokens = count_tokens
        self._slots: list[httpx.AsyncClient] = []
        self._slot_used: list[float] = []  # perf_counter of each slot's last request
        self._slot_transports: list[httpx.AsyncBaseTransport] = []

    async def __aenter__(self) -> BenchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        slots, self._slots, self._slot_used, self._slot_transports = self._slots, [], [], []
        await asyncio.gather(*(slot.aclose() for slot in slots), return_exceptions=True)

    def _new_slot(self) -> httpx.AsyncClient:
        # One connection per slot: a slot's request never waits behind another's in a shared pool. The wire
        # transport writes a whole batch in one loop (see bench/wire.py); it speaks plain http only, so an
        # https endpoint goes through httpcore (and its send lag shows in send_lag and the client-bound flag).
        transport: httpx.AsyncBaseTransport | None = self._transport
        if transport is None:
            transport = WireTransport(connect_timeout=self._timeout.connect or 10.0) \
                if self.endpoint.base_url.startswith("http://") else httpx.AsyncHTTPTransport()
        self._slot_transports.append(transport)
        return httpx.AsyncClient(
            headers=self.endpoint.headers,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            transport=transport,
        )

    async def _ensure_slots(self, count: int) -> list[httpx.AsyncClient]:
        while len(self._slots) < count:
            self._slots.append(self._new_slot())
            self._slot_used.append(-math.inf)
        return self._slots[:count]

    # -- before any load ----------------------------------------------------------------------------------

    async def preflight(self) -> str:
        """Check the URL and the model; returns the model to use. Raises EndpointError fast otherwise."""
        url = self.endpoint.models_url
        try:
            async with httpx.AsyncClient(headers=self.endpoint.headers, transport=self._transport,
                                         timeout=httpx.Timeout(10.0)) as probe:
                response = await probe.get(url)
        except httpx.TimeoutException as exc:
            raise EndpointError(f"GET {url} timed out after 10 s: is {self.endpoint} the server?") from exc
        except httpx.HTTPError as exc:
            raise EndpointError(f"cannot reach {url}: {exc!r}; is the server up and the URL right?") from exc
        if response.status_code in (401, 403):
            raise EndpointError(f"GET {url} answered HTTP {response.status_code}: the server wants an API key "
                                "(--api-key KEY)")
        if response.status_code != 200:
            raise EndpointError(f"GET {url} answered HTTP {response.status_code}: not an OpenAI-compatible "
                                f"server at {self.endpoint.base_url}? ({response.text[:120]!r})")
        try:
            served = [str(entry["id"]) for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise EndpointError(f"GET {url}: expected an OpenAI model list, got {response.text[:200]!r}") from exc
        if not served:
            raise EndpointError(f"{url} serves no model")
        if self.model is None:
            if len(served) > 1:
                raise EndpointError(f"{self.endpoint.base_url} serves several models ({', '.join(served)}); "
                                    "choose one with --model")
            self.model = served[0]
        elif self.model not in served:
            raise EndpointError(f"model {self.model!r} is not served at {self.endpoint.base_url}; it serves: "
                                f"{', '.join(served)}")
        return self.model

    async def warm_connections(self, count: int, idle_after: float = WARM_IDLE_S) -> None:
        """Open `count` connections (one per slot) so that no request of the next batch pays a handshake.

        A wire-transport slot just connects (no request). A slot on an injected transport (tests) is
        touched with a GET when idle for `idle_after` seconds; a GET right before a request is avoided
        otherwise, because the small exchange can leave the connection in delayed-ACK mode, and a server
        with Nagle on then holds its first body bytes ~40 ms.
        """
        slots = await self._ensure_slots(count)
        now = time.perf_counter()

        async def touch(index: int, slot: httpx.AsyncClient) -> None:
            try:
                transport = self._slot_transports[index]
                if isinstance(transport, WireTransport):
                    # a connection idle for long may be closed by the server as the batch writes to it
                    await transport.connect(self.endpoint.chat_url, fresh=now - self._slot_used[index] > idle_after)
                elif now - self._slot_used[index] > idle_after:
                    response = await slot.get(self.endpoint.models_url)
                    await response.aclose()
                    self._slot_used[index] = time.perf_counter()
            except httpx.HTTPError:
                pass  # the batch's own request will record what is wrong with this connection

        await asyncio.gather(*(touch(i, slot) for i, slot in enumerate(slots)))

    async def measure_latency(self, mode: LatencyMode, probes: int = 3) -> float:
        """METRICS.md `latency`: mean of `probes` GET /v1/models (api) or 1-token requests (generation)."""
        if mode == "none":
            return 0.0
        if mode not in LATENCY_MODES:
            raise ConfigError(f"--latency-mode {mode!r}: expected one of {', '.join(LATENCY_MODES)}")
        (slot,) = await self._ensure_slots(1)
        await self.warm_connections(1)
        samples: list[float] = []
        for _ in range(probes):
            try:
                if mode == "api":
                    t0 = time.perf_counter()
                    async with slot.stream("GET", self.endpoint.models_url) as response:
                        async for _ in response.aiter_raw():
                            break  # first byte of the body
                        t1 = time.perf_counter()
                        status = response.status_code
                else:
                    body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "Hi"}],
                                       "stream": True, "max_tokens": 1}).encode()
                    t0 = time.perf_counter()
                    async with slot.stream("POST", self.endpoint.chat_url, content=body,
                                           headers={"content-type": "application/json"}) as response:
                        async for _ in response.aiter_raw():
                            break
                        t1 = time.perf_counter()
                        status = response.status_code
            except httpx.HTTPError as exc:
                raise EndpointError(f"latency probe ({mode}) against {self.endpoint.base_url} failed: "
                                    f"{exc!r}") from exc
            if status != 200:
                raise EndpointError(f"latency probe ({mode}) against {self.endpoint.base_url} answered "
                                    f"HTTP {status}")
            samples.append(t1 - t0)
        self._slot_used[0] = time.perf_counter()
        return sum(samples) / len(samples)

    # -- the load -----------------------------------------------------------------------------------------

    async def run_batch(
        self,
        prompts: Sequence[Prompt],
        tg: int | Sequence[int],
        *,
        topology: str = "",
        workload: str = DEFAULT_WORKLOAD,
        run: int = 0,
        latency: float = 0.0,
        on_request: Callable[[RequestRecord], None] | None = None,
    ) -> list[RequestRecord]:
        """Fire len(prompts) requests at once and wait for all of them (a closed batch). `tg` is one output
        length for all, or one per request."""
        if self.model is None:
            raise EndpointError("BenchClient.run_batch before preflight(): no model chosen")
        concurrency = len(prompts)
        outputs = [tg] * concurrency if isinstance(tg, int) else list(tg)
        slots = await self._ensure_slots(concurrency)
        await self.warm_connections(concurrency)
        requests = [
            slot.build_request("POST", self.endpoint.chat_url,
                               content=json.dumps(chat_payload(self.model, prompt, out)).encode(),
                               headers={"content-type": "application/json"})
            for slot, prompt, out in zip(slots, prompts, outputs)
        ]
        wires = [t for t in self._slot_transports[:concurrency] if isinstance(t, WireTransport)]
        primed = len(wires) == concurrency
        if primed:
            try:
                await asyncio.gather(*(wire.prime(request) for wire, request in zip(wires, requests)))
            except httpx.HTTPError:
                primed = False  # a slot cannot connect: send() will retry it and record the failure
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection pause in the middle of the firing loop would show up as send lag
        try:
            batch_start = time.perf_counter()
            if primed:
                for wire, request in zip(wires, requests):
                    wire.fire(request)  # a socket write each, no await: all c are on the wire within a few ms
        finally:
            if gc_was_enabled:
                gc.enable()
        async def one(index: int, slot: httpx.AsyncClient, request: httpx.Request,
                      prompt: Prompt) -> tuple[RequestRecord, list[_Chunk]]:
            result = await self._one(slot, request, prompt, topology, workload, concurrency, run, index, batch_start,
                                     latency)
            if on_request is not None:
                on_request(result[0])  # progress only: token times are assigned after the batch
            return result

        results = await asyncio.gather(*(
            one(index, slot, request, prompt)
            for index, (slot, request, prompt) in enumerate(zip(slots, requests, prompts))
        ))
        return self.finish_records(results)

    def finish_records(self, results: Sequence[tuple[RequestRecord, list[_Chunk]]]) -> list[RequestRecord]:
        records = []
        for record, chunks in results:
            # Token timestamps are assigned after the run so that tokenizer work never delays a stream.
            record.token_times = assign_token_times(chunks, record.completion_tokens, self.count_tokens)
            if record.ok and record.completion_tokens is None:
                record.completion_tokens = len(record.token_times)
            records.append(record)
        return records

    async def _one(self, slot: httpx.AsyncClient, request: httpx.Request, prompt: Prompt, topology: str,
                   workload: str, concurrency: int, run: int, index: int, batch_start: float,
                   latency: float, slot_index: int | None = None) -> tuple[RequestRecord, list[_Chunk]]:
        record = RequestRecord(topology=topology, workload=workload, concurrency=concurrency, run=run, index=index,
                               batch_start=batch_start, start=math.nan,
                               prompt_tokens_sent=prompt.expected_prompt_tokens, latency_offset=latency)

        async def trace(event: str, info: dict[str, Any]) -> None:
            if event == "http11.send_request_headers.started" and math.isnan(record.start):
                record.start = time.perf_counter()

        request.extensions = {**request.extensions, "trace": trace}
        parser = SSEParser()
        chunks: list[_Chunk] = []
        fallback_start = time.perf_counter()  # used only when the transport has no trace hook (tests, h2)
        response: httpx.Response | None = None
        try:
            response = await slot.send(request, stream=True)
            self._note_start(record, request, fallback_start)
            record.status_code = response.status_code
            record.served_by = response.headers.get(ROUTER_BACKEND_HEADER)
            if response.status_code != 200:
                body = (await response.aread())[:300].decode("utf-8", "replace")
                record.end = time.perf_counter()
                record.error = f"HTTP {response.status_code} from POST {request.url}: {body}"
                return record, chunks
            async for data in response.aiter_bytes():
                now = time.perf_counter()
                record.end = now
                for event in parser.feed(data):
                    self._on_event(record, event, now, chunks, parser)
            record.end = time.perf_counter() if record.end is None else record.end
            tail = parser.close()
            for event in tail:
                self._on_event(record, event, record.end, chunks, parser)
            if not parser.done:
                raise StreamError(f"stream ended without `data: [DONE]` after {parser.events} events "
                                  f"({parser.bytes_seen} bytes)")
            if record.first_token is None:
                raise StreamError(f"stream carried no generated text in {parser.events} events")
        except StreamError as exc:
            record.error = f"malformed stream: {exc}"
        except httpx.TimeoutException as exc:
            where = "before the response headers" if response is None else \
                f"after {parser.events} events ({parser.bytes_seen} bytes)"
            record.error = f"timeout ({type(exc).__name__}, limit {self.request_timeout:g} s) {where}"
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            where = "before the response headers" if response is None else \
                f"after {parser.events} events ({parser.bytes_seen} bytes)"
            record.error = f"stream cut {where}: {type(exc).__name__}: {exc}"
        except httpx.HTTPError as exc:
            record.error = f"request failed: {type(exc).__name__}: {exc}"
        finally:
            self._slot_used[index if slot_index is None else slot_index] = time.perf_counter()
            self._note_start(record, request, fallback_start)
            if record.end is None:
                record.end = time.perf_counter()
            if response is not None:
                await response.aclose()
        return record, chunks

    @staticmethod
    def _note_start(record: RequestRecord, request: httpx.Request, fallback: float) -> None:
        """The wire transport's hand-over time, else httpcore's trace hook, else just before send()."""
        sent_at = request.extensions.get(SENT_AT)
        if sent_at is not None:
            record.start = sent_at
        elif math.isnan(record.start):
            record.start = fallback

    @staticmethod
    def _on_event(record: RequestRecord, event: SSEEvent, now: float, chunks: list[_Chunk],
                  parser: SSEParser) -> None:
        if event.data == "[DONE]":
            parser.done = True
            return
        try:
            payload = json.loads(event.data)
        except ValueError as exc:
            raise StreamError(f"malformed JSON in SSE event {event.number} (line {event.line}, byte "
                              f"{event.offset}): {event.data[:80]!r}") from exc
        if not isinstance(payload, dict):
            raise StreamError(f"SSE event {event.number} (line {event.line}, byte {event.offset}) is not a JSON "
                              f"object: {event.data[:80]!r}")
        if "error" in payload:
            raise StreamError(f"server error in SSE event {event.number} (line {event.line}): "
                              f"{json.dumps(payload['error'])[:200]}")
        if record.response_id is None and isinstance(payload.get("id"), str):
            record.response_id = payload["id"]
        usage = payload.get("usage")
        if isinstance(usage, dict):
            if usage.get("prompt_tokens") is not None:
                record.prompt_tokens = int(usage["prompt_tokens"])
            if usage.get("completion_tokens") is not None:
                record.completion_tokens = int(usage["completion_tokens"])
        choices = payload.get("choices")
        if not choices:
            return
        if record.first_response is None:
            record.first_response = now
        delta = choices[0].get("delta") or {}
        text = "".join(str(delta[key]) for key in CONTENT_KEYS if delta.get(key))
        if text:
            if record.first_token is None:
                record.first_token = now
            cumulative = usage.get("completion_tokens") if isinstance(usage, dict) else None
            chunks.append(_Chunk(now, text, int(cumulative) if cumulative is not None else None))


@dataclass
class SSEEvent:
    data: str
    number: int  # 1-based event number in the stream
    line: int  # 1-based line where the event's data started
    offset: int  # byte offset where the event's data started


class SSEParser:
    """Incremental server-sent-events parser that remembers where (event, line, byte) things happened."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event_line = 0
        self._event_offset = 0
        self.line = 0
        self.bytes_seen = 0
        self._buffer_offset = 0
        self.events = 0
        self.done = False

    def feed(self, data: bytes) -> list[SSEEvent]:
        self.bytes_seen += len(data)
        self._buffer += data
        events: list[SSEEvent] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            raw, self._buffer = self._buffer[:newline], self._buffer[newline + 1:]
            line_offset = self._buffer_offset
            self._buffer_offset += newline + 1
            self.line += 1
            event = self._line(raw.rstrip(b"\r"), line_offset)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event without its blank line still counts."""
        events: list[SSEEvent] = []
        if self._buffer:
            self.line += 1
            event = self._line(self._buffer.rstrip(b"\r"), self._buffer_offset)
            self._buffer = b""
            if event is not None:
                events.append(event)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _line(self, raw: bytes, offset: int) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StreamError(f"invalid UTF-8 in SSE line {self.line} (byte {offset})") from exc
        if text.startswith(":"):
            return None  # comment / keep-alive
        name, _, value = text.partition(":")
        if name == "data":
            if not self._data:
                self._event_line, self._event_offset = self.line, offset
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif name not in ("event", "id", "retry"):
            raise StreamError(f"SSE line {self.line} (byte {offset}) is not a `data:` line: {text[:80]!r}")
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            return None
        self.events += 1
        event = SSEEvent("\n".join(self._data), self.events, self._event_line, self._event_offset)
        self._data = []
        return event


def assign_token_times(chunks: Sequence[_Chunk], completion_tokens: int | None,
                       count_tokens: Callable[[str], int] | None) -> list[float]:
    """One timestamp per generated token.

    Tokens per chunk come from the server's cumulative usage when it streams it, else from the tokenizer,
    else one per chunk; the counts are then scaled (largest remainder) to the server's completion_tokens.
    The k tokens of a chunk are spread evenly over the interval since the previous chunk, the last of them
    at the chunk's arrival; the first chunk's tokens all take its arrival time.
    """
    if not chunks:
        return []
    weights: list[int] = []
    previous = 0
    for chunk in chunks:
        if chunk.completion_tokens is not None:
            weights.append(max(0, chunk.completion_tokens - previous))
            previous = chunk.completion_tokens
        elif count_tokens is not None:
            weights.append(max(1, count_tokens(chunk.text)))
        else:
            weights.append(1)
    total = completion_tokens if completion_tokens is not None else sum(weights)
    counts = _scale(weights, total)
    times: list[float] = []
    previous_time = chunks[0].time
    for index, (chunk, k) in enumerate(zip(chunks, counts)):
        if index == 0:
            times.extend([chunk.time] * k)
        else:
            step = (chunk.time - previous_time) / k if k else 0.0
            times.extend(previous_time + step * (j + 1) for j in range(k))
        previous_time = chunk.time
    return times


def _scale(weights: list[int], total: int) -> list[int]:
    weight_sum = sum(weights)
    if weight_sum == total or weight_sum == 0:
        return list(weights) if weight_sum == total else [0] * len(weights)
    shares = [w * total / weight_sum for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
