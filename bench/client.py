"""Streaming client for one OpenAI-compatible endpoint, recording raw perf_counter timestamps.

Why it is built this way (docs/METRICS.md): a load generator must not measure itself. Before a batch fires,
every concurrent request gets its own connection (one `httpx.AsyncClient` per slot, opened with a GET) and
its body serialized; `start` is taken by httpx's trace hook the moment the request headers are written to
the socket, so the client's own queueing shows up as `send_lag = start - batch_start`, not as TTFT.

Failures during a batch are data: each request's record keeps an error string that says what and where
(HTTP status, malformed SSE with event/line/byte, stream cut, timeout) and the batch goes on. Only an
endpoint that cannot be used at all (wrong URL, unknown model, refused connection at the first probe) raises
EndpointError, and it does so before any load.

The server is not trusted (a broken proxy or engine must cost a request, not the benchmark): every value of
an event is type-checked, and each request is bounded in time and memory whatever the server sends. In time
by a deadline on progress (no generated token for `request_timeout` seconds fails the request, however many
keep-alive comments or empty chunks arrive) and an overall deadline; in memory by caps on a line, an event,
the whole stream, an error body, and on token counts the server claims (`completion_tokens` sizes the
per-token timestamp list, so a claim above the requested `max_tokens` is an error, not an allocation).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx

from bench.prompts import Prompt
from bench.records import RequestRecord
from bench.wire import SENT_AT, WireTransport
from bench.workload import DEFAULT_WORKLOAD
from common.errors import ConfigError, EndpointError, StreamError
from common.masking import mask_url_credentials

LatencyMode = Literal["api", "generation", "none"]
LATENCY_MODES: tuple[str, ...] = ("api", "generation", "none")
ROUTER_BACKEND_HEADER = "x-litellm-model-id"
CONTENT_KEYS = ("content", "reasoning_content", "reasoning")
# Servers close idle keep-alive connections after ~5 s (uvicorn's and vLLM's default); a slot idle for
# less than this is assumed still connected and is not warmed again.
WARM_IDLE_S = 2.0
# Memory bounds against a hostile server. A vLLM chunk is ~300 bytes of JSON per token (more with usage in
# every chunk), so these are far above what an honest server sends.
MAX_LINE_BYTES = 1 << 20  # one SSE line
MAX_EVENT_BYTES = 4 << 20  # one SSE event (its data lines together)
STREAM_BYTES_BASE = 1 << 20  # a whole response: this plus STREAM_BYTES_PER_TOKEN per requested token
STREAM_BYTES_PER_TOKEN = 16 << 10
ERROR_BODY_BYTES = 300  # what of a non-200 body is read and kept
MAX_CLAIMED_PROMPT_TOKENS = 100_000_000  # above any context window; keeps a claim inside int64 columns
DEADLINE_FACTOR = 10.0  # default overall deadline: this many progress deadlines


@dataclass(frozen=True)
class Endpoint:
    """Where the server is and how to talk to it. `base_url` has no trailing `/v1` and never credentials:
    a `user:password@` in the given URL becomes HTTP basic auth, kept out of every printed or stored URL."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None) -> Endpoint:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--url {mask_url_credentials(url)!r}: expected http(s)://HOST:PORT (optionally "
                              "ending in /v1)")
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):
            path = path[: -len("/v1")]
        host = parts.netloc.rpartition("@")[2]
        basic = (unquote(parts.username or ""), unquote(parts.password or "")) if "@" in parts.netloc else None
        return cls(base_url=f"{parts.scheme}://{host}{path}", api_key=api_key or None, basic_auth=basic)

    @property
    def headers(self) -> dict[str, str]:
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        if self.basic_auth:
            token = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {}

    def __str__(self) -> str:
        return self.base_url + (" (api key ***)" if self.api_key else "") + \
            (" (basic auth ***)" if self.basic_auth and not self.api_key else "")

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


@dataclass
class StreamActivity:
    """How many requests are in flight and when any of them last received bytes (perf_counter): what a
    watchdog reads to tell a hung engine from a slow one."""

    in_flight: int = 0
    last_data: float = field(default_factory=time.perf_counter)

    def started(self) -> None:
        self.in_flight += 1
        self.last_data = time.perf_counter()  # a new request gets a whole stall period for its first token

    def received(self, now: float) -> None:
        self.last_data = now

    def finished(self) -> None:
        self.in_flight -= 1


