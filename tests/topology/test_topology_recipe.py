"""Model recipes: the published gemma4-26b recipe, the tiny test recipe, errors naming file and key."""

from __future__ import annotations

import pytest
import yaml

from common.errors import ConfigError, PlanError
from topology.recipe import load_recipe


def flag_value(flags: list[str], flag: str) -> str:
    return flags[flags.index(flag) + 1]


def test_gemma_recipe_is_the_published_one(gemma):
    assert gemma.weights == "google/gemma-4-26B-A4B-it"
    assert gemma.served_model_name == "gemma4-26b"
    assert gemma.twin_card == "gemma4-26b"
    solo, tp2 = gemma.serve_flags(1), gemma.serve_flags(2)
    assert flag_value(solo, "--max-model-len") == "131072"
    assert flag_value(tp2, "--max-model-len") == "262144"
    for flags in (solo, tp2):
        assert flag_value(flags, "--quantization") == "fp8"
        assert flag_value(flags, "--kv-cache-dtype") == "fp8"
        assert flag_value(flags, "--gpu-memory-utilization") == "0.70"
        assert flag_value(flags, "--max-num-batched-tokens") == "8192"
        assert flag_value(flags, "--served-model-name") == "gemma4-26b"


def test_tiny_recipe_for_tests(tiny):
    assert tiny.served_model_name == "tiny" and tiny.twin_card == "tiny"
    assert int(flag_value(tiny.serve_flags(1), "--max-model-len")) <= 4096


def test_recipe_typo_names_file_and_key(tmp_path):
    path = tmp_path / "typo.yaml"
    data = yaml.safe_load(load_recipe("gemma4-26b").model_dump_json())
    data["quantisation"] = data.pop("quantization")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert str(path) in str(caught.value) and "quantisation: unknown key" in str(caught.value)


def test_bad_layout_key_and_missing_layout(tmp_path, gemma):
    path = tmp_path / "bad.yaml"
    data = yaml.safe_load(gemma.model_dump_json())
    data["max_model_len"] = {"solo": 1024, "duo": 2048}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"max_model_len.*'duo'"):
        load_recipe(path)
    with pytest.raises(PlanError, match="no max_model_len for a TP=8 engine"):
        gemma.serve_flags(8)


def test_extra_args_come_last_and_unset_options_are_left_to_the_engine(gemma):
    recipe = gemma.model_copy(update={"extra_args": ("--enforce-eager",), "quantization": None, "max_model_len": {}})
    flags = recipe.serve_flags(1)
    assert flags[-1] == "--enforce-eager"
    assert "--quantization" not in flags and "--max-model-len" not in flags
