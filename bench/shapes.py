"""Request shapes: how many prompt, context and output tokens each request of a workload test has.

A shape turns (request number, run, seed) into `RequestSpec`s, lengths only; bench/prompts.py's
PromptFactory then builds text of exactly those token counts (`build(pp=..., depth=...)`), and the twin's
predictor uses the lengths directly. Kinds (the `kind:` key of a workload YAML's `shape:`):

- `fixed`: every request `prompt` tokens in, `output` out, after `depth` tokens of prior context.
- `random`: lengths drawn uniformly from the integers in [X * r, X * (2 - r)] around each target X, so the
  mean stays X and the spread is +-(1 - r): the Arena's "range ratio 0.9" = within +-10%. vLLM >= 0.10's
  `--random-range-ratio f` draws from [X(1 - f), X(1 + f)], so Arena 0.9 is `--random-range-ratio 0.1`
  there (`vllm_range_ratio()`); vLLM <= 0.8 drew from [X * f, X] (one-sided).
- `multi-turn`: sessions of `turns` turns; turn t carries the conversation so far (depth + t x (prompt +
  output) tokens) before its new `prompt` tokens. In closed loop run r is turn r mod turns of every
  session; in open loop request j is turn j mod turns.
- `sharegpt`: a ShareGPT-like long tail. Without `dataset`, lengths come from lognormals fitted to the
  published statistics (below); with `dataset: FILE` (a ShareGPT JSON, list of {"conversations": [{"from":
  "human", "value"}, {"from": "gpt", "value"}, ...]}), from the first human turn and the first answer of
  each conversation counted with the built-in tokenizer, as `vllm bench serve --dataset-name sharegpt`
  does (its text is not sent: prompts are cut from the corpus at exactly those lengths).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import Field

from common.config import StrictModel
from common.errors import ConfigError

# ShareGPT V3 (the file `vllm bench serve` uses), as published:
# - vLLM paper (Kwon et al., SOSP 2023, section 6.1 / Fig. 11): mean input 161 tokens, mean output 338;
# - the Arena's reference (workloads.md): median prompt and answer a few hundred tokens, tails in the
#   thousands.
# vLLM's sharegpt sampler drops pairs with fewer than 4 tokens either side, prompts over 1024 and
# prompt + output over 2048. The stand-in: lognormal prompt (median 150, sigma 1.1: mean ~275 before the
# cut) and output (median 250, sigma 0.9: mean ~375), under the same cuts (means after the cut ~230 / ~330).
SHAREGPT_PROMPT_MEDIAN = 150
SHAREGPT_PROMPT_SIGMA = 1.1
SHAREGPT_OUTPUT_MEDIAN = 250
SHAREGPT_OUTPUT_SIGMA = 0.9
SHAREGPT_MIN_TOKENS = 4
SHAREGPT_MAX_PROMPT = 1024
SHAREGPT_MAX_TOTAL = 2048


@dataclass(frozen=True)
class RequestSpec:
    """One request's lengths: `depth` tokens of prior context, `prompt` new tokens, `output` generated."""

    prompt: int
    output: int
    depth: int = 0

    @property
    def prompt_tokens(self) -> int:
        """What the server counts as prompt (context included)."""
        return self.depth + self.prompt


class FixedShape(StrictModel):
    kind: Literal["fixed"] = "fixed"
    prompt: int = Field(ge=1)
    output: int = Field(ge=1)
    depth: int = Field(default=0, ge=0)

    def requests(self, count: int, *, seed: int = 0, run: int = 0) -> list[RequestSpec]:
        return [RequestSpec(self.prompt, self.output, self.depth)] * count

    def describe(self) -> str:
        return f"pp{self.prompt} tg{self.output}" + (f" depth {self.depth}" if self.depth else "")


class RandomShape(StrictModel):
    kind: Literal["random"] = "random"
    prompt: int = Field(ge=1)
    output: int = Field(ge=1)
    range_ratio: float = Field(default=0.9, gt=0, le=1)
    depth: int = Field(default=0, ge=0)

    def bounds(self, target: int) -> tuple[int, int]:
        low = max(1, math.ceil(target * self.range_ratio))
        return low, max(low, math.floor(target * (2 - self.range_ratio)))

    def requests(self, count: int, *, seed: int = 0, run: int = 0) -> list[RequestSpec]:
        rng = np.random.default_rng([seed, run])
        p_low, p_high = self.bounds(self.prompt)
        o_low, o_high = self.bounds(self.output)
        prompts = rng.integers(p_low, p_high + 1, size=count)
        outputs = rng.integers(o_low, o_high + 1, size=count)
        return [RequestSpec(int(p), int(o), self.depth) for p, o in zip(prompts, outputs)]

    def describe(self) -> str:
        spread = f" ±{1 - self.range_ratio:.0%}" if self.range_ratio < 1 else ""
        return f"random pp{self.prompt} tg{self.output}{spread}" + (f" depth {self.depth}" if self.depth else "")


