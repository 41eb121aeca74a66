"""pytest fixtures for the real vLLM engine; tests/conftest.py imports them so every test folder sees them.

The servers are started with the flags topo renders from its own `tiny` recipe (configs/models/tiny.yaml,
pointed at the model folder built here), so these tests also prove the real vLLM accepts them.
Only one vLLM server runs at a time (each takes ~3 GB and both cores while starting): the session-wide
VllmServers keeps the current one up across tests and modules, and stops it before starting another kind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import yaml

from support.tiny_model import build_tiny_model
from support.vllm_server import (
    DEFAULT_READY_TIMEOUT_S,
    VLLM_VENV,
    VllmServer,
    start_solo,
    start_tp2_two_processes,
    vllm_executable,
)
from topology.recipe import Recipe, load_recipe

# A slower machine (CI with everything else running) may need longer than the default to start vLLM.
READY_TIMEOUT_S = float(os.environ.get("TOPO_VLLM_READY_TIMEOUT", DEFAULT_READY_TIMEOUT_S))


# What a real vLLM CPU engine needs in its environment wherever topo launches it.
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


# Only for the tests' start-up time, which is ~90% Python imports (torch, vllm: ~10 CPU-s per process):
# on the CPU platform vLLM runs a TP=1 engine's worker in a spawned process of its own unless V1
# multiprocessing is off (vllm/platforms/cpu.py turns `uni` into `mp`), so this saves one of three imports.
# The API server still runs the engine core in its own process (AsyncLLM always uses the MP client), and an
# mp executor (TP=2) is not affected. With the worker inside the engine core, vLLM's own thread binding is
# not applied: one OpenMP thread, as the mp executor would have given it. A GPU engine at TP=1 runs its worker
# in-process anyway (`uni`), so a Spark's plan needs neither.
FAST_START_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "OMP_NUM_THREADS": "1",
}


def tiny_vllm_recipe(model_dir: Path) -> Recipe:
    """topo's `tiny` recipe, serving the offline model folder with the real vLLM CPU build."""
    base = load_recipe("tiny")
    extra_args = base.extra_args if "--enforce-eager" in base.extra_args else (*base.extra_args, "--enforce-eager")
    return base.model_copy(
        update={
            "weights": str(model_dir),
            "extra_args": extra_args,
            "env": {**base.env, **VLLM_CPU_ENV, **FAST_START_ENV},
        }
    )


def write_recipe(recipe: Recipe, path: Path) -> Path:
    """The recipe as a YAML file, for `topo ... --model PATH`."""
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return path


class VllmServers:
    """The one real vLLM server of the test session, started on first use and reused while it lives."""

    def __init__(self, model_dir: Path, log_dir: Path, recipe: Recipe | None = None) -> None:
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.recipe = recipe or tiny_vllm_recipe(model_dir)
        self._kind: str | None = None
        self._server: VllmServer | None = None

    def _get(self, kind: str, start: Callable[[], VllmServer]) -> VllmServer:
        if self._server is not None and self._kind == kind and all(p.alive() for p in self._server.processes):
            return self._server
        self.stop()
        self._server, self._kind = start(), kind
        return self._server

    def solo(self) -> VllmServer:
        return self._get(
            "solo",
            lambda: start_solo(
                self.model_dir,
                self.log_dir,
                model_flags=self.recipe.serve_flags(1),
                extra_env=self.recipe.env,
                timeout_s=READY_TIMEOUT_S,
            ),
        )

    def tp2(self) -> VllmServer:
        """TP=2 over the mp executor, one process per rank (rank 1 --headless), both on loopback."""
        return self._get(
            "tp2",
            lambda: start_tp2_two_processes(
                self.model_dir,
                self.log_dir,
                model_flags=self.recipe.serve_flags(2),
                extra_env=self.recipe.env,
                timeout_s=READY_TIMEOUT_S,
            ),
        )

    def stop(self) -> None:
        server, self._server, self._kind = self._server, None, None
        if server is not None:
            server.stop()


def run_solo_server_tests_together(items: list[pytest.Item]) -> None:
    """Moves every test on the shared solo server next to the first one (collection order otherwise).

    The server lives across folders, but a test of another kind in between (tp2, the test bed's own
    engines) stops it, and the next solo test would pay a whole start-up again (~40-90 s here).
    """
    solo = [item for item in items if "vllm_solo" in getattr(item, "fixturenames", ())]
    if not solo:
        return
    first = items.index(solo[0])
    moved = {id(item) for item in solo}
    others = [item for item in items if id(item) not in moved]
    items[:] = others[:first] + solo + others[first:]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Llama model folder (built offline in well under a second)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def tiny_vllm_recipe_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipe YAML serving the tiny model folder with the real vLLM (for `--model PATH`)."""
    return write_recipe(tiny_vllm_recipe(tiny_model_dir), tmp_path_factory.mktemp("recipe") / "tiny-vllm.yaml")


@pytest.fixture(scope="session")
def vllm_servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServers]:
    """Skips when the real vLLM CPU build is not installed (CI decides whether to install it)."""
    if vllm_executable() is None:
        pytest.skip(f"real vLLM CPU build not installed ({VLLM_VENV}/bin/vllm absent): run scripts/setup --vllm")
    servers = VllmServers(tiny_model_dir, tmp_path_factory.mktemp("vllm-logs"))
    yield servers
    servers.stop()


@pytest.fixture
def vllm_solo(vllm_servers: VllmServers) -> VllmServer:
    """A ready `vllm serve` of the tiny model on loopback (served name `tiny`), shared by the session."""
    return vllm_servers.solo()
