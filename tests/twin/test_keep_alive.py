"""The twin closes idle HTTP connections like vLLM: after VLLM_HTTP_TIMEOUT_KEEP_ALIVE seconds (default 5).

A proxy in front of engines must give idle connections up before the engines do (topology/kinds.py); the
twin has to behave like vLLM here or the local default would hide, or invent, that race.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import ConfigError
from topology.kinds import ENGINE_DEFAULT_KEEP_ALIVE_S, ENGINE_KEEP_ALIVE_ENV
from twin.launch import DEFAULT_HTTP_KEEP_ALIVE_S, HTTP_KEEP_ALIVE_ENV, http_keep_alive_s

from test_distributed import free_port, health, stop, wait_for


def test_keep_alive_comes_from_the_vllm_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # the planner sizes the proxy's pool from the same variable and default the twin (and vLLM) obey
    assert (HTTP_KEEP_ALIVE_ENV, DEFAULT_HTTP_KEEP_ALIVE_S) == (ENGINE_KEEP_ALIVE_ENV, ENGINE_DEFAULT_KEEP_ALIVE_S)
    monkeypatch.delenv("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", raising=False)
    assert http_keep_alive_s() == 5
    monkeypatch.setenv("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "12")
    assert http_keep_alive_s() == 12
    for bad in ("0", "1.5", "soon"):
        monkeypatch.setenv("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", bad)
        with pytest.raises(ConfigError, match=f"VLLM_HTTP_TIMEOUT_KEEP_ALIVE={bad!r}"):
            http_keep_alive_s()


def seconds_until_closed(port: int, limit: float) -> float | None:
    """Send one keep-alive request, read its answer, then wait for the server to close; None if it did not
    within `limit` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit + 2) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: twin\r\nConnection: keep-alive\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        sock.settimeout(limit)
        try:
            while sock.recv(4096):
                pass  # the rest of the body, then EOF when the server closes
        except TimeoutError:
            return None
        return time.monotonic() - answered


@pytest.mark.slow
def test_an_idle_connection_is_closed_after_the_keep_alive(tmp_path: Path) -> None:
    started = []
    try:
        ports = {}
        for keep_alive in ("1", None):
            port = free_port()
            env = {key: value for key, value in os.environ.items() if key != "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"}
            if keep_alive:
                env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = keep_alive
            log = (tmp_path / f"twin-{port}.log").open("wb")
            started.append(subprocess.Popen(
                [sys.executable, "-m", "twin", "serve", "tiny", "--hardware", "fast", "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            ))
            ports[keep_alive] = port
        for port in ports.values():
            wait_for(lambda port=port: health(port) == 200, 60, f"the twin on port {port}")
        short = seconds_until_closed(ports["1"], limit=4)
        assert short is not None and short < 4, "with a 1 s keep-alive the idle connection stayed open for 4 s"
        assert seconds_until_closed(ports[None], limit=3) is None, "the default (5 s) closed within 3 s"
    finally:
        for process in started:
            stop(process)
