"""Open-loop load against the real twin server: sends keep to the schedule, the cap holds, the user's clock
starts at the due time. Bounds are ratios within one run (the machine is shared)."""

from __future__ import annotations

import statistics

import pytest
from twin_process import TwinProcess

from bench.arrivals import ArrivalProcess
from bench.client import BenchClient, Endpoint
from bench.openloop import run_open
from bench.metrics import open_run_metrics, peak_in_flight, queue_s
from bench.prompts import LocalTokenizer, PromptFactory
from bench.session import BenchSession, BenchSettings


@pytest.fixture(scope="module")
def twin():
    with TwinProcess(hardware="gb10", card="gemma4-26b", model="gemma4-26b") as process:
        yield process


async def load(twin: TwinProcess, n: int, rate: float, cap: int | None, pp: int = 256, tg: int = 16):
    schedule = ArrivalProcess(rate, 1.0).schedule(count=n, seed=5)
    factory = PromptFactory(LocalTokenizer.builtin(), pp=pp, seed=1)
    prompts = [factory.build() for _ in range(n)]
    async with BenchClient(Endpoint.from_url(twin.url)) as client:
        await client.preflight()
        records = await run_open(client, prompts, [tg] * n, schedule, max_concurrency=cap, topology="t")
    return schedule, records


async def test_sends_keep_to_the_schedule(twin: TwinProcess) -> None:
    schedule, records = await load(twin, 24, rate=8.0, cap=None)
    assert all(r.ok for r in records), [r.error for r in records if not r.ok]
    origin = records[0].scheduled_at
    assert [r.scheduled_at - origin for r in records] == pytest.approx([t - schedule[0] for t in schedule])
    lateness = [r.start - r.scheduled_at for r in records]
    mean_gap = schedule[-1] / (len(schedule) - 1)
    assert statistics.median(lateness) < 0.25 * mean_gap  # the client kept the schedule (a shared 2-core machine)
    assert all(queue_s(r) == pytest.approx(r.send_lag) for r in records)  # no cap: all of it is client lag
    row = open_run_metrics(records, rate=8.0)
    assert row["ttft_user_p50_ms"] >= row["ttft_p50_ms"]


async def test_the_cap_holds_the_requests_back_and_the_user_waits(twin: TwinProcess) -> None:
    _, records = await load(twin, 16, rate=40.0, cap=2, pp=1024, tg=24)
    assert all(r.ok for r in records)
    assert peak_in_flight(records) <= 2
    held = [r for r in records if queue_s(r) > 0.05]
    assert len(held) >= 8  # at 40 req/s and two slots, most requests waited for a slot
    row = open_run_metrics(records, rate=40.0)
    assert row["ttft_user_p99_ms"] > 2 * row["ttft_p99_ms"]  # from the due time, the wait dominates
    # the client itself was prompt once a slot was free: its own lag is small against the TTFT
    assert statistics.median(r.send_lag for r in records) < 0.2 * statistics.median(
        r.first_token - r.start for r in records)


async def test_measure_points_of_a_suite(twin: TwinProcess, tmp_path) -> None:
    from bench.session import RunDone
    from bench.suite import load_suite

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntests:\n"
                    "  - id: chat\n    shape: {kind: random, prompt: 300, output: 12}\n"
                    "    load: {mode: closed, concurrency: [3], runs: 2}\n"
                    "  - id: peak\n    shape: {kind: fixed, prompt: 300, output: 12}\n"
                    "    load: {mode: open, rate: 2, requests: 6, max_concurrency: 2}\n    slo: {ttft_ms: 60000}\n")
    closed, peak = load_suite(path).points()
    seen: list[RunDone] = []
    async with BenchSession(twin.url, None, BenchSettings(pp=300, seed=2)) as session:
        result = await session.run_point(closed, 5, topology="t", on_run=seen.append)
        assert [r.run for r in seen] == [-1, 0, 1]  # the warm-up, then the test's own 2 runs
        assert [len(r.records) for r in seen] == [3, 3, 3]
        assert len({r.prompt_tokens_sent for r in seen[1].records}) > 1  # random lengths per request
        assert [(row["workload"], row["load"]) for row in result.run_rows] == [("chat", "c3")] * 2
        assert {(r.workload, r.load) for r in result.records} == {("chat", "c3")}
        # rate_scale: the same arrivals 10x faster (for a twin profile sped up as much)
        opened = await session.run_point(peak, 5, topology="t", rate_scale=10.0)
    (row,) = opened.run_rows
    assert row["rate"] == 20.0 and row["peak_in_flight"] <= 2 and row["goodput"] == 1.0
    assert row["requests"] == 6 and row["failed"] == 0 and row["load"] == "2rps"
    assert all(r.scheduled_at is not None for r in opened.records)


def test_topo_bench_workload_stores_every_point(twin: TwinProcess, tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bench.results_folder import ResultsFolder

    repo = Path(__file__).resolve().parents[2]
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntests:\n"
                     "  - id: chat\n    shape: {kind: fixed, prompt: 200, output: 8}\n"
                     "    load: {mode: closed, concurrency: [2], runs: 1}\n"
                     "  - id: peak\n    shape: {kind: sharegpt}\n"
                     "    load: {mode: open, rate: 4, requests: 8, max_concurrency: 3}\n")
    done = subprocess.run([sys.executable, "-m", "topo", "bench", "--url", twin.url, "--workload", str(suite),
                           "--out", str(tmp_path / "out"), "--seed", "1"], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    contents = ResultsFolder(tmp_path / "out").load()
    assert set(zip(contents.cells.workload, contents.cells.load)) == {("chat", "c2"), ("peak", "4rps")}
    assert contents.requests is not None and contents.requests["scheduled_at"].notna().sum() == 8
    assert contents.meta is not None and contents.meta.workloads is not None
    assert "peak:" in done.stdout and "chat:" in done.stdout


async def test_a_closed_point_learns_the_chat_template_once(twin: TwinProcess) -> None:
    from bench.suite import Suite
    from common.config import validate_model

    suite = validate_model(Suite, {"name": "x", "tests": [{
        "id": "t", "shape": {"kind": "random", "prompt": 400, "output": 4},
        "load": {"mode": "closed", "concurrency": [2], "runs": 1}}]}, source="test")
    (point,) = suite.points()
    async with BenchSession(twin.url, None, BenchSettings(pp=400, seed=3)) as session:
        result = await session.run_point(point, 1, topology="t")
    # after the warm-up, the server counts exactly the lengths each prompt was built for
    assert all(r.prompt_tokens == r.prompt_tokens_sent for r in result.records)
