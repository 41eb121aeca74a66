"""Prompts of an exact token count, with the local tokenizer and with a count-only (server) tokenizer."""

from __future__ import annotations

import pytest
from fake_server import Behaviour, FakeServer

from bench.prompts import LocalTokenizer, PromptFactory, ServerTokenizer
from common.errors import ConfigError, EndpointError
from common.text import builtin_corpus, chat_template_overhead, count_tokens, render_chat


@pytest.fixture(scope="module")
def local() -> LocalTokenizer:
    return LocalTokenizer.builtin()


@pytest.mark.parametrize("pp", [1, 7, 100, 1024, 3000])
def test_every_prompt_has_exactly_pp_tokens(local, pp):
    factory = PromptFactory(local, pp=pp, seed=pp)
    for _ in range(20):
        (message,) = factory.build().messages
        assert message["role"] == "user"
        assert local.count(message["content"]) == pp


def test_depth_is_a_system_message_of_exactly_depth_tokens(local):
    prompt = PromptFactory(local, pp=50, depth=700, seed=1).build()
    system, user = prompt.messages
    assert (system["role"], user["role"]) == ("system", "user")
    assert (local.count(system["content"]), local.count(user["content"])) == (700, 50)
    assert prompt.text_tokens == 750


def test_prompts_start_at_different_offsets_with_a_unique_tag(local):
    factory = PromptFactory(local, pp=200, seed=3)
    prompts = [factory.build() for _ in range(50)]
    texts = [p.messages[0]["content"] for p in prompts]
    assert len({p.offset for p in prompts}) == 50
    assert len({t[:14] for t in texts}) == 50  # the tag alone already differs
    assert all(t.startswith("[") for t in texts)
    untagged = PromptFactory(local, pp=200, seed=3, unique_prefix=False).build().messages[0]["content"]
    assert not untagged.startswith("[") and untagged in builtin_corpus().replace("\r", "")


def test_adapt_once_makes_the_server_count_exactly_pp(local):
    factory = PromptFactory(local, pp=256, seed=5)
    rendered = render_chat(factory.build().messages)
    server_count = count_tokens(rendered)  # what a server applying the chat template counts
    assert server_count == 256 + chat_template_overhead()
    assert factory.adapt(server_count) == chat_template_overhead()
    assert factory.adapt(server_count + 50) == 0  # only once
    for _ in range(10):
        prompt = factory.build()
        assert count_tokens(render_chat(prompt.messages)) == 256 == prompt.expected_prompt_tokens


def test_adapt_ignores_a_server_that_counts_fewer(local):
    factory = PromptFactory(local, pp=100, seed=5)
    assert factory.adapt(90) == 0 and factory.adapted
    assert local.count(factory.build().messages[0]["content"]) == 100


def test_a_short_corpus_is_repeated_and_a_custom_corpus_is_used(local):
    text = "The quick brown fox jumps over the lazy dog. " * 300
    factory = PromptFactory(local, pp=2000, corpus=text, seed=1, unique_prefix=False)
    content = factory.build().messages[0]["content"]
    assert local.count(content) == 2000 and "quick brown fox" in content


def test_server_tokenizer_counts_via_tokenize_and_prompts_are_exact():
    with FakeServer(Behaviour()) as server:
        counter = ServerTokenizer(server.url, "tiny")
        factory = PromptFactory(counter, pp=300, seed=2)
        for _ in range(5):
            assert count_tokens(factory.build().messages[0]["content"]) == 300
        assert counter.calls <= 5 * 30  # a search, not a scan
        counter.close()


def test_server_tokenizer_without_tokenize_is_an_endpoint_error():
    with FakeServer(Behaviour()) as server:
        counter = ServerTokenizer(server.url + "/nothing-here", "tiny")
        with pytest.raises(EndpointError, match="--tokenizer"):
            counter.count("hello")


def test_tokenizer_path_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        LocalTokenizer.from_path(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a loadable tokenizer.json"):
        LocalTokenizer.from_path(tmp_path)


def test_tokenizer_folder_loads(tmp_path):
    from common.text import tokenizer_path
    (tmp_path / "tokenizer.json").write_text(tokenizer_path().read_text())
    assert LocalTokenizer.from_path(tmp_path).count("hello world") == count_tokens("hello world")
