"""The twin's HTTP face: an OpenAI-compatible server shaped like vLLM's, in front of twin.engine.Engine.

What a client sees is what vLLM would send: SSE chunks with one token each per engine step, a final
usage chunk with empty `choices` when `stream_options.include_usage` is set, `/v1/models` with
`max_model_len`, `/tokenize`, `/health`, and `/metrics` with vLLM's metric names labelled `model_name`.
Prompt tokens are counted with common.text's tokenizer; the generated text is real tokens of that
tokenizer (a stretch of the corpus per request), so content and counts agree.

Without `ignore_eos` the twin "emits EOS" where its stretch of text ends a paragraph (after `min_tokens`),
like a model that finishes its answer (`finish_reason: stop`); with `ignore_eos` it generates exactly
`max_tokens` (`finish_reason: length`), which is what benchmarks ask for.

The server also keeps its own record of every request (arrival, first and last token, tokens) at
GET /twin/requests: the server-side truth a client's TTFT and decode rate can be compared with.

    build_app(engine, group, *, served_model_names, model_root, api_key=None, seed=0) -> Starlette

Starting it from `twin serve` flags (ranks, engine, socket, signals) is twin/launch.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from bisect import bisect_left
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from common.errors import ConfigError, EngineRequestError
from common.text import builtin_corpus, builtin_tokenizer, count_tokens, render_chat
from twin.distributed import LocalRanks, RankGroup

LIVENESS_CHECK_S = 1.0  # a waiting stream checks this often that the engine's step loop still runs
MAX_RECORDS = 100_000  # bounded memory for a long-running server; tests read far fewer


# ---------------------------------------------------------------------------------------- generated text


class TextSource:
    """The corpus as a sequence of real tokens; each request reads its own stretch of it."""

    def __init__(self, corpus: str, tokenizer: Any, seed: int = 0) -> None:
        encoding = tokenizer.encode(corpus, add_special_tokens=False)
        starts = [start for start, _ in encoding.offsets] + [len(corpus)]
        # Cutting at the next token's start keeps every character: the pieces concatenate to the corpus.
        self.pieces: list[str] = [corpus[starts[i] : starts[i + 1]] for i in range(len(encoding.ids))]
        # A paragraph ends at the token that completes a blank line (its piece, with the character before it).
        self.paragraph_ends: list[int] = [
            i for i in range(len(self.pieces)) if "\n\n" in corpus[max(0, starts[i] - 1) : starts[i + 1]]
        ]
        self.seed = seed
        self._piece_json: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.pieces)

    def offset_for(self, request_id: str) -> int:
        digest = hashlib.blake2b(f"{self.seed}:{request_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % len(self.pieces)

    def piece(self, offset: int, index: int) -> str:
        return self.pieces[(offset + index) % len(self.pieces)]

    def piece_json(self, offset: int, index: int) -> bytes:
        """The piece as a JSON string literal (cached: a stream encodes each of its tokens)."""
        position = (offset + index) % len(self.pieces)
        cached = self._piece_json.get(position)
        if cached is None:
            cached = self._piece_json[position] = json.dumps(self.pieces[position]).encode()
        return cached

    def text(self, offset: int, count: int) -> str:
        return "".join(self.piece(offset, i) for i in range(count))

    def natural_length(self, offset: int, min_tokens: int, max_tokens: int) -> int:
        """Tokens up to and including the first paragraph end at or after `min_tokens`, at most max_tokens."""
        size = len(self.pieces)
        if not self.paragraph_ends:
            return max_tokens
        first_allowed = offset + max(min_tokens, 1) - 1  # index (unwrapped) of the earliest stopping token
        position = bisect_left(self.paragraph_ends, first_allowed % size)
        if position < len(self.paragraph_ends):
            stop = self.paragraph_ends[position] + (first_allowed - first_allowed % size)
        else:
            stop = self.paragraph_ends[0] + (first_allowed - first_allowed % size) + size
        return max(max(min_tokens, 1), min(max_tokens, stop - offset + 1))


@lru_cache(maxsize=4)
def default_text_source(seed: int = 0) -> TextSource:
    return TextSource(builtin_corpus(), builtin_tokenizer(), seed)


# ------------------------------------------------------------------------------------------ the records


@dataclass
class ServedRequest:
    """The server's own view of one request (perf_counter seconds: comparable with a client on the host)."""

    request_id: str
    endpoint: str
    stream: bool
    arrival: float  # request reached the handler
    arrival_unix: float
    prompt_tokens: int = 0
    max_tokens: int = 0
    target_tokens: int = 0  # what the engine was asked to generate (natural stop or max_tokens)
    first_token: float | None = None  # the first token left the server
    last_token: float | None = None
    end: float | None = None
    completion_tokens: int = 0
    token_times: list[float] = field(default_factory=list)
    engine_first_token: float | None = None  # the engine clock's time of the first token
    finish_reason: str | None = None
    status_code: int = 200
    error: str | None = None


