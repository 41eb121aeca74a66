"""Prompts of an exact token count, cut at random offsets of a natural-text corpus.

Token counting has two implementations behind one small interface (`TokenCounter`):
- `LocalTokenizer` wraps a `tokenizers.Tokenizer` (the built-in one of common.text, which the twin and the
  tiny test model use, or a `tokenizer.json` / HF folder given with --tokenizer). It can encode and decode,
  so a prompt is cut in token space and then checked (decode/re-encode can merge across the cut).
- `ServerTokenizer` asks the server's `POST /tokenize` (vLLM's) for counts only; a prompt is then cut in
  character space and its length searched for, because a count-only tokenizer cannot be sliced.

`PromptFactory.build()` returns the chat messages of one request: an optional `depth` context (a system
message) and the `pp` prompt (the user message). `adapt()` is the once-only correction of docs/METRICS.md: the
warm-up's `usage.prompt_tokens` says how many tokens the chat template adds, and the user message shrinks
by that much so that the server sees exactly `pp + depth` prompt tokens.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import httpx
from tokenizers import Tokenizer

from common.errors import ConfigError, EndpointError
from common.text import builtin_tokenizer, load_corpus


class TokenCounter(Protocol):
    """Counts tokens of a text the way the served model does."""

    name: str

    def count(self, text: str) -> int: ...


class LocalTokenizer:
    """A tokenizer available on this machine: counts, and can slice in token space."""

    def __init__(self, tokenizer: Tokenizer, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self._encoded: dict[int, list[int]] = {}  # corpus hash -> ids: encoding a corpus takes ~0.5 s

    @classmethod
    def builtin(cls) -> LocalTokenizer:
        return _builtin_local()

    @classmethod
    def from_path(cls, path: Path) -> LocalTokenizer:
        """A `tokenizer.json` file, or a folder holding one (a HuggingFace model folder)."""
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise ConfigError(f"--tokenizer {path}: no tokenizer.json there (give the file or a model folder)")
        try:
            return cls(Tokenizer.from_file(str(file)), str(file))
        except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
            raise ConfigError(f"--tokenizer {file}: not a loadable tokenizer.json ({exc})") from exc

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_corpus(self, corpus: str) -> list[int]:
        key = hash(corpus)
        if key not in self._encoded:
            self._encoded[key] = self.encode(corpus)
        return self._encoded[key]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self.encode(text))


@lru_cache(maxsize=1)
def _builtin_local() -> LocalTokenizer:
    return LocalTokenizer(builtin_tokenizer(), "builtin")


class ServerTokenizer:
    """Counts with the server's `POST /tokenize` (vLLM's API): used when no tokenizer is available here."""

    def __init__(self, base_url: str, model: str, headers: dict[str, str] | None = None, timeout: float = 30.0):
        self.name = f"{base_url}/tokenize"
        self._url = f"{base_url}/tokenize"
        self._model = model
        self._client = httpx.Client(headers=headers or {}, timeout=timeout)
        self.calls = 0

    def count(self, text: str) -> int:
        self.calls += 1
        try:
            response = self._client.post(self._url, json={"model": self._model, "prompt": text,
                                                          "add_special_tokens": False})
        except httpx.HTTPError as exc:
            raise EndpointError(f"POST {self._url} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise EndpointError(
                f"POST {self._url} answered HTTP {response.status_code}: the server cannot count tokens; "
                "give a local tokenizer with --tokenizer PATH"
            )
        try:
            payload = response.json()
            return int(payload["count"]) if "count" in payload else len(payload["tokens"])
        except (ValueError, KeyError, TypeError) as exc:
            raise EndpointError(f"POST {self._url}: unexpected answer {response.text[:200]!r}") from exc

    def close(self) -> None:
        self._client.close()


@dataclass
class Prompt:
    """The messages of one request and what the client built them to be."""

    messages: list[dict[str, str]]
    text_tokens: int  # tokens of the message texts, by the client's counter (the template not included)
    expected_prompt_tokens: int  # what the server should count: texts + the template overhead learned so far
    offset: int  # where in the corpus the prompt was cut (tokens for a local counter, characters otherwise)


@dataclass
class PromptFactory:
    """Builds prompts of `pp` (+ `depth` context) tokens; adapts once to the chat template's overhead."""

    counter: TokenCounter
    pp: int
    depth: int = 0
    corpus: str | None = None
    unique_prefix: bool = True  # start every prompt with its own tag so no prefix cache can hit
    seed: int | None = None
    template_overhead: int = 0  # tokens the server adds around the messages (learned by adapt())
    adapted: bool = False
    _rng: random.Random = field(init=False, repr=False)
    _corpus_ids: list[int] | None = field(init=False, default=None, repr=False)
    _used_offsets: set[int] = field(init=False, default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.pp < 1:
            raise ConfigError(f"--pp must be at least 1 (got {self.pp})")
        if self.depth < 0:
            raise ConfigError(f"--depth must be 0 or more (got {self.depth})")
        self._rng = random.Random(self.seed)
        if self.corpus is None:
            self.corpus = load_corpus(None)
        self._ensure_corpus(self.pp + self.depth)

    def _ensure_corpus(self, tokens: int) -> None:
        if isinstance(self.counter, LocalTokenizer):
            ids = self.counter.encode_corpus(self.corpus or "")
            need = 2 * tokens + 64
            if self._corpus_ids is not None and len(self._corpus_ids) >= need:
                return
            # A corpus shorter than one prompt is repeated: still natural text, just not unique.
            self._corpus_ids = ids * (need // max(1, len(ids)) + 1) if len(ids) < need else ids

    @property
    def target_prompt_tokens(self) -> int:
        """What the server's `usage.prompt_tokens` should say for every request."""
        return self.pp + self.depth

    def build(self, pp: int | None = None, depth: int | None = None) -> Prompt:
        """One request's messages; `pp` / `depth` override the factory's for shapes whose lengths vary."""
        pp = self.pp if pp is None else pp
        depth = self.depth if depth is None else depth
        if pp < 1 or depth < 0:
            raise ConfigError(f"a prompt needs pp >= 1 and depth >= 0 (got pp={pp}, depth={depth})")
        self._ensure_corpus(pp + depth)
        user_tokens = max(1, pp - self.template_overhead)
        tag = f"[{uuid.UUID(int=self._rng.getrandbits(128)).hex[:12]}] " if self.unique_prefix else ""
        messages: list[dict[str, str]] = []
        first_offset = -1
        total = 0
        if depth > 0:
            context, offset = self._cut(depth, prefix=tag)
            messages.append({"role": "system", "content": context})
            first_offset, total, tag = offset, depth, ""
        text, offset = self._cut(user_tokens, prefix=tag)
        messages.append({"role": "user", "content": text})
        return Prompt(messages=messages, text_tokens=total + user_tokens,
                      expected_prompt_tokens=total + user_tokens + self.template_overhead,
                      offset=first_offset if first_offset >= 0 else offset)

    def adapt(self, server_prompt_tokens: int) -> int:
        """Once: shrink the user message by what the server counted beyond the target. Returns the change."""
        if self.adapted:
            return 0
        self.adapted = True
        delta = server_prompt_tokens - self.target_prompt_tokens
        if delta <= 0 or delta >= self.pp:
            # Fewer tokens than sent (a server without a template) or an overhead larger than the prompt:
            # nothing sensible to shrink; the records keep both counts.
            return 0
        self.template_overhead += delta
        return delta

    # -- cutting ----------------------------------------------------------------------------------------

    def _fresh_offset(self, span: int, limit: int) -> int:
        high = max(0, limit - span - 1)
        for _ in range(64):  # identical offsets would share a prefix; avoid them while there is room
            offset = self._rng.randint(0, high)
            if offset not in self._used_offsets:
                break
        self._used_offsets.add(offset)
        return offset

    def _cut(self, n_tokens: int, prefix: str = "") -> tuple[str, int]:
        if isinstance(self.counter, LocalTokenizer):
            return self._cut_tokens(self.counter, n_tokens, prefix)
        return self._cut_chars(n_tokens, prefix)

    def _cut_tokens(self, tok: LocalTokenizer, n_tokens: int, prefix: str) -> tuple[str, int]:
        ids = self._corpus_ids or []
        offset = self._fresh_offset(n_tokens + 64, len(ids))
        prefix_tokens = tok.count(prefix) if prefix else 0
        if prefix_tokens * 4 > n_tokens:  # a prompt this short is all tag and no text: leave the tag out
            prefix, prefix_tokens = "", 0
        best_text, best_gap = prefix, n_tokens
        # Decode/re-encode can merge across the cut so that one more token id adds two tokens; when the
        # count oscillates around the target, the cut moves by one token and tries again.
        for shift in range(32):
            start = offset + shift
            take = n_tokens - prefix_tokens
            seen: set[int] = set()
            while take not in seen:
                seen.add(take)
                take = max(0, min(take, len(ids) - start))
                text = prefix + tok.decode(ids[start:start + take])
                got = tok.count(text)
                if got == n_tokens:
                    return text, start
                if abs(got - n_tokens) < best_gap:
                    best_text, best_gap = text, abs(got - n_tokens)
                take += n_tokens - got
        return best_text, offset  # pathological tokenizer: the closest we found; records keep the count

    def _cut_chars(self, n_tokens: int, prefix: str) -> tuple[str, int]:
        # A count can jump by two at one character; then another offset is tried (at most three).
        for _ in range(2):
            text, offset, exact = self._cut_chars_once(n_tokens, prefix)
            if exact:
                return text, offset
        return self._cut_chars_once(n_tokens, prefix)[:2]

    def _cut_chars_once(self, n_tokens: int, prefix: str) -> tuple[str, int, bool]:
        corpus = self.corpus or ""
        chars_per_token = 4.0
        span = int(n_tokens * chars_per_token * 2) + 64
        if len(corpus) < span:
            corpus = corpus * (span // max(1, len(corpus)) + 1)
        offset = self._fresh_offset(span, len(corpus))
        window = corpus[offset:]
        if prefix and len(prefix) > n_tokens:  # roughly: the tag would be most of the prompt
            prefix = ""

        def count(length: int) -> int:
            return self.counter.count(prefix + window[:length])

        # Secant steps on the character length, then a bisection between the bracketing lengths.
        low, high = 0, min(len(window), int(n_tokens * chars_per_token))
        got = count(high)
        for _ in range(4):
            if got == n_tokens:
                return prefix + window[:high], offset, True
            if got < n_tokens:
                low = high
                high = min(len(window), int(high * n_tokens / max(1, got)) + 2)
            else:
                high = max(low + 1, int(high * n_tokens / got))
            got = count(high)
        if got == n_tokens:
            return prefix + window[:high], offset, True
        while got < n_tokens and high < len(window):  # make sure `high` is past the target
            low, high = high, min(len(window), high * 2)
            got = count(high)
        while high - low > 1:
            middle = (low + high) // 2
            got_middle = count(middle)
            if got_middle == n_tokens:
                return prefix + window[:middle], offset, True
            if got_middle < n_tokens:
                low = middle
            else:
                high = middle
        return prefix + window[:low], offset, False