def vllm_range_ratio(arena_ratio: float) -> float:
    """The `--random-range-ratio` of vLLM >= 0.10 that draws the same interval as our `range_ratio`."""
    return round(1.0 - arena_ratio, 6)


class MultiTurnShape(StrictModel):
    kind: Literal["multi-turn"] = "multi-turn"
    prompt: int = Field(ge=1)
    output: int = Field(ge=1)
    turns: int = Field(default=4, ge=1)
    depth: int = Field(default=0, ge=0)  # context before the first turn (a system prompt, a document)

    def turn(self, index: int) -> RequestSpec:
        t = index % self.turns
        return RequestSpec(self.prompt, self.output, self.depth + t * (self.prompt + self.output))

    def requests(self, count: int, *, seed: int = 0, run: int = 0) -> list[RequestSpec]:
        # Closed loop: every request of run r is turn r of its own session. Open loop (run 0, count n):
        # consecutive requests walk through the turns of one session after another.
        if run:
            return [self.turn(run)] * count
        return [self.turn(j) for j in range(count)]

    def describe(self) -> str:
        return f"{self.turns}-turn sessions, pp{self.prompt} tg{self.output} per turn" + (
            f" after depth {self.depth}" if self.depth else "")


class ShareGPTShape(StrictModel):
    kind: Literal["sharegpt"] = "sharegpt"
    dataset: Path | None = None  # a ShareGPT JSON; None = the synthetic stand-in

    def requests(self, count: int, *, seed: int = 0, run: int = 0) -> list[RequestSpec]:
        rng = np.random.default_rng([seed, run])
        if self.dataset is not None:
            pairs = sharegpt_lengths(self.dataset)
            picks = rng.choice(len(pairs), size=count, replace=len(pairs) < count)
            return [RequestSpec(*pairs[int(i)]) for i in picks]
        specs: list[RequestSpec] = []
        while len(specs) < count:
            prompt = int(round(rng.lognormal(math.log(SHAREGPT_PROMPT_MEDIAN), SHAREGPT_PROMPT_SIGMA)))
            output = int(round(rng.lognormal(math.log(SHAREGPT_OUTPUT_MEDIAN), SHAREGPT_OUTPUT_SIGMA)))
            if _sharegpt_keeps(prompt, output):
                specs.append(RequestSpec(prompt, output))
        return specs

    def describe(self) -> str:
        return f"ShareGPT lengths from {self.dataset}" if self.dataset else \
            "ShareGPT-like lengths (synthetic lognormal stand-in)"


def _sharegpt_keeps(prompt: int, output: int) -> bool:
    return (prompt >= SHAREGPT_MIN_TOKENS and output >= SHAREGPT_MIN_TOKENS and prompt <= SHAREGPT_MAX_PROMPT
            and prompt + output <= SHAREGPT_MAX_TOTAL)


_SHAREGPT_CACHE: dict[tuple[str, float], list[tuple[int, int]]] = {}


def sharegpt_lengths(path: Path, count_tokens: Callable[[str], int] | None = None) -> list[tuple[int, int]]:
    """(prompt, output) token counts of each usable conversation of a ShareGPT JSON, vLLM's filter applied."""
    try:
        key = (str(path.resolve()), path.stat().st_mtime)
    except OSError as exc:
        raise ConfigError(f"--dataset {path}: cannot read ({exc.strerror})") from exc
    if key in _SHAREGPT_CACHE:
        return _SHAREGPT_CACHE[key]
    if count_tokens is None:
        from bench.prompts import LocalTokenizer

        count_tokens = LocalTokenizer.builtin().count
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--dataset {path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, list):
        raise ConfigError(f"--dataset {path}: expected a JSON list of conversations (ShareGPT format)")
    pairs: list[tuple[int, int]] = []
    for number, entry in enumerate(data):
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            raise ConfigError(f"--dataset {path}: entry {number} has no `conversations` list (ShareGPT format)")
        if len(turns) < 2 or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]):
            continue
        prompt, output = count_tokens(turns[0]["value"]), count_tokens(turns[1]["value"])
        if _sharegpt_keeps(prompt, output):
            pairs.append((prompt, output))
    if not pairs:
        raise ConfigError(f"--dataset {path}: no conversation with a usable first question and answer")
    _SHAREGPT_CACHE[key] = pairs
    return pairs


Shape = Annotated[Union[FixedShape, RandomShape, MultiTurnShape, ShareGPTShape], Field(discriminator="kind")]