class BenchClient:
    """Drives closed batches against one endpoint. Use as `async with BenchClient(...) as client:`."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str | None = None,
        *,
        request_timeout: float = 600.0,
        request_deadline: float | None = None,
        connect_timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        if request_timeout <= 0 or (request_deadline is not None and request_deadline <= 0):
            raise ConfigError(f"request timeout and deadline must be positive (got {request_timeout}, "
                              f"{request_deadline})")
        self.endpoint = endpoint
        self.model = model
        self.request_timeout = request_timeout  # deadline on progress: the longest wait for the next token
        self.request_deadline = request_deadline or request_timeout * DEADLINE_FACTOR  # a whole request
        self._timeout = httpx.Timeout(connect=connect_timeout, read=request_timeout, write=connect_timeout,
                                      pool=None)
        self._transport = transport
        self.count_tokens = count_tokens
        self._slots: list[httpx.AsyncClient] = []
        self._slot_used: list[float] = []  # perf_counter of each slot's last request
        self._slot_transports: list[httpx.AsyncBaseTransport] = []
        self.activity = StreamActivity()

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

    # -- slots for a caller that schedules its own requests (bench/openloop.py) ----------------------------

    @property
    def slot_count(self) -> int:
        return len(self._slots)

    def mark_fresh(self, count: int, at: float) -> None:
        """The first `count` slots connected at `at` (perf_counter): not idle, whatever they did before."""
        for index in range(count):
            self._slot_used[index] = max(self._slot_used[index], at)

    async def send_on_slot(self, index: int, body: bytes, prompt: Prompt, tg: int, *, topology: str,
                           workload: str, concurrency: int, run: int, request_index: int, eligible: float,
                           latency: float) -> tuple[RequestRecord, list[_Chunk]]:
        """One request with `body` on slot `index`, opened if it is new; `eligible` is when the caller was free
        to send it. A wire slot idle near the server's keep-alive limit reconnects first rather than writing to
        a connection the server may close; that handshake, like a new slot's, shows as send lag. Token times
        are assigned by finish_records once the run is over."""
        slot = (await self._ensure_slots(index + 1))[index]
        transport = self._slot_transports[index]
        if isinstance(transport, WireTransport) and time.perf_counter() - self._slot_used[index] > WARM_IDLE_S:
            await transport.connect(self.endpoint.chat_url, fresh=True)
        request = slot.build_request("POST", self.endpoint.chat_url, content=body,
                                     headers={"content-type": "application/json"}, timeout=self.load_timeout())
        return await self._one(slot, request, prompt, tg, topology, workload, concurrency, run, request_index,
                               eligible, latency, slot_index=index)

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

    def load_timeout(self) -> httpx.Timeout:
        """A load request's httpx timeout: no per-read timeout, since _one's deadlines bound each request (a
        read timeout would let a server that sends a keep-alive comment now and then hold a request forever)."""
        return httpx.Timeout(connect=self._timeout.connect, read=None, write=self._timeout.write, pool=None)

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
        """docs/METRICS.md `latency`: mean of `probes` GET /v1/models (api) or 1-token requests (generation)."""
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
        timeout = self.load_timeout()
        requests = [
            slot.build_request("POST", self.endpoint.chat_url,
                               content=json.dumps(chat_payload(self.model, prompt, out)).encode(),
                               headers={"content-type": "application/json"}, timeout=timeout)
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
                      prompt: Prompt, out: int) -> tuple[RequestRecord, list[_Chunk]]:
            result = await self._one(slot, request, prompt, out, topology, workload, concurrency, run, index,
                                     batch_start, latency)
            if on_request is not None:
                on_request(result[0])  # progress only: token times are assigned after the batch
            return result

        results = await asyncio.gather(*(
            one(index, slot, request, prompt, out)
            for index, (slot, request, prompt, out) in enumerate(zip(slots, requests, prompts, outputs))
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

    async def _one(self, slot: httpx.AsyncClient, request: httpx.Request, prompt: Prompt, tg: int,
                   topology: str, workload: str, concurrency: int, run: int, index: int, batch_start: float,
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
        max_bytes = STREAM_BYTES_BASE + tg * STREAM_BYTES_PER_TOKEN
        fallback_start = time.perf_counter()  # used only when the transport has no trace hook (tests, h2)
        response: httpx.Response | None = None
        loop = asyncio.get_running_loop()
        overall_end = loop.time() + self.request_deadline
        # One timer for both deadlines: moved forward each time a token arrives, never past the overall end.
        deadline = asyncio.timeout_at(min(overall_end, loop.time() + self.request_timeout))

        def where() -> str:
            if response is None:
                return "before the response headers"
            return f"after {parser.events} events ({parser.bytes_seen} bytes, {parser.line} lines)"

        self.activity.started()
        try:
            async with deadline:
                response = await slot.send(request, stream=True)
                self._note_start(record, request, fallback_start)
                record.status_code = response.status_code
                record.served_by = _header(response, ROUTER_BACKEND_HEADER)
                if response.status_code != 200:
                    body = (await _read_capped(response, ERROR_BODY_BYTES)).decode("utf-8", "replace")
                    record.end = time.perf_counter()
                    record.error = f"HTTP {response.status_code} from POST {request.url}: {body}"
                    return record, chunks
                async for data in response.aiter_bytes():
                    now = time.perf_counter()
                    record.end = now
                    self.activity.received(now)
                    if parser.bytes_seen + len(data) > max_bytes:
                        raise StreamError(f"the response is longer than {max_bytes} bytes (the cap for "
                                          f"max_tokens={tg}) {where()}")
                    tokens_before = len(chunks)
                    for event in parser.feed(data):
                        self._on_event(record, event, now, chunks, parser, tg)
                    if len(chunks) > tokens_before:
                        deadline.reschedule(min(overall_end, loop.time() + self.request_timeout))
                record.end = time.perf_counter() if record.end is None else record.end
                tail = parser.close()
                for event in tail:
                    self._on_event(record, event, record.end, chunks, parser, tg)
                if not parser.done:
                    raise StreamError(f"stream ended without `data: [DONE]` after {parser.events} events "
                                      f"({parser.bytes_seen} bytes)")
                if record.first_token is None:
                    raise StreamError(f"stream carried no generated text in {parser.events} events")
        except StreamError as exc:
            record.error = f"malformed stream: {exc}"
        except TimeoutError:
            if loop.time() >= overall_end - 0.001:
                record.error = f"timeout: the request exceeded its {self.request_deadline:g} s deadline {where()}"
            else:
                record.error = (f"timeout: no generated token for {self.request_timeout:g} s (progress deadline) "
                                f"{where()}")
        except httpx.TimeoutException as exc:
            record.error = f"timeout ({type(exc).__name__}, limit {self.request_timeout:g} s) {where()}"
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            record.error = f"stream cut {where()}: {type(exc).__name__}: {exc}"
        except httpx.HTTPError as exc:
            record.error = f"request failed: {type(exc).__name__}: {exc}"
        finally:
            self.activity.finished()
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
                  parser: SSEParser, max_tokens: int) -> None:
        """Take one event's facts into the record; anything of the wrong shape is a StreamError saying where."""
        if event.data == "[DONE]":
            parser.done = True
            return
        where = f"SSE event {event.number} (line {event.line}, byte {event.offset})"
        try:
            payload = json.loads(event.data)
        except (ValueError, RecursionError) as exc:
            raise StreamError(f"malformed JSON in {where}: {event.data[:80]!r}") from exc
        if not isinstance(payload, dict):
            raise StreamError(f"{where} is not a JSON object: {event.data[:80]!r}")
        try:
            _take_event(record, payload, where, now, chunks, max_tokens)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a shape not foreseen
            raise StreamError(f"unexpected content in {where}: {exc!r}: {event.data[:80]!r}") from exc


