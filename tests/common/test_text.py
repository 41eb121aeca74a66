from __future__ import annotations

from common.text import builtin_corpus, builtin_tokenizer, count_tokens, render_chat, train_tokenizer


def test_corpus_is_long_natural_text() -> None:
    corpus = builtin_corpus()
    assert len(corpus) > 300_000
    assert corpus.count(" the ") > 1000  # English prose, not code or noise


def test_tokenizer_round_trips_and_counts() -> None:
    tokenizer = builtin_tokenizer()
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == text
    assert count_tokens(text) == len(ids)
    assert tokenizer.get_vocab_size() == 4096


def test_training_is_deterministic() -> None:
    sample = builtin_corpus()[:60_000]
    first, second = train_tokenizer(sample, vocab_size=600), train_tokenizer(sample, vocab_size=600)
    assert first.get_vocab() == second.get_vocab()


def test_chat_special_tokens_are_single_tokens() -> None:
    tokens = builtin_tokenizer().encode(render_chat([{"role": "user", "content": "hi"}])).tokens
    assert tokens[0] == "<|start|>" and "<|end|>" in tokens
