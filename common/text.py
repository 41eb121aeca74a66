"""Natural text and a tokenizer, both built offline from what the Python standard library ships.

The corpus is the English prose of the Python reference manual that CPython installs as
`pydoc_data.topics` (~465 kB, ~112k tokens): natural text, no download. The tokenizer is a byte-level BPE
(vocab 4096) trained on that corpus on first use and cached; training is deterministic, so the twin, the
bench client and the tiny vLLM test model all count the same tokens.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TOKENIZER_VOCAB_SIZE = 4096
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|start|>", "<|end|>")

# The chat format of the twin and of the tiny test model: one user turn, then the assistant's turn.
# Rendering it adds a fixed number of tokens around the user's text (see chat_template_overhead()).
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}<|start|>{{ message['role'] }}\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Python twin of CHAT_TEMPLATE_JINJA (the twin must not need jinja to count tokens)."""
    parts = [f"<|start|>{m['role']}\n{m['content']}<|end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|start|>assistant\n")
    return "".join(parts)


@lru_cache(maxsize=1)
def builtin_corpus() -> str:
    import pydoc_data.topics

    # Sorted keys: the same text, in the same order, on every machine with the same Python.
    return "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))


def load_corpus(path: Path | None = None) -> str:
    """The built-in corpus, or the text of `path` (`--corpus FILE`)."""
    if path is None:
        return builtin_corpus()
    from common.errors import ConfigError

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"--corpus {path}: cannot read ({exc.strerror})") from exc
    if len(text) < 10_000:
        raise ConfigError(f"--corpus {path}: only {len(text)} characters; need at least 10000 to cut prompts")
    return text


def _cache_dir() -> Path:
    base = os.environ.get("TOPO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "topo")
    return Path(base)


def train_tokenizer(corpus: str, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus], trainer)
    return tokenizer


def tokenizer_path() -> Path:
    """Where the built-in tokenizer is cached (built on first call)."""
    corpus = builtin_corpus()
    digest = hashlib.sha256(f"{TOKENIZER_VOCAB_SIZE}\0{corpus}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"tokenizer-{digest}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        train_tokenizer(corpus).save(str(tmp))
        tmp.replace(path)  # atomic: concurrent processes never read a half-written file
    return path


@lru_cache(maxsize=1)
def builtin_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_path()))


def count_tokens(text: str, tokenizer: Tokenizer | None = None) -> int:
    return len((tokenizer or builtin_tokenizer()).encode(text, add_special_tokens=False).ids)


def chat_template_overhead(tokenizer: Tokenizer | None = None) -> int:
    """Tokens the chat format adds around one user message (what `usage.prompt_tokens` exceeds it by)."""
    tok = tokenizer or builtin_tokenizer()
    with_text = count_tokens(render_chat([{"role": "user", "content": "x"}]), tok)
    return with_text - count_tokens("x", tok)