def _take_event(record: RequestRecord, payload: dict[str, Any], where: str, now: float, chunks: list[_Chunk],
                max_tokens: int) -> None:
    if "error" in payload:
        raise StreamError(f"server error in {where}: {json.dumps(payload['error'])[:200]}")
    response_id = payload.get("id")
    if record.response_id is None and isinstance(response_id, str):
        record.response_id = response_id[:200]
    usage = payload.get("usage")
    completion: int | None = None
    if usage is not None:
        if not isinstance(usage, dict):
            raise StreamError(f"{where}: `usage` is a {type(usage).__name__}, not an object")
        prompt_tokens = _claimed_tokens(usage, "prompt_tokens", MAX_CLAIMED_PROMPT_TOKENS, where)
        completion = _claimed_tokens(usage, "completion_tokens", max_tokens, where)
        if prompt_tokens is not None:
            record.prompt_tokens = prompt_tokens
        if completion is not None:
            record.completion_tokens = completion
    choices = payload.get("choices")
    if choices is None or choices == []:
        return
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise StreamError(f"{where}: `choices` is not a list of objects: {json.dumps(choices)[:80]}")
    if record.first_response is None:
        record.first_response = now
    delta = choices[0].get("delta")
    if delta is None:
        return
    if not isinstance(delta, dict):
        raise StreamError(f"{where}: `choices[0].delta` is a {type(delta).__name__}, not an object")
    parts: list[str] = []
    for key in CONTENT_KEYS:
        value = delta.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise StreamError(f"{where}: `delta.{key}` is a {type(value).__name__}, not a string")
        parts.append(value)
    text = "".join(parts)
    if not text:
        return
    # Each chunk with text carries at least one token: far more chunks than max_tokens is a server fault,
    # and stopping here keeps the chunk list bounded.
    if len(chunks) >= 2 * max_tokens + 16:
        raise StreamError(f"{where}: more than {len(chunks)} chunks of text for max_tokens={max_tokens}")
    if record.first_token is None:
        record.first_token = now
    chunks.append(_Chunk(now, text, completion))


