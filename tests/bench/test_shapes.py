import json
from pathlib import Path

import numpy as np
import pytest

from bench.prompts import LocalTokenizer, PromptFactory
from bench.shapes import (
    SHAREGPT_MAX_PROMPT,
    SHAREGPT_MAX_TOTAL,
    FixedShape,
    MultiTurnShape,
    RandomShape,
    ShareGPTShape,
    vllm_range_ratio,
)
from common.errors import ConfigError


def test_fixed_shape_is_the_same_request_every_time() -> None:
    specs = FixedShape(prompt=1024, output=128, depth=512).requests(3)
    assert {(s.prompt, s.output, s.depth, s.prompt_tokens) for s in specs} == {(1024, 128, 512, 1536)}


def test_random_shape_stays_within_ten_percent_and_keeps_the_mean() -> None:
    shape = RandomShape(prompt=4000, output=500, range_ratio=0.9)
    specs = shape.requests(20_000, seed=42)
    prompts = np.array([s.prompt for s in specs])
    outputs = np.array([s.output for s in specs])
    assert prompts.min() >= 3600 and prompts.max() <= 4400
    assert outputs.min() >= 450 and outputs.max() <= 550
    assert prompts.mean() == pytest.approx(4000, rel=0.005)
    assert prompts.max() - prompts.min() > 700  # really spread, not fixed
    assert specs == shape.requests(20_000, seed=42)
    assert specs[:50] != shape.requests(50, seed=43)
    assert vllm_range_ratio(0.9) == pytest.approx(0.1)
    assert {(s.prompt, s.output) for s in RandomShape(prompt=10, output=10, range_ratio=1).requests(5)} == {(10, 10)}


def test_multi_turn_carries_the_growing_conversation() -> None:
    shape = MultiTurnShape(prompt=2048, output=512, turns=3, depth=100)
    first, second, third, fourth = shape.requests(4)
    assert (first.depth, second.depth, third.depth) == (100, 100 + 2560, 100 + 2 * 2560)
    assert fourth == first  # a new session starts over
    assert {s.depth for s in shape.requests(5, run=2)} == {100 + 2 * 2560}


def test_synthetic_sharegpt_has_a_long_tail_under_vllms_cuts() -> None:
    specs = ShareGPTShape().requests(5000, seed=1)
    prompts = np.array([s.prompt for s in specs])
    outputs = np.array([s.output for s in specs])
    assert prompts.max() <= SHAREGPT_MAX_PROMPT and (prompts + outputs).max() <= SHAREGPT_MAX_TOTAL
    assert 100 < np.median(prompts) < 400 and 150 < np.median(outputs) < 400
    assert np.percentile(outputs, 99) > 3 * np.median(outputs)  # the tail
    assert prompts.mean() > np.median(prompts)  # right-skewed


def test_a_real_sharegpt_file_gives_its_first_question_and_answer(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "How do lists work in Python? " * 5},
                                      {"from": "gpt", "value": "A list is a mutable sequence. " * 20}]},
        {"id": "b", "conversations": [{"from": "human", "value": "hi"}]},  # no answer: skipped
    ]))
    specs = ShareGPTShape(dataset=path).requests(4, seed=0)
    count = LocalTokenizer.builtin().count
    assert {(s.prompt, s.output) for s in specs} == {(count("How do lists work in Python? " * 5),
                                                      count("A list is a mutable sequence. " * 20))}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ConfigError, match="bad.json"):
        ShareGPTShape(dataset=bad).requests(1)


def test_prompt_factory_builds_each_requests_own_length() -> None:
    tok = LocalTokenizer.builtin()
    factory = PromptFactory(tok, pp=64, seed=3)
    for pp, depth in ((300, 0), (40, 2000), (25000, 0)):
        prompt = factory.build(pp=pp, depth=depth)
        texts = [m["content"] for m in prompt.messages]
        assert sum(tok.count(t) for t in texts) == pp + depth
        assert len(prompt.messages) == (2 if depth else 1)
