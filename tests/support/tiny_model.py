"""A tiny random-weight Llama model for the real `vllm serve`, built offline from what topo already has.

The tokenizer is common.text's built-in one (so the server, the twin and the bench client count the
same tokens) and the chat format is common.text.CHAT_TEMPLATE_JINJA. The weights are random (seeded) and
written as safetensors with numpy alone, so the project's venv can build the model without torch. Nothing
is downloaded: the folder is everything `vllm serve <folder>` reads with HF_HUB_OFFLINE=1.

    .venv/bin/python tests/support/tiny_model.py DEST     # build (or reuse) a model folder at DEST
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `common` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.text import CHAT_TEMPLATE_JINJA, SPECIAL_TOKENS, TOKENIZER_VOCAB_SIZE, builtin_tokenizer

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, _START_TOKEN, END_TOKEN = SPECIAL_TOKENS
STAMP_FILE = "topo-tiny-model.json"


@dataclass(frozen=True)
class TinyLlamaShape:
    """Sizes of the tiny model; small enough to start fast, big enough to exercise every layer kind."""

    num_hidden_layers: int = 2
    hidden_size: int = 128
    intermediate_size: int = 256
    num_attention_heads: int = 4
    # 2 KV heads: divisible by TP=2, so the same folder serves solo and tensor-parallel.
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    vocab_size: int = TOKENIZER_VOCAB_SIZE
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _special_token_ids() -> dict[str, int]:
    tokenizer = builtin_tokenizer()
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise RuntimeError(f"the built-in tokenizer lacks special tokens {missing}")
    return ids  # type: ignore[return-value]


def _config_json(shape: TinyLlamaShape, ids: dict[str, int]) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "max_position_embeddings": shape.max_position_embeddings,
        "vocab_size": shape.vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        # bfloat16 like published checkpoints; vLLM's CPU build downcasts float32 to it anyway.
        "torch_dtype": "bfloat16",
        "bos_token_id": ids[BOS_TOKEN],
        "eos_token_id": ids[EOS_TOKEN],
        "pad_token_id": ids[PAD_TOKEN],
    }


def _generation_config_json(ids: dict[str, int]) -> dict[str, object]:
    # <|end|> closes a chat turn, so a chat answer stops there too unless the request sets ignore_eos.
    return {
        "bos_token_id": ids[BOS_TOKEN],
        "eos_token_id": [ids[EOS_TOKEN], ids[END_TOKEN]],
        "pad_token_id": ids[PAD_TOKEN],
        "do_sample": False,
    }


def _tokenizer_config_json(shape: TinyLlamaShape) -> dict[str, object]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        # The built-in tokenizer adds no special tokens around text; /tokenize must count like it does.
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.max_position_embeddings,
        "chat_template": CHAT_TEMPLATE_JINJA,
    }


def _random_weights(shape: TinyLlamaShape) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(shape.seed)
    h, inter, v, d = shape.hidden_size, shape.intermediate_size, shape.vocab_size, shape.head_dim
    q_out, kv_out = shape.num_attention_heads * d, shape.num_key_value_heads * d

    def normal(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * 0.02).astype(np.float32)

    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(v, h)}
    for layer in range(shape.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.input_layernorm.weight"] = np.ones(h, dtype=np.float32)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = np.ones(h, dtype=np.float32)
        tensors[f"{prefix}.self_attn.q_proj.weight"] = normal(q_out, h)
        tensors[f"{prefix}.self_attn.k_proj.weight"] = normal(kv_out, h)
        tensors[f"{prefix}.self_attn.v_proj.weight"] = normal(kv_out, h)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = normal(h, q_out)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = normal(inter, h)
        tensors[f"{prefix}.mlp.up_proj.weight"] = normal(inter, h)
        tensors[f"{prefix}.mlp.down_proj.weight"] = normal(h, inter)
    tensors["model.norm.weight"] = np.ones(h, dtype=np.float32)
    tensors["lm_head.weight"] = normal(v, h)
    return {name: to_bfloat16_bits(array) for name, array in tensors.items()}


def to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even; numpy has no bfloat16 type."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


# uint16 arrays hold bfloat16 bit patterns (see to_bfloat16_bits).
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint16): "BF16"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout: u64 little-endian header length, a JSON header of offsets, raw data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs: list[bytes] = []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()  # safetensors is little-endian
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # data starts 8-byte aligned
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(header_bytes)))
        out.write(header_bytes)
        for blob in blobs:
            out.write(blob)


def _fingerprint(shape: TinyLlamaShape, tokenizer_json: str) -> str:
    recipe = json.dumps({"shape": asdict(shape), "template": CHAT_TEMPLATE_JINJA}, sort_keys=True)
    return hashlib.sha256((recipe + "\0" + tokenizer_json).encode()).hexdigest()[:16]


def build_tiny_model(dest: Path, shape: TinyLlamaShape = TinyLlamaShape()) -> Path:
    """Write the model folder at `dest` (config, generation config, tokenizer, safetensors weights).

    Reuses `dest` when it already holds this exact model (same shape, seed, tokenizer and template);
    otherwise rebuilds it in a sibling temp folder and swaps it in, so a reader never sees half a model.
    """
    dest = Path(dest)
    tokenizer_json = builtin_tokenizer().to_str()
    fingerprint = _fingerprint(shape, tokenizer_json)
    stamp = dest / STAMP_FILE
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
                return dest
        except (OSError, ValueError):
            pass  # unreadable stamp: rebuild

    ids = _special_token_ids()
    staging = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    def dump(name: str, payload: object) -> None:
        (staging / name).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    dump("config.json", _config_json(shape, ids))
    dump("generation_config.json", _generation_config_json(ids))
    dump("tokenizer_config.json", _tokenizer_config_json(shape))
    dump("special_tokens_map.json", {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN})
    (staging / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    write_safetensors(staging / "model.safetensors", _random_weights(shape))
    dump(STAMP_FILE, {"fingerprint": fingerprint, "shape": asdict(shape)})

    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(dest)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[-1].strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    print(build_tiny_model(Path(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
