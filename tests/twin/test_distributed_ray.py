"""The ray executor on a real two-node Ray cluster on this host (TESTBED.md "Two Ray nodes on one host").

The cluster uses ports and temp dirs of its own, so it never touches another Ray on the machine; it is
stopped by signalling the sessions of the two `ray start --block` processes this test started (every Ray
process of a node, actor workers included, stays in the session of its `ray start`). Never `ray stop`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from test_distributed import free_port, health, spawn, wait_for
from test_server import MODEL, chat_body, sse_events

pytestmark = pytest.mark.slow  # a Ray cluster takes 10-40 s to start on a busy 2-core machine

RAY = str(Path(sys.executable).parent / "ray")


def session_pids(session_id: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":  # field 6 of stat: session id
            pids.append(int(entry.name))
    return pids


def stop_session(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """TERM every process of the session `proc` leads, KILL what is left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and session_pids(proc.pid):
            time.sleep(0.2)
        if not session_pids(proc.pid):
            break
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    assert not session_pids(proc.pid), f"Ray processes of session {proc.pid} survived"


def ray_node(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--memory", "1000000000",
              "--object-store-memory", "100000000", "--disable-usage-stats",
              "--dashboard-agent-listen-port", str(free_port())]
    with log.open("wb") as out:
        return subprocess.Popen([RAY, "start", *args, *common], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    base = Path(tempfile.mkdtemp(prefix="ttr-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    port = free_port()
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(ray_node(["--head", "--port", str(port), "--temp-dir", str(base / "h"),
                               "--include-dashboard=false", "--ray-client-server-port", str(free_port()),
                               "--dashboard-port", str(free_port())], base / "head.log"))
        wait_for(lambda: "Ray runtime started" in (base / "head.log").read_text() or nodes[0].poll() is not None,
                 120, "the Ray head")
        assert nodes[0].poll() is None, (base / "head.log").read_text()[-2000:]
        nodes.append(ray_node(["--address", f"127.0.0.1:{port}", "--temp-dir", str(base / "w"),
                               "--resources", '{"node1": 1}'], base / "worker.log"))
        wait_for(lambda: "Ray runtime started" in (base / "worker.log").read_text() or nodes[1].poll() is not None,
                 120, "the Ray worker node")
        assert nodes[1].poll() is None, (base / "worker.log").read_text()[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        for node in reversed(nodes):
            stop_session(node)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        stop_session(proc, grace_s=10)


def twin_over_ray(tp: int, http: int, log: Path) -> subprocess.Popen[bytes]:
    """Rank 0 of a ray-executed twin; it finds the cluster through RAY_ADDRESS (set by the test)."""
    return spawn(["tiny", "--served-model-name", MODEL, "--hardware", "fast", "-tp", str(tp),
                  "--distributed-executor-backend", "ray", "--port", str(http), "--rank-timeout", "5"], log)


def test_rank_actor_runs_on_the_other_node_takes_every_step_and_its_death_makes_rank0_unhealthy(
    ray_cluster: str, processes: list[subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    http = free_port()
    rank0 = twin_over_ray(2, http, tmp_path / "rank0.log")
    processes.append(rank0)
    wait_for(lambda: health(http) == 200 or rank0.poll() is not None, 120, "the ray twin to serve")
    assert rank0.poll() is None, (tmp_path / "rank0.log").read_text()[-3000:]
    with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=60) as client:
        response = client.post("/v1/chat/completions", json=chat_body(max_tokens=24, ignore_eos=True, stream=True,
                                                                      stream_options={"include_usage": True}))
        assert sse_events(response.text)[-2]["usage"]["completion_tokens"] == 24
        ranks = client.get("/twin/ranks").json()
        assert ranks["transport"] == "ray" and ranks["healthy"]
        (actor,) = ranks["actors"]
        assert actor["node_id"] != ranks["driver_node"]  # pinned to the OTHER node
        assert actor["steps"] == ranks["steps_sent"] >= 24  # every engine step reached the actor
        assert actor["decode_tokens"] >= 23
        os.kill(actor["pid"], signal.SIGKILL)  # the rank's process dies
        wait_for(lambda: health(http) == 503, 30, "rank 0 unhealthy after its actor died")
        refused = client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
        assert refused.status_code == 503 and "ray rank 1" in refused.json()["error"]["message"]
    assert rank0.poll() is None


def test_too_few_ray_nodes_for_the_tp_size_is_a_clear_error(
    ray_cluster: str, processes: list[subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    http = free_port()
    rank0 = twin_over_ray(3, http, tmp_path / "rank0.log")
    processes.append(rank0)
    rank0.wait(120)
    log = (tmp_path / "rank0.log").read_text()
    assert rank0.returncode == 2, log[-3000:]
    assert "needs 3 nodes" in log and "2 alive node(s)" in log
    assert health(http) is None
