"""The tiny model folder: what vLLM reads from it, checked without vLLM (the `vllm` tests load it for real)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from common.text import CHAT_TEMPLATE_JINJA, SPECIAL_TOKENS, builtin_tokenizer
from support.tiny_model import STAMP_FILE, TinyLlamaShape, build_tiny_model, to_bfloat16_bits


def read_safetensors_header(path: Path) -> tuple[dict[str, dict], int]:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + header_len]), len(raw) - 8 - header_len


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tm") / "tiny")


def test_folder_holds_what_vllm_serve_reads(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors"} <= names  # fmt: skip
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 2 and config["vocab_size"] == 4096
    assert config["num_key_value_heads"] % 2 == 0  # servable with TP=2


def test_tokenizer_is_common_texts_with_its_chat_template(model_dir: Path) -> None:
    assert (model_dir / "tokenizer.json").read_text() == builtin_tokenizer().to_str()
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHAT_TEMPLATE_JINJA
    bos, eos, pad = SPECIAL_TOKENS[:3]
    assert (tok_config["bos_token"], tok_config["eos_token"], tok_config["pad_token"]) == (bos, eos, pad)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert builtin_tokenizer().token_to_id(eos) in gen["eos_token_id"]


def test_weights_cover_every_parameter_with_consistent_shapes(model_dir: Path) -> None:
    shape = TinyLlamaShape()
    header, data_len = read_safetensors_header(model_dir / "model.safetensors")
    header.pop("__metadata__")
    expected_per_layer = {
        "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
        "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    }  # fmt: skip
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        f"model.layers.{i}.{part}.weight" for i in range(shape.num_hidden_layers) for part in expected_per_layer
    }
    assert set(header) == expected
    assert header["model.layers.0.self_attn.k_proj.weight"]["shape"] == [
        shape.num_key_value_heads * shape.head_dim, shape.hidden_size]  # fmt: skip
    # Offsets tile the data section exactly, 2 bytes per bfloat16 value.
    spans = sorted(tuple(entry["data_offsets"]) for entry in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == data_len
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for entry in header.values():
        assert entry["dtype"] == "BF16"
        assert entry["data_offsets"][1] - entry["data_offsets"][0] == 2 * int(np.prod(entry["shape"]))


def test_bfloat16_rounding_to_nearest_even() -> None:
    values = np.array([1.0, -2.5, 0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.0e38], dtype=np.float32)
    bits = to_bfloat16_bits(values)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    # 1+2^-8 is halfway between bf16 neighbours 1 and 1+2^-7: ties go to the even one (1.0).
    assert back.tolist()[:5] == [1.0, -2.5, 0.0, 1.0, 1.0 + 2**-6]
    assert abs(back[5] - values[5]) / values[5] < 2**-8


def test_rebuild_is_skipped_when_unchanged_and_done_when_the_shape_changes(tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    build_tiny_model(dest)
    weights = dest / "model.safetensors"
    first = weights.stat().st_mtime_ns
    build_tiny_model(dest)
    assert weights.stat().st_mtime_ns == first
    build_tiny_model(dest, TinyLlamaShape(seed=1))
    assert json.loads((dest / STAMP_FILE).read_text())["shape"]["seed"] == 1
    assert not list(tmp_path.glob(".tiny.*"))  # no staging folder left behind


def test_tiny_vllm_recipe_serves_the_folder_with_topos_flags(model_dir: Path, tmp_path: Path) -> None:
    from support.fixtures import FAST_START_ENV, tiny_vllm_recipe, write_recipe
    from topology.recipe import load_recipe

    recipe = tiny_vllm_recipe(model_dir)
    assert recipe.weights == str(model_dir) and recipe.env["HF_HUB_OFFLINE"] == "1"
    flags = recipe.serve_flags(2)
    assert flags.count("--enforce-eager") == 1
    # The faster start-up is the engine's environment only: topo's own flags come through unchanged.
    assert recipe.env.items() >= FAST_START_ENV.items()
    assert [f for f in flags if f != "--enforce-eager"] == load_recipe("tiny").serve_flags(2)
    assert flags[flags.index("--served-model-name") + 1] == load_recipe("tiny").served_model_name
    assert load_recipe(write_recipe(recipe, tmp_path / "tiny-vllm.yaml")) == recipe
