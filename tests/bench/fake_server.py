"""A small OpenAI-compatible streaming server for the bench tests, with switchable misbehaviour.

It runs uvicorn in a thread on a free loopback port, so the client under test crosses a real socket: a
stream cut is a real connection cut, a hang is a real silent server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from common.text import count_tokens, render_chat

HUGE_CLAIM = 5_000_000  # tokens a lying server claims to have generated


def _sse(payload: object) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _forever(piece: bytes, pause_s: float = 0.0):
    while True:
        yield piece
        await asyncio.sleep(pause_s)


# What a hostile server sends after its first (valid, role-only) chunk, by mode. Each is a fault the client
# must turn into one failed request, without growing its memory or waiting forever.
HOSTILE = {
    "choices_int": lambda: iter([_sse({"choices": [1]})]),
    "delta_str": lambda: iter([_sse({"choices": [{"index": 0, "delta": "tok"}]})]),
    "content_int": lambda: iter([_sse({"choices": [{"index": 0, "delta": {"content": 7}}]})]),
    "usage_str": lambda: iter([_sse({"choices": [{"index": 0, "delta": {"content": " tok"}}],
                                     "usage": {"prompt_tokens": "abc", "completion_tokens": 1}})]),
    "huge_usage": lambda: iter([_sse({"choices": [{"index": 0, "delta": {"content": " tok"}}],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": HUGE_CLAIM}}),
                                _sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": HUGE_CLAIM}}),
                                b"data: [DONE]\n\n"]),
    "endless_line": lambda: _forever(b"data: " + b"a" * 65536),  # no newline, ever
    "giant_event": lambda: _forever(b"data: " + b"a" * 65536 + b"\n"),  # data lines without the blank line
    "keepalive_only": lambda: _forever(b": keep-alive\n\n", 0.02),  # alive, but never a token
    "empty_chunks": lambda: _forever(_sse({"choices": [{"index": 0, "delta": {}}]}), 0.02),
    "flood": lambda: _forever(_sse({"choices": [{"index": 0, "delta": {"content": " tok"}}]})),
    "bad_utf8": lambda: iter([b"data: {\"choices\": \"\xff\xfe\"}\n\n"]),
    "non_json": lambda: iter([b"data: hello there\n\n"]),
    "deep_json": lambda: iter([b"data: " + b"[" * 200_000 + b"\n\n"]),
}


@dataclass
class Behaviour:
    mode: str = "ok"  # ok | http500 | badjson | cut | hang | no_done | multi | fail_index | one of HOSTILE
    models: tuple[str, ...] = ("tiny",)
    prefill_s: float = 0.02
    itl_s: float = 0.005
    tokens_per_chunk: int = 1
    fail_every: int = 0  # with mode fail_index: every n-th request (by arrival) answers HTTP 500
    api_key: str | None = None
    backend_id: str | None = None  # sent as x-litellm-model-id
    seen: list[dict] = field(default_factory=list)  # request bodies, in arrival order
    keep_alive_s: float = 5.0  # uvicorn closes an idle keep-alive connection after this


def make_app(b: Behaviour) -> Starlette:
    def authorized(request: Request) -> bool:
        return b.api_key is None or request.headers.get("authorization") == f"Bearer {b.api_key}"

    async def models(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "no key"}, status_code=401)
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in b.models]})

    async def tokenize(request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"count": count_tokens(body["prompt"])})

    async def chat(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "no key"}, status_code=401)
        body = await request.json()
        b.seen.append(body)
        number = len(b.seen)
        if b.mode == "http500" or (b.mode == "fail_index" and b.fail_every and number % b.fail_every == 0):
            return JSONResponse({"error": {"message": "engine exploded"}}, status_code=500)
        if b.mode == "hang":
            await asyncio.sleep(3600)
        if b.mode == "giant_error":  # a 5xx whose body never ends
            return StreamingResponse(_forever(b"x" * 65536), status_code=503, media_type="text/plain")
        prompt_tokens = count_tokens(render_chat(body["messages"]))
        tg = int(body.get("max_tokens", 16))
        headers = {"x-litellm-model-id": b.backend_id} if b.backend_id else {}

        async def events():
            def chunk(delta: dict | None, usage: dict | None = None) -> bytes:
                payload: dict = {"id": "x", "object": "chat.completion.chunk",
                                 "choices": [] if delta is None else [{"index": 0, "delta": delta}]}
                if usage is not None:
                    payload["usage"] = usage
                return f"data: {json.dumps(payload)}\n\n".encode()

            await asyncio.sleep(b.prefill_s)
            yield chunk({"role": "assistant", "content": ""})
            if b.mode in HOSTILE:
                pieces = HOSTILE[b.mode]()
                if hasattr(pieces, "__aiter__"):
                    async for piece in pieces:
                        yield piece
                else:
                    for piece in pieces:
                        yield piece
                return
            sent = 0
            while sent < tg:
                k = min(b.tokens_per_chunk, tg - sent)
                if sent == 3 and b.mode == "badjson":
                    yield b"data: {\"choices\": [oops\n\n"
                    return
                if sent == 3 and b.mode == "cut":
                    raise RuntimeError("cut the stream")
                yield chunk({"content": " tok" * k})
                sent += k
                if sent < tg:
                    await asyncio.sleep(b.itl_s * k)
            yield chunk(None, {"prompt_tokens": prompt_tokens, "completion_tokens": tg,
                               "total_tokens": prompt_tokens + tg})
            if b.mode != "no_done":
                yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    return Starlette(routes=[
        Route("/v1/models", models),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeServer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.port = free_port()
        config = uvicorn.Config(make_app(behaviour), host="127.0.0.1", port=self.port, log_level="error",
                                timeout_graceful_shutdown=1, lifespan="off",
                                timeout_keep_alive=behaviour.keep_alive_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(timeout=5)
