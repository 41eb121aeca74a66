"""Shared fixtures. Each package's tests live in tests/<package>/."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/ is a package, so tests/reports is `tests.reports` and never shadows the project's `reports`
# package (it did: the report tests ran whatever `reports` the installed checkout had). The helpers of
# tests/support are imported as `support`: tests/ goes on the path after the project's root.
sys.path.append(str(Path(__file__).resolve().parent))

# The real vLLM engine (CPU build) and the tiny offline model (tests/support/fixtures.py).
from support.fixtures import (  # noqa: E402,F401
    run_solo_server_tests_together,
    tiny_model_dir,
    tiny_vllm_recipe_file,
    vllm_servers,
    vllm_solo,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    run_solo_server_tests_together(items)
