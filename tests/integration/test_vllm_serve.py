"""The real `vllm serve` (CPU build, tiny offline model) speaks what topo relies on.

These pin the contract the twin imitates: exact token counts under ignore_eos/min_tokens, usage in the
last streamed chunk, the same tokenizer and chat template as common.text, and the /metrics families topo
reads. Skipped when .venv-vllm is absent (scripts/setup --vllm installs it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from common.text import builtin_corpus, builtin_tokenizer, render_chat
from support.fixtures import VllmServers
from support.vllm_server import VllmServer

# Start-up alone can take minutes on a busy 2-core machine; the first test of a kind pays for it.
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

METRIC_FAMILIES_TOPO_READS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds",
)


def corpus_prompt(tokens: int, start: int = 0) -> str:
    """Natural text of exactly `tokens` tokens from the built-in corpus."""
    tokenizer = builtin_tokenizer()
    window = builtin_corpus()[start : start + tokens * 12]
    ids = tokenizer.encode(window, add_special_tokens=False).ids[:tokens]
    text = tokenizer.decode(ids)
    assert len(tokenizer.encode(text, add_special_tokens=False).ids) == tokens, "prompt cut did not round-trip"
    return text


def stream_events(client: httpx.Client, url: str, body: dict) -> Iterator[dict]:
    """The JSON payloads of an SSE response, checking it ends with [DONE]."""
    with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, response.read().decode(errors="replace")
        assert response.headers["content-type"].startswith("text/event-stream")
        done = False
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                done = True
                continue
            assert not done, "data after [DONE]"
            yield json.loads(payload)
        assert done, "stream ended without [DONE]"


def scrape(client: httpx.Client, base_url: str) -> dict[str, float]:
    """Sample name (with labels) -> value, from the Prometheus text of /metrics."""
    text = client.get(f"{base_url}/metrics").text
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if match and not line.startswith("#"):
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def family_total(samples: dict[str, float], name: str) -> float:
    return sum(value for key, value in samples.items() if key == name or key.startswith(name + "{"))


def streamed_chat_with_exact_tokens(server: VllmServer, prompt_tokens: int, completion_tokens: int) -> None:
    messages = [{"role": "user", "content": corpus_prompt(prompt_tokens, start=5_000)}]
    body = {
        "model": server.served_model_name,
        "messages": messages,
        "max_tokens": completion_tokens,
        "min_tokens": completion_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "temperature": 0.0,
    }
    with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        events = list(stream_events(client, f"{server.base_url}/v1/chat/completions", body))

    usage_events = [e for e in events if e.get("usage")]
    assert len(usage_events) == 1 and usage_events[0] is events[-1], "usage comes once, in the last chunk"
    assert events[-1]["choices"] == []
    usage = usage_events[0]["usage"]
    expected_prompt_ids = builtin_tokenizer().encode(render_chat(messages), add_special_tokens=False).ids
    assert usage["prompt_tokens"] == len(expected_prompt_ids)  # the same tokenizer and chat template
    assert usage["completion_tokens"] == completion_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + completion_tokens

    choice_events = [e for e in events if e["choices"]]
    streamed_ids = [tid for e in choice_events for tid in (e["choices"][0].get("token_ids") or [])]
    assert len(streamed_ids) == completion_tokens
    prompt_ids = next(e["prompt_token_ids"] for e in choice_events if e.get("prompt_token_ids"))
    assert prompt_ids == expected_prompt_ids
    finish = [e["choices"][0]["finish_reason"] for e in choice_events if e["choices"][0].get("finish_reason")]
    assert finish == ["length"]
    # Tokens arrive as a stream, not in one lump at the end.
    assert sum(1 for e in choice_events if e["choices"][0].get("token_ids")) >= completion_tokens // 2


def test_streamed_chat_produces_exactly_the_requested_tokens(vllm_solo: VllmServer) -> None:
    streamed_chat_with_exact_tokens(vllm_solo, prompt_tokens=200, completion_tokens=48)


def test_streamed_completion_reports_usage_once_at_the_end(vllm_solo: VllmServer) -> None:
    prompt = corpus_prompt(64, start=20_000)
    body = {
        "model": vllm_solo.served_model_name,
        "prompt": prompt,
        "max_tokens": 16,
        "min_tokens": 16,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        events = list(stream_events(client, f"{vllm_solo.base_url}/v1/completions", body))
    usage = events[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (64, 16, 80)
    assert all(not e.get("usage") for e in events[:-1])


def test_tokenize_counts_like_common_text(vllm_solo: VllmServer) -> None:
    tokenizer = builtin_tokenizer()
    texts = [
        corpus_prompt(300, start=1_000),
        "Plain words, punctuation; digits 12345 and\ttabs\nnewlines.",
        "Non-ASCII: naïve café, Ünïcödé, 東京, emoji 🙂.",
        "<|start|>user\nspecial tokens in text<|end|>\n",
    ]
    model = vllm_solo.served_model_name
    with httpx.Client(timeout=60.0) as client:
        for text in texts:
            response = client.post(f"{vllm_solo.base_url}/tokenize", json={"model": model, "prompt": text})
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["tokens"] == tokenizer.encode(text, add_special_tokens=False).ids, text
            assert answer["count"] == len(answer["tokens"])
        messages = [{"role": "user", "content": texts[1]}]
        response = client.post(
            f"{vllm_solo.base_url}/tokenize",
            json={"model": model, "messages": messages, "add_generation_prompt": True},
        )
        assert response.status_code == 200, response.text
        assert response.json()["tokens"] == tokenizer.encode(render_chat(messages), add_special_tokens=False).ids


def test_metrics_expose_the_families_topo_reads_and_count_a_request(vllm_solo: VllmServer) -> None:
    model = vllm_solo.served_model_name
    with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        before = scrape(client, vllm_solo.base_url)
        prompt = corpus_prompt(100, start=40_000)
        response = client.post(
            f"{vllm_solo.base_url}/v1/completions",
            json={"model": model, "prompt": prompt, "max_tokens": 12, "min_tokens": 12, "ignore_eos": True},
        )
        assert response.status_code == 200, response.text
        after = scrape(client, vllm_solo.base_url)

    for family in METRIC_FAMILIES_TOPO_READS:
        probe = family + "_count" if family.endswith("_seconds") else family
        assert any(k == probe or k.startswith(probe + "{") for k in after), f"{family} missing from /metrics"
    assert any(f'model_name="{model}"' in k for k in after if k.startswith("vllm:num_requests_running"))
    # Nothing else talks to this server while a test runs, so the deltas are exactly this request's.
    def grew_by(name: str) -> float:
        return family_total(after, name) - family_total(before, name)

    assert grew_by("vllm:prompt_tokens_total") == 100
    assert grew_by("vllm:generation_tokens_total") == 12
    assert grew_by("vllm:time_to_first_token_seconds_count") == 1
    assert family_total(after, "vllm:num_requests_running") == 0  # idle again once the answer is back
    assert 0.0 <= family_total(after, "vllm:kv_cache_usage_perc") <= 1.0


# Last in the module: the session keeps one server at a time, so this stops the solo one first.
def test_tp2_over_two_processes_serves_exact_tokens(vllm_servers: VllmServers) -> None:
    server = vllm_servers.tp2()
    assert len(server.processes) == 2 and all(p.alive() for p in server.processes)
    streamed_chat_with_exact_tokens(server, prompt_tokens=120, completion_tokens=24)