# ------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An OpenAI-style error response (vLLM's shape: {"error": {message, type, param, code}})."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "BadRequestError", param)


def _int_field(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer (got {value!r})", name)
    if value < minimum:
        raise _bad(f"{name} must be at least {minimum}, got {value}.", name)
    return value


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise _bad("only text content parts are supported by the twin", "messages")
        return "".join(parts)
    if content is None:
        return ""
    raise _bad(f"message content must be a string or a list of text parts (got {type(content).__name__})", "messages")


def _chat_prompt(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    rendered = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad("every message needs a string role", "messages")
        rendered.append({"role": message["role"], "content": _message_text(message.get("content"))})
    return render_chat(rendered)


async def _count_tokens_off_loop(text: str) -> int:
    """Tokenize in a worker thread (the tokenizer releases the GIL): a long prompt costs milliseconds,
    which must not stall the engine's step loop or other requests' token streams."""
    if len(text) < 2000:
        return count_tokens(text)  # cheaper than a thread hop
    return await asyncio.to_thread(count_tokens, text)


# ------------------------------------------------------------------------------------------- the app


class _Failure:
    """Put into a running request's queue when the engine can no longer serve it."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


@dataclass(eq=False)  # identity: a run is a member of TwinServer.runs
class _Run:
    record: ServedRequest
    queue: asyncio.Queue[Any]
    pump: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()


class TwinServer:
    """State behind the routes: the engine, the peer ranks, the text, the records, the counters."""

    def __init__(
        self,
        engine: Any,
        group: RankGroup,
        *,
        served_model_names: tuple[str, ...],
        model_root: str,
        api_key: str | None = None,
        text: TextSource | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not served_model_names:
            raise ConfigError("the twin needs at least one served model name")
        self.engine = engine
        self.group = group
        self.served_model_names = served_model_names
        self.model_root = model_root
        self.api_key = api_key
        self.text = text or default_text_source()
        self.clock = clock
        self.max_model_len: int = engine.config.effective_max_model_len
        self.records: deque[ServedRequest] = deque(maxlen=MAX_RECORDS)
        self.runs: set[_Run] = set()
        self.finished_by_reason: dict[str, int] = {}
        self.created = int(time.time())
        group.on_lost(self._fail_running)

    # --- the engine's side
    def _fail_running(self, reason: str) -> None:
        for run in list(self.runs):
            run.queue.put_nowait(_Failure(503, f"the engine lost a rank: {reason}"))

    def _check_serving(self) -> None:
        if not self.group.healthy:
            raise ApiError(503, f"the engine is unhealthy: it lost a rank ({self.group.failure})", "ServiceUnavailableError")
        if not getattr(self.engine, "running", True):
            raise ApiError(503, "the engine's step loop is not running", "ServiceUnavailableError")

    def _start_run(self, record: ServedRequest) -> _Run:
        from twin.engine import GenerationRequest

        # the arrival lets the engine form the first step from what had arrived, not from tokenizer jitter
        request = GenerationRequest(record.request_id, record.prompt_tokens, record.target_tokens, arrival=record.arrival)
        try:
            events = self.engine.generate(request)
        except EngineRequestError as exc:
            raise _bad(str(exc)) from exc
        except RuntimeError as exc:
            raise ApiError(503, f"the engine cannot take requests: {exc}", "ServiceUnavailableError") from exc
        run = _Run(record, asyncio.Queue())

        async def pump() -> None:
            try:
                async for event in events:
                    run.queue.put_nowait(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any engine failure ends this request with an error
                run.queue.put_nowait(_Failure(500, f"engine error: {exc}"))
            finally:
                await events.aclose()  # on cancel: takes the request out of the batch

        run.pump = asyncio.create_task(pump(), name=f"twin-pump-{record.request_id}")
        self.runs.add(run)
        return run

    async def _next_item(self, run: _Run) -> Any:
        """The run's next token or failure. While waiting, make sure the engine is still alive: a dead
        step loop would otherwise leave the stream waiting forever."""
        if not run.queue.empty():
            return run.queue.get_nowait()  # the common case under load: no timer, no task
        while True:
            try:
                return await asyncio.wait_for(run.queue.get(), LIVENESS_CHECK_S)
            except asyncio.TimeoutError:
                if not getattr(self.engine, "running", True):
                    return _Failure(500, "the engine's step loop stopped")

    def _finish_run(self, run: _Run) -> None:
        run.cancel()
        self.runs.discard(run)
        record = run.record
        record.end = self.clock()
        if record.error is None and record.finish_reason is not None:
            self.finished_by_reason[record.finish_reason] = self.finished_by_reason.get(record.finish_reason, 0) + 1

    # --- request parsing shared by chat and completions
    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise ApiError(401, "Unauthorized: a valid `Authorization: Bearer <api key>` is required", "AuthenticationError")

    async def _json_body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        return body

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if model is None:
            return self.served_model_names[0]
        if model not in self.served_model_names:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return str(model)

    def _new_record(self, endpoint: str, body: dict[str, Any], arrival: float, arrival_unix: float,
                    prompt_tokens: int, prefix: str) -> tuple[ServedRequest, int, bool, bool]:
        if body.get("n", 1) != 1:
            raise _bad("the twin serves n=1 only", "n")
        max_tokens = _int_field(body, "max_completion_tokens", minimum=1)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", minimum=1)
        min_tokens = _int_field(body, "min_tokens", minimum=0) or 0
        if prompt_tokens >= self.max_model_len or (
            max_tokens is not None and prompt_tokens + max_tokens > self.max_model_len
        ):
            requested = prompt_tokens + (max_tokens or 0)
            raise _bad(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{requested} tokens ({prompt_tokens} in the messages, {max_tokens or 0} in the completion). "
                "Please reduce the length of the messages or completion.",
                "messages" if endpoint == "chat" else "prompt",
            )
        if max_tokens is None:
            max_tokens = self.max_model_len - prompt_tokens  # vLLM's default: the rest of the context
        if min_tokens > max_tokens:
            raise _bad(f"min_tokens ({min_tokens}) must be less than or equal to max_tokens ({max_tokens})", "min_tokens")
        ignore_eos = bool(body.get("ignore_eos", False))
        stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise _bad("stream_options must be an object", "stream_options")
        include_usage = stream and bool(options.get("include_usage", False))
        record = ServedRequest(f"{prefix}-{uuid.uuid4().hex}", endpoint, stream, arrival, arrival_unix,
                               prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        offset = self.text.offset_for(record.request_id)
        if ignore_eos:
            record.target_tokens = max_tokens
        else:
            record.target_tokens = self.text.natural_length(offset, min_tokens, max_tokens)
        return record, offset, stream, include_usage

    # --- the routes
    async def chat_completions(self, request: Request) -> Response:
        return await self._completion(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._completion(request, "completions")

    async def _completion(self, request: Request, endpoint: str) -> Response:
        arrival, arrival_unix = self.clock(), time.time()
        try:
            self._authorize(request)
            body = await self._json_body(request)
            model = self._check_model(body)
            if endpoint == "chat":
                prompt_tokens = await _count_tokens_off_loop(_chat_prompt(body.get("messages")))
            else:
                prompt_tokens = await self._completion_prompt_tokens(body.get("prompt"))
            record, offset, stream, include_usage = self._new_record(
                endpoint, body, arrival, arrival_unix, prompt_tokens, "chatcmpl" if endpoint == "chat" else "cmpl"
            )
            self._check_serving()
            run = self._start_run(record)
        except ApiError as exc:
            return exc.response()
        self.records.append(record)
        if stream:
            return StreamingResponse(
                self._stream(run, offset, model, endpoint, include_usage),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-request-id": record.request_id},
            )
        return await self._collect(request, run, offset, model, endpoint)

    async def _completion_prompt_tokens(self, prompt: Any) -> int:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise _bad("prompt must not be empty", "prompt")
            return await _count_tokens_off_loop(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return len(prompt)  # a prompt given as token ids
        raise _bad("prompt must be a string, a list with one string, or a list of token ids", "prompt")

    def _note_token(self, record: ServedRequest, event: Any, now: float) -> None:
        if record.first_token is None:
            record.first_token = now
            record.engine_first_token = event.time
        record.last_token = now
        record.token_times.append(now)
        record.completion_tokens += 1

    def _usage(self, record: ServedRequest) -> dict[str, int]:
        return {
            "prompt_tokens": record.prompt_tokens,
            "total_tokens": record.prompt_tokens + record.completion_tokens,
            "completion_tokens": record.completion_tokens,
        }

    def _finish_reason(self, record: ServedRequest) -> str:
        return "length" if record.target_tokens >= record.max_tokens else "stop"

    def _chunk(self, record: ServedRequest, model: str, endpoint: str, piece: str | None,
               finish_reason: str | None, role: bool = False) -> bytes:
        if endpoint == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": piece}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            payload = {"id": record.request_id, "object": "chat.completion.chunk", "created": int(record.arrival_unix),
                       "model": model, "choices": [choice]}
        else:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish_reason,
                      "stop_reason": None}
            payload = {"id": record.request_id, "object": "text_completion", "created": int(record.arrival_unix),
                       "model": model, "choices": [choice]}
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    async def _stream(self, run: _Run, offset: int, model: str, endpoint: str,
                      include_usage: bool) -> AsyncIterator[bytes]:
        record = run.record
        finished = False
        # The chunk with a placeholder piece, split around it (the same bytes _chunk would produce).
        marker = "\u0000piece\u0000"
        template = tuple(self._chunk(record, model, endpoint, marker, None).split(json.dumps(marker).encode()))
        assert len(template) == 2
        try:
            while not finished:
                items = [await self._next_item(run)]
                while not run.queue.empty():  # a slow reader gets every waiting token in one write
                    items.append(run.queue.get_nowait())
                out: list[bytes] = []
                for item in items:
                    if isinstance(item, _Failure):
                        record.error, record.status_code = item.message, item.status
                        error = ApiError(item.status, item.message, "ServiceUnavailableError" if item.status == 503
                                         else "InternalServerError")
                        out.append(b"data: " + json.dumps(error.body()).encode() + b"\n\n")
                        out.append(b"data: [DONE]\n\n")
                        finished = True
                        break
                    now = self.clock()
                    if record.first_token is None and endpoint == "chat":
                        out.append(self._chunk(record, model, endpoint, None, None, role=True))
                    self._note_token(record, item, now)
                    finish = self._finish_reason(record) if item.finished else None
                    if finish is None:  # the hot path: one template per request, only the piece is encoded
                        out.append(template[0] + self.text.piece_json(offset, item.index) + template[1])
                    else:
                        out.append(self._chunk(record, model, endpoint, self.text.piece(offset, item.index), finish))
                    if item.finished:
                        record.finish_reason = finish
                        if include_usage:
                            usage = {"id": record.request_id,
                                     "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
                                     "created": int(record.arrival_unix), "model": model, "choices": [],
                                     "usage": self._usage(record)}
                            out.append(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
                        out.append(b"data: [DONE]\n\n")
                        finished = True
                        break
                yield b"".join(out)
        except asyncio.CancelledError:
            record.error, record.status_code = "client disconnected", 499
            raise
        finally:
            if not finished and record.error is None:
                record.error, record.status_code = "client disconnected", 499
            self._finish_run(run)

    async def _collect(self, request: Request, run: _Run, offset: int, model: str, endpoint: str) -> Response:
        record = run.record

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(disconnected())
        try:
            while True:
                getter = asyncio.ensure_future(self._next_item(run))
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    record.error, record.status_code = "client disconnected", 499
                    return Response(status_code=499)
                item = getter.result()
                if isinstance(item, _Failure):
                    record.error, record.status_code = item.message, item.status
                    return ApiError(item.status, item.message, "ServiceUnavailableError").response()
                self._note_token(record, item, self.clock())
                if item.finished:
                    record.finish_reason = self._finish_reason(record)
                    break
        finally:
            watcher.cancel()
            self._finish_run(run)
        text = self.text.text(offset, record.completion_tokens)
        if endpoint == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": record.finish_reason, "stop_reason": None}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": record.finish_reason,
                      "stop_reason": None}
            kind = "text_completion"
        return JSONResponse({"id": record.request_id, "object": kind, "created": int(record.arrival_unix), "model": model,
                             "choices": [choice], "usage": self._usage(record)})

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except ApiError as exc:
            return exc.response()
        data = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "vllm", "root": self.model_root,
             "parent": None, "max_model_len": self.max_model_len}
            for name in self.served_model_names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        try:
            self._check_serving()
        except ApiError as exc:
            return exc.response()
        return Response(status_code=200)

    async def tokenize(self, request: Request) -> Response:
        try:
            body = await self._json_body(request)
            self._check_model(body)
            if "messages" in body:
                text = _chat_prompt(body["messages"]) if body.get("add_generation_prompt", True) else render_chat(
                    [{"role": m["role"], "content": _message_text(m.get("content"))} for m in body["messages"]],
                    add_generation_prompt=False)
            elif isinstance(body.get("prompt"), str):
                text = body["prompt"]
            else:
                raise _bad("give `prompt` (a string) or `messages`", "prompt")
        except ApiError as exc:
            return exc.response()
        tokens = builtin_tokenizer().encode(text, add_special_tokens=False).ids
        return JSONResponse({"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens,
                             "token_strs": None})

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.render_metrics(), media_type="text/plain; version=0.0.4")

    def render_metrics(self) -> str:
        stats = self.engine.stats()
        labels = f'model_name="{self.served_model_names[0]}"'
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for suffix, extra, value in samples:
                label_text = labels + (f",{extra}" if extra else "")
                lines.append(f"{name}{suffix}{{{label_text}}} {float(value)!r}")

        family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
               [("", "", stats.num_running)])
        family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
               [("", "", stats.num_waiting)])
        family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
               [("", "", stats.kv_cache_usage)])
        family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
               [("", "", stats.prompt_tokens_total)])
        family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
               [("", "", stats.generation_tokens_total)])
        family("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.",
               [("", "", stats.preemptions_total)])
        family("vllm:request_success_total", "counter", "Count of successfully processed requests.",
               [("", f'finished_reason="{reason}"', count) for reason, count in sorted(self.finished_by_reason.items())])
        from twin.engine import TTFT_BUCKETS

        counts, total, count = stats.ttft_histogram(TTFT_BUCKETS)
        bounds = [repr(float(b)) for b in TTFT_BUCKETS] + ["+Inf"]
        family("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
               [("_bucket", f'le="{bound}"', c) for bound, c in zip(bounds, counts)]
               + [("_sum", "", total), ("_count", "", count)])
        family("twin:engine_steps_total", "counter", "Engine steps the twin ran (each told to every peer rank).",
               [("", "", stats.steps_total)])
        family("twin:ranks_healthy", "gauge", "1 while every peer rank of this engine is reachable, else 0.",
               [("", "", 1.0 if self.group.healthy else 0.0)])
        return "\n".join(lines) + "\n"

    async def twin_requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.records.clear()
            return Response(status_code=204)
        include_times = request.query_params.get("token_times", "1") != "0"
        rows = []
        for record in self.records:
            row = asdict(record)
            if not include_times:
                row.pop("token_times")
            rows.append(row)
        return JSONResponse({"clock": "perf_counter", "requests": rows})

    async def twin_ranks(self, request: Request) -> Response:
        info = self.group.describe()
        actor_infos = getattr(self.group, "actor_infos", None)
        if actor_infos is not None and self.group.healthy:
            try:
                info["actors"] = await asyncio.wait_for(actor_infos(), 10.0)
            except Exception as exc:  # noqa: BLE001 - a dying actor shows up here as text, health says the rest
                info["actors_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse(info)


def build_app(
    engine: Any,
    group: RankGroup | None = None,
    *,
    served_model_names: tuple[str, ...],
    model_root: str,
    api_key: str | None = None,
    seed: int = 0,
) -> Starlette:
    """The Starlette app for a started engine. `app.state.twin` is the TwinServer (records, counters)."""
    server = TwinServer(engine, group or LocalRanks(), served_model_names=served_model_names,
                        model_root=model_root, api_key=api_key, text=default_text_source(seed))
    routes = [
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/tokenize", server.tokenize, methods=["POST"]),
        Route("/metrics", server.metrics, methods=["GET"]),
        Route("/twin/requests", server.twin_requests, methods=["GET", "DELETE"]),
        Route("/twin/ranks", server.twin_ranks, methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return ApiError(404, f"no route {request.method} {request.url.path}", "NotFoundError").response()

    async def bad_method(request: Request, exc: Exception) -> Response:
        return ApiError(405, f"method {request.method} not allowed on {request.url.path}", "BadRequestError").response()

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.state.twin = server
    return app


__all__ = ["ApiError", "ServedRequest", "TextSource", "TwinServer", "build_app", "default_text_source"]
