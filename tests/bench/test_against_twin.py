"""End to end against the real twin server: the client's view agrees with the server's own record.

The twin runs with `--hardware gb10 --card tiny`: real-time pacing slow enough (~5 ms per token, ~50 ms
TTFT) that a client on a shared 2-core machine can resolve individual tokens; the `fast` profile generates
128 tokens in ~6 ms, below what client timestamps can separate. Bounds are ratios within one run.
"""

from __future__ import annotations

import subprocess
import sys
from statistics import mean

import httpx
import pytest
from twin_process import REPO, TwinProcess

from bench.client import Endpoint
from bench.metrics import decode_tps_request, e2e_ttft
from bench.session import BenchSession
from bench.store import ResultsStore

PP, TG = 256, 32


@pytest.fixture(scope="module")
def twin():
    with TwinProcess(hardware="gb10", card="tiny") as process:
        yield process


async def test_client_ttft_and_decode_agree_with_the_twins_own_record(twin):
    httpx.delete(f"{twin.url}/twin/requests")
    session = BenchSession(Endpoint.from_url(twin.url), None, pp=PP, tg=TG, seed=11)
    try:
        assert await session.open() == "tiny"
        records = []
        for c in (1, 4):
            result = await session.cell(c, 2, topology="solo")
            assert len(result.run_rows) == 2 and all(row["failed"] == 0 for row in result.run_rows)
            records += result.records
    finally:
        await session.close()
    served = {row["request_id"]: row for row in httpx.get(f"{twin.url}/twin/requests").json()["requests"]}
    assert all(r.ok for r in records)
    # After the warm-up adapted the prompt, the server counts exactly pp prompt tokens for every request.
    assert {r.prompt_tokens for r in records} == {PP}
    assert {r.completion_tokens for r in records} == {TG}

    client_ttft, server_ttft, client_decode, server_decode, delivery = [], [], [], [], []
    for r in records:
        s = served[r.response_id]
        # One clock (perf_counter is system-wide): the request reaches the server after the client sent it,
        # and the first token reaches the client after the server sent it.
        assert r.start <= s["arrival"] and s["first_token"] <= r.first_token
        assert len(r.token_times) == s["completion_tokens"] == TG
        delivery.append(r.first_token - s["first_token"])
        client_ttft.append(e2e_ttft(r))
        server_ttft.append(s["first_token"] - s["arrival"])
        client_decode.append(decode_tps_request(r))
        server_decode.append((s["completion_tokens"] - 1) / (s["last_token"] - s["first_token"]))
    # Loopback delivery of the first token takes ~0.1-2 ms. ~40 ms means Nagle on the server's socket
    # meeting the client's delayed ACK (a listening socket made with proto 0 makes asyncio skip TCP_NODELAY).
    assert mean(delivery) < 0.010, (
        f"the first token took {mean(delivery) * 1000:.1f} ms on average from the twin's send to the client: "
        "is TCP_NODELAY off on the twin's socket?")
    # TTFT: the client's includes the server's, plus HTTP parsing and delivery (a few ms of ~50 ms).
    assert 0.6 <= mean(server_ttft) / mean(client_ttft) <= 1.0
    # Decode: the same tokens seen from both ends of one socket.
    assert 0.8 <= mean(client_decode) / mean(server_decode) <= 1.25


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topo", "bench", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_topo_bench_prints_the_table_and_writes_parquet(twin, tmp_path):
    out = tmp_path / "results"
    done = run_cli("--url", f"{twin.url}/v1", "--pp", "128", "--tg", "16", "-c", "1,3", "--runs", "2",
                   "--latency-mode", "generation", "--out", str(out), "--topology", "solo")
    assert done.returncode == 0, done.stderr
    for test in ("pp128 @ c1", "tg16 @ c1", "pp128 @ c3", "tg16 @ c3"):
        assert test in done.stdout
    assert "0/6" in done.stdout and "0/2" in done.stdout
    store = ResultsStore(out)
    requests = store.read_requests()
    assert len(requests) == 2 * 1 + 2 * 3
    assert set(requests["topology"]) == {"solo"} and set(requests["prompt_tokens"]) == {128}
    assert all(len(times) == 16 for times in requests["token_times"])
    cells = store.read_cells()
    assert sorted(zip(cells["concurrency"], cells["run"])) == [(1, 0), (1, 1), (3, 0), (3, 1)]
    assert (cells["decode_tps"] > 0).all() and (cells["failed"] == 0).all()
    assert not (out / "parts").exists()


def test_topo_bench_wrong_model_fails_fast_with_exit_2(twin):
    done = run_cli("--url", twin.url, "--model", "gemma4-26b", "--runs", "1", "-c", "1")
    assert done.returncode == 2
    message = " ".join(done.stderr.split())  # the console wraps long lines
    assert "'gemma4-26b' is not served" in message and "it serves: tiny" in message
    assert "Traceback" not in done.stderr


def test_topo_bench_wrong_url_fails_fast_with_exit_2():
    from fake_server import free_port
    port = free_port()
    done = run_cli("--url", f"http://127.0.0.1:{port}", "-c", "1")
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert f"127.0.0.1:{port}/v1/models" in message and "Traceback" not in message
