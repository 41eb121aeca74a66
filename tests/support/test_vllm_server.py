"""The vLLM process machinery (groups, readiness, fail-fast, teardown) on stand-in processes: no vLLM needed."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from common.errors import BringUpError, ReadinessTimeout
from support.vllm_server import (
    LOOPBACK,
    VllmServer,
    free_loopback_port,
    launch,
    live_group_members,
    stop_group,
    tp2_two_process_argvs,
    vllm_env,
)

# An OpenAI-ish stand-in: /health, and /v1/models listing MODEL_NAME.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, sys
    port, name = int(sys.argv[1]), sys.argv[2]
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/health": b"", "/v1/models": json.dumps({"data": [{"id": name}]}).encode()}.get(self.path)
            self.send_response(404 if body is None else 200); self.end_headers(); self.wfile.write(body or b"")
        def log_message(self, *args): pass
    print("listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)

# Ignores SIGTERM, and so does the child it forks into the same process group.
STUBBORN = textwrap.dedent(
    """
    import os, signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.fork()
    print("stubborn", os.getpid(), flush=True)
    time.sleep(600)
    """
)


def fake_server(tmp_path: Path, served: str, expected: str = "tiny") -> VllmServer:
    port = free_loopback_port()
    process = launch("fake", [sys.executable, "-c", FAKE_SERVER, str(port), served], vllm_env(), tmp_path / "fake.log")
    return VllmServer(f"http://{LOOPBACK}:{port}", expected, [process])


def test_ready_when_health_and_models_answer_then_the_group_is_gone(tmp_path: Path) -> None:
    server = fake_server(tmp_path, served="tiny")
    try:
        assert server.wait_ready(timeout_s=30, poll_s=0.1) == server.ready_after_s
        assert server.memory_kib()["rss_kib"] > 0
    finally:
        server.stop(grace_s=5)
    assert live_group_members(server.frontend.pgid) == []


def test_a_process_that_dies_fails_fast_with_its_exit_status_and_log_tail(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('engine core failed: no NUMA', flush=True); sys.exit(3)"]
    server = VllmServer(f"http://{LOOPBACK}:{free_loopback_port()}", "tiny",
                        [launch("dying", argv, vllm_env(), tmp_path / "dying.log")])  # fmt: skip
    started = time.monotonic()
    with pytest.raises(BringUpError) as info:
        server.wait_ready(timeout_s=60, poll_s=0.1)
    assert not isinstance(info.value, ReadinessTimeout)
    assert "status 3" in str(info.value) and "engine core failed: no NUMA" in str(info.value)
    assert time.monotonic() - started < 30  # not the 60 s timeout


def test_alive_but_serving_another_model_is_a_readiness_timeout(tmp_path: Path) -> None:
    server = fake_server(tmp_path, served="other-model", expected="tiny")
    try:
        with pytest.raises(ReadinessTimeout) as info:
            server.wait_ready(timeout_s=3, poll_s=0.1)
        assert "listening" in str(info.value)  # the log tail
    finally:
        server.stop(grace_s=5)


def test_stop_escalates_to_sigkill_for_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    process = launch("stubborn", [sys.executable, "-c", STUBBORN], vllm_env(), tmp_path / "stubborn.log")
    deadline = time.monotonic() + 20
    while len(live_group_members(process.pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(live_group_members(process.pgid)) == 2
    started = time.monotonic()
    stop_group(process, grace_s=1.0)
    assert live_group_members(process.pgid) == []
    assert process.popen.returncode == -9
    assert time.monotonic() - started >= 1.0  # SIGTERM was given its grace first


def test_tp2_ranks_share_the_rendezvous_and_split_the_cores() -> None:
    (argv0, env0), (argv1, env1) = tp2_two_process_argvs(Path("/m"), port=8000, master_port=29555)
    for argv in (argv0, argv1):
        joined = " ".join(argv)
        assert "--tensor-parallel-size 2" in joined and "--distributed-executor-backend mp" in joined
        assert "--nnodes 2" in joined and "--master-port 29555" in joined and "--master-addr 127.0.0.1" in joined
    assert "--headless" not in argv0 and argv1[-1] == "--headless"
    assert argv0[argv0.index("--node-rank") + 1] == "0" and argv1[argv1.index("--node-rank") + 1] == "1"
    assert (env0["VLLM_CPU_OMP_THREADS_BIND"], env1["VLLM_CPU_OMP_THREADS_BIND"]) == ("0", "1")
    assert env0["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env1["GLOO_SOCKET_IFNAME"] == "lo"


def test_env_is_offline_and_keeps_the_project_venv_out() -> None:
    env = vllm_env(extra={"X": "1"})
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["X"] == "1"
    assert env["PATH"].split(":")[0].endswith(".venv-vllm/bin") and "PYTHONPATH" not in env


def test_the_session_keeps_one_server_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from support import fixtures

    started: list[VllmServer] = []

    def start_fake(*_args: object, **_kwargs: object) -> VllmServer:
        server = fake_server(tmp_path, served="tiny")
        server.wait_ready(timeout_s=30, poll_s=0.1)
        started.append(server)
        return server

    monkeypatch.setattr(fixtures, "start_solo", start_fake)
    monkeypatch.setattr(fixtures, "start_tp2_two_processes", start_fake)
    servers = fixtures.VllmServers(tmp_path, tmp_path)
    try:
        solo = servers.solo()
        assert servers.solo() is solo  # reused while alive
        tp2 = servers.tp2()
        assert tp2 is not solo and live_group_members(solo.frontend.pgid) == []  # solo stopped first
        stop_group(tp2.frontend, grace_s=5)  # a server that died between tests is started again
        assert servers.tp2() is not tp2 and len(started) == 3
    finally:
        servers.stop()
    assert all(live_group_members(s.frontend.pgid) == [] for s in started)
