"""BenchSession.run: warm-up then closed batches of exactly c, every run handed over at once, failures as data."""

from __future__ import annotations

import math

from fake_server import Behaviour, FakeServer

from bench.records import RequestRecord
from bench.session import BenchSession, BenchSettings, RunDone, client_bound_reasons
from bench.workload import ClosedLoad


async def test_warm_up_then_runs_of_exactly_c_each_reported_as_it_finishes():
    seen: list[RunDone] = []
    finished: list[RequestRecord] = []
    behaviour = Behaviour(prefill_s=0.02, itl_s=0.002)
    with FakeServer(behaviour) as server:
        async with BenchSession(server.url, None, BenchSettings(pp=128, tg=8)) as session:
            records, run_rows = await session.run(ClosedLoad(3), 2, topology="solo", on_run=seen.append,
                                                  on_request=finished.append)
    assert len(finished) == 3 * 3  # progress: every request of the warm-up and of both runs
    assert [(d.run, d.warmup, len(d.records)) for d in seen] == [(-1, True, 3), (0, False, 3), (1, False, 3)]
    assert len(behaviour.seen) == 3 * 3  # warm-up batch + 2 runs, nothing else sent as chat requests
    assert [r.run for r in records] == [0, 0, 0, 1, 1, 1] and [r.index for r in records[:3]] == [0, 1, 2]
    assert [row["run"] for row in run_rows] == [0, 1]
    assert seen[1].row is run_rows[0]
    # the warm-up adapted the prompt: the fake server counts the chat template, and then exactly pp
    assert {r.prompt_tokens for r in seen[0].records} == {128 + 12}
    assert {r.prompt_tokens for r in records} == {128}


async def test_failures_are_counted_per_run_and_the_cell_goes_on():
    with FakeServer(Behaviour(mode="fail_index", fail_every=4)) as server:
        async with BenchSession(server.url, "tiny", BenchSettings(pp=64, tg=4, latency_mode="none")) as session:
            result = await session.run(ClosedLoad(2), 3)
    assert result.latency == 0.0
    # arrivals 1..8: warm-up 1-2, run 0: 3-4 (4 fails), run 1: 5-6, run 2: 7-8 (8 fails)
    assert [row["failed"] for row in result.run_rows] == [1, 0, 1]
    assert sum(not r.ok for r in result.records) == 2


def _record(start: float, first_token: float) -> RequestRecord:
    return RequestRecord("solo", 1, 0, 0, batch_start=0.0, start=start, prompt_tokens_sent=1,
                         first_response=first_token, first_token=first_token, token_times=[first_token], end=1.0)


def test_client_bound_flags_send_lag_large_against_ttft_and_a_busy_client():
    # send lag 50 ms against a TTFT of 100 ms: 50% > 10% -> flagged
    assert client_bound_reasons([_record(0.05, 0.15)], math.nan)
    # send lag 2 ms: under the 5 ms floor -> not flagged, whatever the TTFT
    assert not client_bound_reasons([_record(0.002, 0.004)], 0.1)
    # the client process busy 90% of the run's wall time -> flagged
    assert "90%" in client_bound_reasons([_record(0.001, 0.5)], 0.9)[0]


async def test_a_short_warm_up_and_more_runs_of_a_warmed_cell():
    seen: list[RunDone] = []
    behaviour = Behaviour(prefill_s=0.01, itl_s=0.001)
    settings = BenchSettings(pp=64, tg=8, latency_mode="none", warmup_tg=2, warmup_min_requests=4)
    with FakeServer(behaviour) as server:
        async with BenchSession(server.url, "tiny", settings) as session:
            await session.run(ClosedLoad(1), 1, on_run=seen.append)
            # the adaptive sweep's next run of the same cell: no second warm-up, numbering goes on
            await session.run(ClosedLoad(1), 1, first_run=1, on_run=seen.append, warmup=False)
    warm = seen[0]
    assert warm.warmup and len(warm.records) == 4  # at least 4 warm-up requests, even at c1
    assert {len(r.token_times) for r in warm.records} == {2}  # 2 tokens each, not tg
    assert [(d.run, d.warmup, len(d.records)) for d in seen[1:]] == [(0, False, 1), (1, False, 1)]
    assert {len(r.token_times) for d in seen[1:] for r in d.records} == {8}
