"""Model recipes: how one model is served (configs/models/<name>.yaml), independent of the cluster.

A recipe turns into `vllm serve` flags (the twin takes the same flags plus `--hardware` and `--card`).
`max_model_len` is given per engine layout: `solo` for a TP=1 engine (solo, each engine of 2x-solo),
`tp2` for a TP=2 engine (tp2-mp, tp2-ray), and `tpN` for later layouts.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from common.config import EnvMap, StrictModel, load_model, resolve_config
from common.errors import PlanError

_LAYOUT_KEY = re.compile(r"^(solo|tp[1-9][0-9]*)$")


def layout_key(tensor_parallel: int) -> str:
    """The max_model_len key of an engine with this tensor-parallel size."""
    return "solo" if tensor_parallel == 1 else f"tp{tensor_parallel}"


class Recipe(StrictModel):
    """How to serve one model with vLLM (and the twin)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    weights: str  # what `vllm serve` is given: a Hugging Face id or a path on the node
    served_model_name: str  # the name clients send in "model"
    twin_card: str  # the twin's model card (configs/cards/<name>.yaml)
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: dict[str, int] = Field(default_factory=dict)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    extra_args: tuple[str, ...] = ()  # appended to every engine's serve flags, e.g. ["--enforce-eager"]
    env: EnvMap = Field(default_factory=dict)  # for every engine process
    image: str | None = None  # container image for the docker launcher (a node's engine.image wins)

    @field_validator("max_model_len")
    @classmethod
    def _layout_keys(cls, value: dict[str, int]) -> dict[str, int]:
        for key, length in value.items():
            if not _LAYOUT_KEY.match(key):
                raise ValueError(f"key {key!r} is not an engine layout (solo, tp2, tp4, ...)")
            if length <= 0:
                raise ValueError(f"max_model_len for {key} must be positive (got {length})")
        return value

    def max_model_len_for(self, tensor_parallel: int) -> int | None:
        """The context length for an engine of this TP size; None: let the engine choose."""
        if not self.max_model_len:
            return None
        key = layout_key(tensor_parallel)
        for candidate in (key, "tp1") if tensor_parallel == 1 else (key,):  # tp1 is solo's other name
            if candidate in self.max_model_len:
                return self.max_model_len[candidate]
        raise PlanError(
            f"recipe {self.name!r} has no max_model_len for a TP={tensor_parallel} engine "
            f"(add `{key}:` under max_model_len; it has: {', '.join(sorted(self.max_model_len))})"
        )

    def serve_flags(self, tensor_parallel: int) -> list[str]:
        """The model's own flags of `vllm serve` (after the parallelism and address flags)."""
        flags: list[str] = ["--served-model-name", self.served_model_name]
        if self.quantization:
            flags += ["--quantization", self.quantization]
        if self.kv_cache_dtype:
            flags += ["--kv-cache-dtype", self.kv_cache_dtype]
        if self.gpu_memory_utilization is not None:
            share = self.gpu_memory_utilization
            # 0.70 as the published recipe writes it; more digits only when they matter
            flags += ["--gpu-memory-utilization", f"{share:.2f}" if round(share, 2) == share else repr(share)]
        max_model_len = self.max_model_len_for(tensor_parallel)
        if max_model_len is not None:
            flags += ["--max-model-len", str(max_model_len)]
        if self.max_num_batched_tokens is not None:
            flags += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        if self.max_num_seqs is not None:
            flags += ["--max-num-seqs", str(self.max_num_seqs)]
        return flags + list(self.extra_args)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load configs/models/<name>.yaml or a YAML path; problems are ConfigErrors naming file and key."""
    return load_model(Recipe, resolve_config("models", str(name_or_path)))
