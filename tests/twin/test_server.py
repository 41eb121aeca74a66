"""The twin's OpenAI surface, served by a real uvicorn on loopback in front of the real engine (fast/tiny)."""

from __future__ import annotations

import asyncio
import json
import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx
import pytest
import uvicorn

from common.text import builtin_tokenizer, count_tokens, render_chat
from twin.distributed import LocalRanks
from twin.engine import Engine, EngineConfig
from twin.server import TextSource, build_app

MODEL = "tiny-served"


@asynccontextmanager
async def running_twin(
    *, group: Any = None, api_key: str | None = None, **engine_kw: Any
) -> AsyncIterator[tuple[str, Any]]:
    """A started engine behind a real HTTP server on 127.0.0.1:<free port>; yields (base url, TwinServer)."""
    config = EngineConfig.from_names("fast", "tiny", **engine_kw)
    group = group or LocalRanks()
    engine = Engine(config, step_hook=group.step)
    await engine.start()
    app = build_app(engine, group, served_model_names=(MODEL, "alias"), model_root="tiny", api_key=api_key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # pytest owns signals
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app.state.twin
    finally:
        server.should_exit = True
        await task
        await asyncio.gather(engine.stop(), return_exceptions=True)  # a test may have broken the step loop


def sse_events(body: str) -> list[Any]:
    """Parse an SSE body strictly: every event is `data: ...` followed by a blank line."""
    assert body.endswith("\n\n"), body[-50:]
    events = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def chat_body(content: str = "Tell me about tuples.", **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **kw}


async def test_streamed_chat_has_vllm_shape_one_token_per_chunk_and_usage() -> None:
    async with running_twin() as (url, twin), httpx.AsyncClient(base_url=url) as client:
        body = chat_body(max_tokens=12, min_tokens=12, ignore_eos=True, stream=True,
                         stream_options={"include_usage": True})
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    role, *tokens, usage, _ = events
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(tokens) == 12
    assert all(len(t["choices"]) == 1 and t["choices"][0]["delta"]["content"] for t in tokens)
    assert [t["choices"][0]["finish_reason"] for t in tokens] == [None] * 11 + ["length"]
    assert len({e["id"] for e in events[:-1]}) == 1 and role["model"] == MODEL
    assert usage["choices"] == []
    expected_prompt = count_tokens(render_chat([{"role": "user", "content": "Tell me about tuples."}]))
    assert usage["usage"] == {"prompt_tokens": expected_prompt, "completion_tokens": 12,
                              "total_tokens": expected_prompt + 12}
    # The text is real tokens of the tokenizer: re-encoding each piece gives back one token (pieces are
    # the tokenizer's own segmentation of the corpus, so the whole is close to 12 tokens too).
    text = "".join(t["choices"][0]["delta"]["content"] for t in tokens)
    assert abs(count_tokens(text) - 12) <= 2
    record = twin.records[-1]
    assert record.completion_tokens == 12 and record.prompt_tokens == expected_prompt
    assert record.arrival < record.first_token <= record.last_token <= record.end


async def test_streams_without_include_usage_have_no_usage_chunk() -> None:
    async with running_twin() as (url, _), httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=3, ignore_eos=True, stream=True))
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1])
    assert all("usage" not in e for e in events[:-1])
    assert len(events) == 1 + 3 + 1


async def test_non_streamed_chat_and_completions() -> None:
    async with running_twin() as (url, _), httpx.AsyncClient(base_url=url) as client:
        chat = (await client.post("/v1/chat/completions", json=chat_body(max_completion_tokens=7, ignore_eos=True))).json()
        completion = (await client.post("/v1/completions", json={"model": "alias", "prompt": "def f(x):",
                                                                   "max_tokens": 5, "ignore_eos": True})).json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["choices"][0]["finish_reason"] == "length"
    assert chat["usage"]["completion_tokens"] == 7
    assert abs(count_tokens(chat["choices"][0]["message"]["content"]) - 7) <= 2
    assert completion["object"] == "text_completion" and completion["model"] == "alias"
    assert completion["usage"] == {"prompt_tokens": count_tokens("def f(x):"), "completion_tokens": 5,
                                   "total_tokens": count_tokens("def f(x):") + 5}
    assert completion["choices"][0]["text"]


