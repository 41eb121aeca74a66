"""pytest fixtures for the real vLLM engine; tests/conftest.py imports them so every test folder sees them.

Only one vLLM server runs at a time (each takes ~3 GB and both cores while starting): the session-wide
VllmServers keeps the current one up across tests and modules, and stops it before starting another kind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.tiny_model import build_tiny_model
from support.vllm_server import (
    DEFAULT_READY_TIMEOUT_S,
    VLLM_VENV,
    VllmServer,
    start_solo,
    start_tp2_two_processes,
    vllm_executable,
)

# A slower machine (CI with everything else running) may need longer than the default to start vLLM.
READY_TIMEOUT_S = float(os.environ.get("TOPO_VLLM_READY_TIMEOUT", DEFAULT_READY_TIMEOUT_S))


class VllmServers:
    """The one real vLLM server of the test session, started on first use and reused while it lives."""

    def __init__(self, model_dir: Path, log_dir: Path) -> None:
        self.model_dir = model_dir
        self.log_dir = log_dir
        self._kind: str | None = None
        self._server: VllmServer | None = None

    def _get(self, kind: str, start: Callable[[], VllmServer]) -> VllmServer:
        if self._server is not None and self._kind == kind and all(p.alive() for p in self._server.processes):
            return self._server
        self.stop()
        self._server, self._kind = start(), kind
        return self._server

    def solo(self) -> VllmServer:
        return self._get("solo", lambda: start_solo(self.model_dir, self.log_dir, timeout_s=READY_TIMEOUT_S))

    def tp2(self) -> VllmServer:
        """TP=2 over the mp executor, one process per rank (rank 1 --headless), both on loopback."""
        return self._get(
            "tp2", lambda: start_tp2_two_processes(self.model_dir, self.log_dir, timeout_s=READY_TIMEOUT_S)
        )

    def stop(self) -> None:
        server, self._server, self._kind = self._server, None, None
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Llama model folder (built offline in well under a second)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


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
