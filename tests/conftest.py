"""Shared fixtures. Each package's tests live in tests/<package>/."""

from __future__ import annotations

# The real vLLM engine (CPU build) and the tiny offline model (tests/support/fixtures.py).
from support.fixtures import tiny_model_dir, tiny_vllm_recipe_file, vllm_servers, vllm_solo  # noqa: E402,F401