async def test_streamed_completions_chunks() -> None:
    async with running_twin() as (url, _), httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x = 1", "max_tokens": 4,
                                                              "ignore_eos": True, "stream": True,
                                                              "stream_options": {"include_usage": True}})
    events = sse_events(response.text)
    tokens = [e for e in events[:-1] if e["choices"]]
    assert len(tokens) == 4 and all(e["object"] == "text_completion" for e in tokens)
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"]["completion_tokens"] == 4


async def test_without_ignore_eos_the_twin_stops_at_a_paragraph_end_after_min_tokens() -> None:
    source = TextSource("one two three.\n\nfour five six seven.\n\n" * 50, builtin_tokenizer())
    ends = source.paragraph_ends
    offset = ends[3] + 1  # right after a paragraph end
    natural = source.natural_length(offset, 0, 1000)
    assert source.text(offset, natural).endswith("\n\n")
    assert "\n\n" not in source.text(offset, natural - 1)
    assert source.natural_length(offset, natural + 1, 1000) > natural  # min_tokens pushes past it
    assert source.natural_length(offset, 0, 2) == 2  # max_tokens caps it
    # wraps around the end of the corpus
    assert source.natural_length(len(source) - 1, 0, 1000) >= 1
    async with running_twin() as (url, _), httpx.AsyncClient(base_url=url) as client:
        results = [
            (await client.post("/v1/chat/completions", json=chat_body(max_tokens=400, min_tokens=3))).json()
            for _ in range(6)
        ]
    for result in results:
        used = result["usage"]["completion_tokens"]
        assert 3 <= used <= 400
        if result["choices"][0]["finish_reason"] == "stop":
            assert used < 400 and result["choices"][0]["message"]["content"].rstrip(" \t").endswith("\n\n")
    assert any(r["choices"][0]["finish_reason"] == "stop" for r in results)


async def test_errors_are_openai_json_unknown_model_404_too_long_400() -> None:
    async with running_twin(max_model_len=256) as (url, _), httpx.AsyncClient(base_url=url) as client:
        unknown = await client.post("/v1/chat/completions", json={**chat_body(), "model": "gpt-9"})
        long_prompt = await client.post("/v1/chat/completions", json=chat_body("word " * 400, max_tokens=4))
        long_total = await client.post("/v1/completions", json={"model": MODEL, "prompt": "word " * 100,
                                                                "max_tokens": 200})
        bad_json = await client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        min_over_max = await client.post("/v1/chat/completions", json=chat_body(max_tokens=2, min_tokens=5))
        no_messages = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
        bad_max = await client.post("/v1/chat/completions", json=chat_body(max_tokens="many"))
        models = (await client.get("/v1/models")).json()
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "NotFoundError" and "gpt-9" in unknown.json()["error"]["message"]
    assert long_prompt.status_code == 400
    assert "maximum context length is 256" in long_prompt.json()["error"]["message"]
    assert long_total.status_code == 400 and "200 in the completion" in long_total.json()["error"]["message"]
    for response in (bad_json, min_over_max, no_messages, bad_max):
        assert response.status_code == 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert models["data"][0]["max_model_len"] == 256
    assert [m["id"] for m in models["data"]] == [MODEL, "alias"]


async def test_api_key_guards_v1_only() -> None:
    async with running_twin(api_key="s3cret") as (url, _), httpx.AsyncClient(base_url=url) as client:
        denied = await client.get("/v1/models")
        allowed = await client.get("/v1/models", headers={"authorization": "Bearer s3cret"})
        health = await client.get("/health")
    assert denied.status_code == 401 and allowed.status_code == 200 and health.status_code == 200


async def test_tokenize_matches_the_prompt_tokens_of_a_request() -> None:
    messages = [{"role": "user", "content": "How do generators work?"}]
    async with running_twin() as (url, _), httpx.AsyncClient(base_url=url) as client:
        by_prompt = (await client.post("/tokenize", json={"model": MODEL, "prompt": "hello world"})).json()
        by_messages = (await client.post("/tokenize", json={"model": MODEL, "messages": messages})).json()
        used = (await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages,
                                                                 "max_tokens": 1})).json()["usage"]
    assert by_prompt["count"] == len(by_prompt["tokens"]) == count_tokens("hello world")
    assert by_prompt["tokens"] == builtin_tokenizer().encode("hello world", add_special_tokens=False).ids
    assert by_prompt["max_model_len"] == 2048
    assert by_messages["count"] == used["prompt_tokens"]


