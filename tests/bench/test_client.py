"""The streaming client against servers that behave and servers that do not (real sockets, uvicorn)."""

from __future__ import annotations

import json

import httpx
import pytest
from fake_server import Behaviour, FakeServer

from bench.client import BenchClient, Endpoint, SSEParser, _Chunk, assign_token_times
from bench.metrics import decode_tps_request, e2e_ttft
from bench.prompts import LocalTokenizer, PromptFactory
from common.errors import ConfigError, EndpointError, StreamError


@pytest.fixture(scope="module")
def factory() -> PromptFactory:
    return PromptFactory(LocalTokenizer.builtin(), pp=64, seed=7)


async def batch(behaviour: Behaviour, factory: PromptFactory, c: int = 2, tg: int = 8,
                timeout: float = 10.0, **client_kw):
    with FakeServer(behaviour) as server:
        async with BenchClient(Endpoint.from_url(server.url, behaviour.api_key), request_timeout=timeout,
                               **client_kw) as client:
            await client.preflight()
            return await client.run_batch([factory.build() for _ in range(c)], tg, topology="solo", run=0)


async def test_a_good_stream_gives_ordered_raw_timestamps_and_one_time_per_token(factory):
    behaviour = Behaviour(prefill_s=0.05, itl_s=0.01)
    records = await batch(behaviour, factory, c=3, tg=8)
    assert [r.index for r in records] == [0, 1, 2]
    for r in records:
        assert r.ok, r.error
        assert r.batch_start <= r.start < r.first_response <= r.first_token <= r.token_times[-1] <= r.end
        assert len(r.token_times) == r.completion_tokens == 8
        assert r.token_times == sorted(r.token_times)
        assert r.prompt_tokens == 64 + 12  # the fake server counts the chat template (not adapted here)
        assert r.status_code == 200 and r.response_id == "x"
        # the server waits 50 ms before the first chunk and 10 ms per token after it
        assert e2e_ttft(r) >= 0.05
        assert decode_tps_request(r) <= 1 / 0.01 * 1.05
    sent = [json.dumps(b["messages"]) for b in behaviour.seen]
    assert len(set(sent)) == len(sent)  # no two prompts alike
    body = behaviour.seen[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == body["min_tokens"] == 8 and body["ignore_eos"] is True


async def test_http_500_is_recorded_and_the_batch_goes_on(factory):
    records = await batch(Behaviour(mode="fail_index", fail_every=2), factory, c=4)
    failed = [r for r in records if not r.ok]
    assert len(failed) == 2 and all(r.ok for r in records if r not in failed)
    assert all(r.status_code == 500 and "HTTP 500" in r.error and "engine exploded" in r.error for r in failed)


async def test_malformed_json_names_the_event_line_and_byte(factory):
    records = await batch(Behaviour(mode="badjson"), factory, c=1)
    (r,) = records
    # events: role chunk (1), three tokens (2..4), then the broken one (5) on line 9 (two lines per event)
    assert r.error.startswith("malformed stream: malformed JSON in SSE event 5 (line 9, byte ")
    assert "oops" in r.error
    assert r.first_token is not None  # what arrived before the breakage stays recorded


async def test_a_stream_cut_mid_way_is_a_failed_request(factory):
    records = await batch(Behaviour(mode="cut"), factory, c=2)
    for r in records:
        assert r.error is not None and r.error.startswith("stream cut after 4 events"), r.error


async def test_a_stream_without_done_is_a_failed_request(factory):
    records = await batch(Behaviour(mode="no_done"), factory, c=1)
    assert "without `data: [DONE]` after 10 events" in records[0].error


async def test_a_server_that_never_answers_times_out(factory):
    records = await batch(Behaviour(mode="hang"), factory, c=2, timeout=0.3)
    for r in records:
        assert r.error == "timeout: no generated token for 0.3 s (progress deadline) before the response headers"
        assert r.end - r.start == pytest.approx(0.3, abs=0.25)


# Each hostile server (tests/bench/fake_server.py HOSTILE) costs exactly its requests, each with an error that
# says what and where; the batch returns instead of raising.
HOSTILE_ERRORS = {
    "choices_int": "SSE event 2 (line 3, byte 128): `choices` is not a list of objects: [1]",
    "delta_str": "SSE event 2 (line 3, byte 128): `choices[0].delta` is a str, not an object",
    "content_int": "SSE event 2 (line 3, byte 128): `delta.content` is a int, not a string",
    "usage_str": "SSE event 2 (line 3, byte 128): `usage.prompt_tokens` is \"abc\", not a token count",
    "huge_usage": "SSE event 2 (line 3, byte 128): `usage.completion_tokens` claims 5000000 tokens, more than "
                  "the requested max_tokens=8",
    "endless_line": "SSE line 3 (byte 128) is longer than 1048576 bytes",
    "giant_event": "the response is longer than 1179648 bytes (the cap for max_tokens=8) after 1 events",
    "flood": "SSE event 34 (line 67, byte 2208): more than 32 chunks of text for max_tokens=8",
    "bad_utf8": "invalid UTF-8 in SSE line 3 (byte 128)",
    "non_json": "malformed JSON in SSE event 2 (line 3, byte 128): 'hello there'",
    "deep_json": "malformed JSON in SSE event 2 (line 3, byte 128)",
    "keepalive_only": "timeout: no generated token for 0.5 s (progress deadline) after 1 events",
    "empty_chunks": "timeout: no generated token for 0.5 s (progress deadline) after ",
    "giant_error": "HTTP 503 from POST http://127.0.0.1:",
}


@pytest.mark.parametrize("mode", sorted(HOSTILE_ERRORS))
async def test_a_hostile_server_costs_its_requests_with_an_error_saying_where(factory, mode):
    records = await batch(Behaviour(mode=mode), factory, c=2, tg=8, timeout=0.5)
    assert len(records) == 2
    for r in records:
        assert r.error is not None and HOSTILE_ERRORS[mode] in r.error, r.error
        assert len(r.error) < 600  # a giant body or line is never copied into the record
        assert len(r.token_times) <= 2 * 8 + 16 and (r.completion_tokens or 0) <= 8  # the caps
    if mode == "giant_error":
        assert all(r.status_code == 503 for r in records)
        assert len(records[0].error.split(": ", 1)[1]) == 300  # the first 300 bytes of the body, no more


async def test_an_overall_deadline_ends_a_request_that_keeps_making_slow_progress(factory):
    with FakeServer(Behaviour(itl_s=0.05)) as server:
        async with BenchClient(Endpoint.from_url(server.url), request_timeout=1.0, request_deadline=0.4) as client:
            await client.preflight()
            (r,) = await client.run_batch([factory.build()], 100)
    assert r.error is not None and r.error.startswith("timeout: the request exceeded its 0.4 s deadline after "), r.error
    assert r.first_token is not None and r.end - r.start == pytest.approx(0.4, abs=0.25)


async def test_client_memory_stays_bounded_when_a_server_claims_millions_of_tokens(factory):
    """Before the cap, usage.completion_tokens=5,000,000 allocated a 5M-element timestamp list per request
    (about 1.7 GB for a batch of 4, then MemoryError). Compare peaks within one run: honest vs lying server."""
    import tracemalloc

    peaks = {}
    for mode in ("ok", "huge_usage"):
        tracemalloc.start()
        records = await batch(Behaviour(mode=mode), factory, c=4, tg=8)
        peaks[mode] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert all(r.ok for r in records) == (mode == "ok")
    print(f"peak traced memory of a c=4 batch (client and in-process server): {peaks}")
    assert peaks["huge_usage"] < 2 * peaks["ok"], peaks


async def test_chunks_with_several_tokens_spread_them_evenly(factory):
    records = await batch(Behaviour(tokens_per_chunk=4, itl_s=0.01), factory, c=1, tg=12)
    times = records[0].token_times
    assert len(times) == 12
    # chunk 1 carries tokens 1-4 at its arrival; chunk 2 (40 ms later) tokens 5-8 at 1/4, 2/4, 3/4, 4/4 of the gap
    assert times[0] == times[3]
    gaps = [times[i + 1] - times[i] for i in range(4, 7)]
    assert max(gaps) == pytest.approx(min(gaps))
    assert times[4] - times[3] == pytest.approx(gaps[0])


async def test_router_backend_header_is_recorded_and_the_api_key_is_sent(factory):
    records = await batch(Behaviour(api_key="sekret", backend_id="node1"), factory, c=2)
    assert [r.served_by for r in records] == ["node1", "node1"]


async def test_wrong_url_fails_fast_naming_the_url():
    with FakeServer(Behaviour()) as server:
        port = server.port
    endpoint = Endpoint.from_url(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}/v1/models"):
        await BenchClient(endpoint).preflight()


async def test_wrong_model_fails_fast_naming_what_is_served():
    with FakeServer(Behaviour(models=("alpha", "beta"))) as server:
        with pytest.raises(EndpointError, match="'gamma' is not served .* it serves: alpha, beta"):
            await BenchClient(Endpoint.from_url(server.url), "gamma").preflight()
        with pytest.raises(EndpointError, match="several models"):
            await BenchClient(Endpoint.from_url(server.url)).preflight()
        assert await BenchClient(Endpoint.from_url(server.url), "beta").preflight() == "beta"


async def test_missing_api_key_fails_fast():
    with FakeServer(Behaviour(api_key="sekret")) as server:
        with pytest.raises(EndpointError, match="--api-key"):
            await BenchClient(Endpoint.from_url(server.url)).preflight()


async def test_a_non_openai_server_fails_fast():
    transport = httpx.MockTransport(lambda request: httpx.Response(404, text="nope"))
    with pytest.raises(EndpointError, match="HTTP 404: not an OpenAI-compatible server"):
        await BenchClient(Endpoint.from_url("http://example.invalid"), transport=transport).preflight()


def test_endpoint_url_forms_and_the_key_never_prints():
    assert Endpoint.from_url("http://h:8000/v1/").base_url == "http://h:8000"
    assert Endpoint.from_url("http://h:8000").base_url == "http://h:8000"
    secret = Endpoint.from_url("http://h:4000", "sk-123")
    assert "sk-123" not in str(secret) and "sk-123" not in repr(secret)
    assert secret.headers == {"Authorization": "Bearer sk-123"}
    with pytest.raises(ConfigError):
        Endpoint.from_url("h:8000")


async def test_latency_modes_measure_something_positive_and_none_is_zero():
    with FakeServer(Behaviour(prefill_s=0.03)) as server:
        async with BenchClient(Endpoint.from_url(server.url)) as client:
            await client.preflight()
            api = await client.measure_latency("api")
            generation = await client.measure_latency("generation")
            assert await client.measure_latency("none") == 0.0
    assert 0 < api < generation  # a 1-token request waits for the fake's 30 ms prefill
    assert generation >= 0.03


async def test_without_a_trace_hook_start_falls_back_to_just_before_send(factory):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        body = (b'data: {"id":"a","choices":[{"delta":{"content":"hi"}}]}\n\n'
                b'data: {"id":"a","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}\n\n'
                b"data: [DONE]\n\n")
        return httpx.Response(200, content=body)

    client = BenchClient(Endpoint.from_url("http://mock"), transport=httpx.MockTransport(handler))
    await client.preflight()
    (r,) = await client.run_batch([factory.build()], 1)
    await client.aclose()
    assert r.ok and r.batch_start <= r.start <= r.first_token and r.token_times == [r.first_token]


def test_sse_parser_handles_split_bytes_crlf_and_comments():
    parser = SSEParser()
    stream = b': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\ndata: [DO'
    events = parser.feed(stream[:7]) + parser.feed(stream[7:]) + parser.feed(b"NE]\n\n")
    assert [e.data for e in events] == ['{"a": 1}', "[DONE]"]
    assert (events[0].number, events[0].line, events[0].offset) == (1, 3, 16)  # 14 bytes of comment line + 2 of blank line
    with pytest.raises(StreamError, match="line 1 .*not a `data:` line"):
        SSEParser().feed(b"garbage here\n")


def test_sse_parser_caps_a_line_and_an_event_and_finds_lines_across_tiny_feeds():
    parser = SSEParser()
    for byte in b'data: {"a": 1}\n\n':  # one byte per read, as a trickling server sends it
        events = parser.feed(bytes([byte]))
    assert [e.data for e in events] == ['{"a": 1}']
    with pytest.raises(StreamError, match=r"SSE line 2 \(byte 4\) is longer than 1048576 bytes"):
        long_line = SSEParser()
        long_line.feed(b": x\n")
        for _ in range(20):
            long_line.feed(b"a" * 65536)
    with pytest.raises(StreamError, match=r"SSE event 1 \(line 1, byte 0\) is longer than 4194304 bytes"):
        SSEParser().feed((b"data: " + b"a" * 1000_000 + b"\n") * 5)


def test_token_times_follow_streamed_usage_then_tokenizer_then_one_per_chunk():
    chunks = [_Chunk(1.0, "a", None), _Chunk(2.0, "bb", None), _Chunk(3.0, "c", None)]
    # no counts at all: one token per chunk
    assert assign_token_times(chunks, None, None) == [1.0, 2.0, 3.0]
    # a tokenizer says chunk 2 holds 2 tokens: they take 1.5 and 2.0
    assert assign_token_times(chunks, None, lambda text: len(text)) == [1.0, 1.5, 2.0, 3.0]
    # the server says 6 tokens in all: weights 1:2:1 scaled to 6 -> 1.5, 3, 1.5 -> largest remainder 2, 3, 1
    assert assign_token_times(chunks, 6, lambda text: len(text)) == pytest.approx([1.0, 1.0, 4 / 3, 5 / 3, 2.0, 3.0])
    # cumulative streamed usage wins: 1, then 3 (2 more), then 4 (1 more)
    streamed = [_Chunk(1.0, "a", 1), _Chunk(2.0, "bb", 3), _Chunk(3.0, "c", 4)]
    assert assign_token_times(streamed, 4, None) == [1.0, 1.5, 2.0, 3.0]


async def test_url_credentials_become_basic_auth_and_never_reach_a_record(factory):
    endpoint = Endpoint.from_url("http://alice:pa%40ss@127.0.0.1:9/v1")
    assert endpoint.base_url == "http://127.0.0.1:9" and "pa@ss" not in str(endpoint) + repr(endpoint)
    assert endpoint.headers == {"Authorization": "Basic YWxpY2U6cGFAc3M="}  # alice:pa@ss
    with FakeServer(Behaviour(mode="http500")) as server:
        url = server.url.replace("http://", "http://alice:pa%40ss@")
        async with BenchClient(Endpoint.from_url(url)) as client:
            await client.preflight()
            (r,) = await client.run_batch([factory.build()], 2)
    assert r.error.startswith(f"HTTP 500 from POST {server.url}/v1/chat/completions") and "pa" not in r.error.split("127")[0]
