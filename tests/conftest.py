"""Shared fixtures. Each package's tests live in tests/<package>/."""

from __future__ import annotations

# The real vLLM engine (CPU build) and the tiny offline model: tiny_model_dir, vllm_servers, vllm_solo.
from support.fixtures import tiny_model_dir, vllm_servers, vllm_solo  # noqa: E402,F401