async def test_metrics_use_vllm_names_and_count_tokens() -> None:
    async with running_twin() as (url, _), httpx.AsyncClient(base_url=url) as client:
        before = (await client.get("/metrics")).text
        await asyncio.gather(*(
            client.post("/v1/chat/completions", json=chat_body(max_tokens=5, ignore_eos=True)) for _ in range(3)
        ))
        after = (await client.get("/metrics")).text

    def sample(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{"):
                assert 'model_name="tiny-served"' in line
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} missing")

    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_count", "vllm:time_to_first_token_seconds_sum"):
        sample(after, name)
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in after
    assert 'vllm:time_to_first_token_seconds_bucket{model_name="tiny-served",le="+Inf"} 3.0' in after
    assert sample(after, "vllm:generation_tokens_total") - sample(before, "vllm:generation_tokens_total") == 15
    prompt = count_tokens(render_chat([{"role": "user", "content": "Tell me about tuples."}]))
    assert sample(after, "vllm:prompt_tokens_total") == 3 * prompt
    assert sample(after, "vllm:num_requests_running") == 0
    assert 'vllm:request_success_total{model_name="tiny-served",finished_reason="length"} 3.0' in after


async def test_a_client_disconnect_takes_the_request_out_of_the_engine() -> None:
    async with running_twin() as (url, twin), httpx.AsyncClient(base_url=url) as client:
        body = chat_body(max_tokens=1500, ignore_eos=True, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            seen = 0
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                if seen >= 5:
                    break
        for _ in range(200):  # the server notices the closed socket, cancels, the engine frees the slot
            if twin.engine.stats().num_running == 0 and not twin.runs:
                break
            await asyncio.sleep(0.02)
        assert twin.engine.stats().num_running == 0
        assert not twin.runs
        record = twin.records[-1]
        assert record.error == "client disconnected" and 4 <= record.completion_tokens < 1500
        health = await client.get("/health")
    assert health.status_code == 200


async def test_server_record_agrees_with_what_the_client_saw() -> None:
    """The client's TTFT and decode rate match the server's own record (same host: same perf_counter)."""
    import time

    async with running_twin() as (url, twin), httpx.AsyncClient(base_url=url) as client:
        body = chat_body(max_tokens=64, min_tokens=64, ignore_eos=True, stream=True)
        start = time.perf_counter()
        times: list[float] = []
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                    times.append(time.perf_counter())
        rows = (await client.get("/twin/requests")).json()["requests"]
        slim = (await client.get("/twin/requests", params={"token_times": "0"})).json()["requests"]
        cleared = await client.delete("/twin/requests")
        after_clear = (await client.get("/twin/requests")).json()["requests"]
    assert "token_times" not in slim[-1] and slim[-1]["request_id"] == rows[-1]["request_id"]
    assert cleared.status_code == 204 and after_clear == []
    row = rows[-1]
    assert row["completion_tokens"] == len(times) == 64
    client_ttft, server_ttft = times[0] - start, row["first_token"] - row["arrival"]
    assert server_ttft <= client_ttft
    assert client_ttft - server_ttft < 0.5 * client_ttft + 0.02  # the gap is loopback + parsing, not the engine
    client_decode = (times[-1] - times[0]) / 63
    server_decode = (row["last_token"] - row["first_token"]) / 63
    assert server_decode == pytest.approx(client_decode, rel=0.35)
    assert len(row["token_times"]) == 64


class _BreaksAfter(LocalRanks):
    """A peer group whose step fails after `steps`: the engine's step loop dies with it."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.limit = steps

    async def step(self, desc: Any) -> None:
        await super().step(desc)
        if self.steps > self.limit:
            raise RuntimeError("device lost")


async def test_a_dead_step_loop_ends_running_streams_with_an_error_and_fails_health() -> None:
    async with running_twin(group=_BreaksAfter(5)) as (url, twin), httpx.AsyncClient(base_url=url, timeout=20) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=50, ignore_eos=True, stream=True))
        health = await client.get("/health")
        refused = await client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
    events = sse_events(response.text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == 500
    assert "step loop stopped" in events[-2]["error"]["message"]
    assert health.status_code == 503 and refused.status_code == 503
    assert twin.records[0].error and twin.records[0].completion_tokens < 50