def _claimed_tokens(usage: dict[str, Any], key: str, cap: int, where: str) -> int | None:
    """A token count the server claims: a non-negative integer no larger than `cap`, else a StreamError."""
    value = usage.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StreamError(f"{where}: `usage.{key}` is {json.dumps(value)[:40]}, not a token count")
    if value > cap:
        what = f"the requested max_tokens={cap}" if key == "completion_tokens" else f"{cap}"
        raise StreamError(f"{where}: `usage.{key}` claims {value} tokens, more than {what}")
    return value


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of a body; the rest is not read (the connection is dropped afterwards)."""
    body = bytearray()
    async for data in response.aiter_bytes():
        body += data[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


def _header(response: httpx.Response, name: str) -> str | None:
    value = response.headers.get(name)
    return value[:200] if value is not None else None


@dataclass
class SSEEvent:
    data: str
    number: int  # 1-based event number in the stream
    line: int  # 1-based line where the event's data started
    offset: int  # byte offset where the event's data started


class SSEParser:
    """Incremental server-sent-events parser that remembers where (event, line, byte) things happened.

    A line longer than MAX_LINE_BYTES or an event longer than MAX_EVENT_BYTES is a StreamError: a server
    that never sends a newline must not grow the buffer without end.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._data_bytes = 0
        self._event_line = 0
        self._event_offset = 0
        self.line = 0
        self.bytes_seen = 0
        self._buffer_offset = 0
        self.events = 0
        self.done = False

    def feed(self, data: bytes) -> list[SSEEvent]:
        self.bytes_seen += len(data)
        buffer = self._buffer
        search_from = len(buffer)  # what is buffered already holds no newline
        buffer += data
        events: list[SSEEvent] = []
        start = 0
        while True:
            newline = buffer.find(b"\n", search_from)
            if newline < 0:
                break
            raw = bytes(buffer[start:newline])
            line_offset = self._buffer_offset
            self._buffer_offset += newline + 1 - start
            self.line += 1
            event = self._line(raw.rstrip(b"\r"), line_offset)
            if event is not None:
                events.append(event)
            start = search_from = newline + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES:
            raise StreamError(f"SSE line {self.line + 1} (byte {self._buffer_offset}) is longer than "
                              f"{MAX_LINE_BYTES} bytes")
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event without its blank line still counts."""
        events: list[SSEEvent] = []
        if self._buffer:
            self.line += 1
            event = self._line(bytes(self._buffer).rstrip(b"\r"), self._buffer_offset)
            self._buffer = bytearray()
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
            self._data_bytes += len(raw)
            if self._data_bytes > MAX_EVENT_BYTES:
                raise StreamError(f"SSE event {self.events + 1} (line {self._event_line}, byte "
                                  f"{self._event_offset}) is longer than {MAX_EVENT_BYTES} bytes")
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif name not in ("event", "id", "retry"):
            raise StreamError(f"SSE line {self.line} (byte {offset}) is not a `data:` line: {text[:80]!r}")
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            return None
        self.events += 1
        event = SSEEvent("\n".join(self._data), self.events, self._event_line, self._event_offset)
        self._data, self._data_bytes = [], 0
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
