"""Ranks over TCP on loopback: rank 0 waits for every rank, drives each step, and notices a lost rank.

In-process tests exercise the protocol (TcpRankServer against run_headless_rank) quickly; the
subprocess tests run the real `python -m twin serve` processes, as topo launches them on nodes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from common.errors import BringUpError, ConnectError
from twin.distributed import TcpRankServer, run_headless_rank, step_to_wire
from twin.engine import StepDescription

from test_server import MODEL, chat_body, running_twin, sse_events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def desc(step: int) -> StepDescription:
    return StepDescription(step=step, prefill_tokens=10 * step, decode_tokens=1, num_running=1, modeled_seconds=0.001)


async def test_step_description_crosses_as_plain_json() -> None:
    wire = step_to_wire(desc(3))
    assert wire == {"step": 3, "prefill_tokens": 30, "decode_tokens": 1, "num_running": 1, "modeled_seconds": 0.001,
                    "memory_seconds": 0.0, "compute_seconds": 0.0}
    assert json.loads(json.dumps(wire)) == wire


async def test_rank0_is_not_ready_until_every_rank_joined_then_every_step_is_acked() -> None:
    server = TcpRankServer("127.0.0.1", 0, nnodes=3, ack_timeout_s=5)
    await server.listen()
    port = server.bound_port
    start = asyncio.create_task(server.start())
    rank1 = asyncio.create_task(run_headless_rank("127.0.0.1", port, 1, 3))
    await asyncio.sleep(0.3)
    assert not start.done()  # one of two peers joined: still not ready
    rank2 = asyncio.create_task(run_headless_rank("127.0.0.1", port, 2, 3))
    await asyncio.wait_for(start, 5)
    for step in range(1, 6):
        await server.step(desc(step))
    info = server.describe()
    assert [p["steps_acked"] for p in info["peers"]] == [5, 5]
    assert [p["last_ack_step"] for p in info["peers"]] == [5, 5]
    assert server.healthy
    await server.stop()
    summaries = await asyncio.wait_for(asyncio.gather(rank1, rank2), 5)
    for summary in summaries:
        assert summary.clean and summary.steps == 5
        assert summary.prefill_tokens == 10 + 20 + 30 + 40 + 50 and summary.decode_tokens == 5


async def test_a_rank_that_connects_before_rank0_listens_retries_until_it_can() -> None:
    port = free_port()
    rank1 = asyncio.create_task(run_headless_rank("127.0.0.1", port, 1, 2, connect_timeout_s=10))
    await asyncio.sleep(0.5)  # rank 1 is already retrying
    server = TcpRankServer("127.0.0.1", port, nnodes=2)
    await asyncio.wait_for(server.start(), 10)
    await server.step(desc(1))
    await server.stop()
    assert (await asyncio.wait_for(rank1, 5)).steps == 1


async def test_wrong_nnodes_and_duplicate_ranks_are_refused_by_name() -> None:
    server = TcpRankServer("127.0.0.1", 0, nnodes=3)
    await server.listen()
    port = server.bound_port
    with pytest.raises(ConnectError, match="--nnodes mismatch"):
        await run_headless_rank("127.0.0.1", port, 1, 2)
    first = asyncio.create_task(run_headless_rank("127.0.0.1", port, 1, 3))
    await asyncio.sleep(0.2)
    with pytest.raises(ConnectError, match="already joined"):
        await run_headless_rank("127.0.0.1", port, 1, 3)
    with pytest.raises(ConnectError, match="outside"):
        await run_headless_rank("127.0.0.1", port, 5, 3)
    first.cancel()
    await server.stop()


async def test_a_peer_that_goes_away_makes_rank0_unhealthy_and_steps_do_not_block() -> None:
    server = TcpRankServer("127.0.0.1", 0, nnodes=2, ack_timeout_s=5)
    await server.listen()
    rank1 = asyncio.create_task(run_headless_rank("127.0.0.1", server.bound_port, 1, 2))
    await asyncio.wait_for(server.start(), 5)
    heard: list[str] = []
    server.on_lost(heard.append)
    await server.step(desc(1))
    rank1.cancel()  # the peer's socket closes
    for _ in range(100):
        if not server.healthy:
            break
        await asyncio.sleep(0.02)
    assert not server.healthy and "node rank 1" in (server.failure or "")
    assert heard == [server.failure]
    started = time.perf_counter()
    await server.step(desc(2))  # returns at once: the engine must never hang on a dead group
    assert time.perf_counter() - started < 0.5
    await server.stop()


async def test_a_silent_peer_is_lost_after_the_ack_timeout() -> None:
    """A peer whose process hangs (socket open, no acks) is declared lost by the heartbeat."""
    server = TcpRankServer("127.0.0.1", 0, nnodes=2, ack_timeout_s=0.5, heartbeat_s=0.1)
    await server.listen()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
    writer.write(json.dumps({"hello": {"node_rank": 1, "nnodes": 2}}).encode() + b"\n")
    await writer.drain()
    await asyncio.wait_for(server.start(), 5)
    assert json.loads(await reader.readline()) == {"welcome": {"nnodes": 2, "node_rank": 1}}
    for _ in range(100):  # never answers the pings
        if not server.healthy:
            break
        await asyncio.sleep(0.05)
    assert not server.healthy and "did not answer a ping" in (server.failure or "")
    writer.close()
    await server.stop()


async def test_join_timeout_names_the_missing_ranks() -> None:
    server = TcpRankServer("127.0.0.1", 0, nnodes=3, join_timeout_s=0.3)
    with pytest.raises(BringUpError, match=r"node rank\(s\) \[1, 2\] never joined"):
        await server.start()


async def test_a_lost_rank_fails_running_streams_and_new_requests_with_5xx() -> None:
    group = TcpRankServer("127.0.0.1", 0, nnodes=2, ack_timeout_s=5)
    await group.listen()
    rank1 = asyncio.create_task(run_headless_rank("127.0.0.1", group.bound_port, 1, 2))
    await asyncio.wait_for(group.start(), 5)
    async with running_twin(group=group, tensor_parallel=2, nnodes=2, executor="mp") as (url, twin):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = chat_body(max_tokens=1500, ignore_eos=True, stream=True)
            lines: list[str] = []
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    lines.append(line)
                    if len(lines) == 10:
                        rank1.cancel()  # rank 1 dies mid-stream
            health = await client.get("/health")
            refused = await client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
            ranks = (await client.get("/twin/ranks")).json()
    events = sse_events("\n".join(lines) + "\n")
    assert events[-1] == "[DONE]"
    assert "error" in events[-2] and events[-2]["error"]["code"] == 503
    assert sum(1 for e in events[:-2] if e["choices"][0]["delta"].get("content")) < 1500
    assert health.status_code == 503 and "lost a rank" in health.json()["error"]["message"]
    assert refused.status_code == 503
    assert ranks["healthy"] is False and ranks["peers"][0]["steps_acked"] >= 5
    assert twin.records[-1].error and twin.records[-1].status_code == 503
    await group.stop()


# ----------------------------------------------------------------------------- real processes


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "twin", "serve", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        stop(proc)


def health(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
    except httpx.TransportError:
        return None  # not listening yet


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rank_argv(node_rank: int, master_port: int, http_port: int) -> list[str]:
    argv = ["tiny", "--served-model-name", MODEL, "--hardware", "fast", "-tp", "2", "--distributed-executor-backend",
            "mp", "--nnodes", "2", "--node-rank", str(node_rank), "--master-addr", "127.0.0.1",
            "--master-port", str(master_port), "--port", str(http_port), "--rank-timeout", "3"]
    return argv + (["--headless"] if node_rank else [])


def test_two_processes_rank0_serves_only_after_rank1_joined_and_turns_unhealthy_when_it_is_killed(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    master, http = free_port(), free_port()
    rank0 = spawn(rank_argv(0, master, http), tmp_path / "rank0.log")
    processes.append(rank0)
    wait_for(lambda: "listening on" in (tmp_path / "rank0.log").read_text(), 30, "rank 0 to listen for ranks")
    time.sleep(1.0)
    assert health(http) is None, "rank 0 opened its HTTP port before rank 1 joined"
    assert rank0.poll() is None
    rank1 = spawn(rank_argv(1, master, http), tmp_path / "rank1.log")
    processes.append(rank1)
    wait_for(lambda: health(http) == 200, 30, "rank 0 healthy after rank 1 joined")
    with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=30) as client:
        response = client.post("/v1/chat/completions", json=chat_body(max_tokens=20, ignore_eos=True, stream=True,
                                                                      stream_options={"include_usage": True}))
        assert response.status_code == 200
        assert sse_events(response.text)[-2]["usage"]["completion_tokens"] == 20
        peers = client.get("/twin/ranks").json()["peers"]
        assert peers[0]["node_rank"] == 1 and peers[0]["steps_acked"] >= 20  # every step crossed the socket
        assert peers[0]["pid"] == rank1.pid
        rank1.send_signal(signal.SIGKILL)
        rank1.wait(5)
        wait_for(lambda: health(http) == 503, 10, "rank 0 unhealthy after rank 1 was killed")
        refused = client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
        assert refused.status_code == 503 and "lost a rank" in refused.json()["error"]["message"]
        metrics = client.get("/metrics").text
        assert 'twin:ranks_healthy{model_name="tiny-served"} 0.0' in metrics
    assert rank0.poll() is None  # still answering, as unhealthy


def test_the_headless_rank_exits_when_rank0_goes_away(processes: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    master, http = free_port(), free_port()
    rank1 = spawn(rank_argv(1, master, http), tmp_path / "rank1.log")  # rank 1 first, as the plan does
    processes.append(rank1)
    rank0 = spawn(rank_argv(0, master, http), tmp_path / "rank0.log")
    processes.append(rank0)
    wait_for(lambda: health(http) == 200, 30, "rank 0 healthy")
    assert health(http) == 200
    rank0.send_signal(signal.SIGKILL)  # no goodbye
    rank1.wait(15)
    assert rank1.returncode == 2  # a TopoError: rank 0 vanished
    assert "rank 0 closed the connection" in (tmp_path / "rank1.log").read_text()
    # and after a clean rank 0 shutdown the headless rank exits 0
    master, http = free_port(), free_port()
    rank1 = spawn(rank_argv(1, master, http), tmp_path / "rank1b.log")
    processes.append(rank1)
    rank0 = spawn(rank_argv(0, master, http), tmp_path / "rank0b.log")
    processes.append(rank0)
    wait_for(lambda: health(http) == 200, 30, "rank 0 healthy")
    rank0.send_signal(signal.SIGTERM)
    rank0.wait(15)
    rank1.wait(15)
    assert rank1.returncode == 0, (tmp_path / "rank1b.log").read_text()
    assert "said bye" in (tmp_path / "rank1b.log").read_text()
