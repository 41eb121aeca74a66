"""Decode runs (many pure-decode steps at once) give bit for bit the step-by-step loop's results.

Each case plays the same requests through a deployment that takes every step on its own
(`decode_runs=False`, the reference) and through one that takes decode runs, and compares every token's
time exactly, plus the engines' counters."""

import pytest

from bench.arrivals import ArrivalProcess
from bench.records import RequestRecord
from bench.shapes import RequestSpec
from twin.costmodel import SeqWork
from twin.engine import EngineConfig
from twin.openloop import simulate_open
from twin.predict import VirtualDeployment


@pytest.fixture(scope="module")
def gb10() -> EngineConfig:
    return EngineConfig.from_names("gb10", "gemma4-26b")


def _same(fast: list[RequestRecord], slow: list[RequestRecord]) -> None:
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert a.token_times == b.token_times  # exact: the same floats, not approximately
        assert (a.start, a.scheduled_at, a.served_by) == (b.start, b.scheduled_at, b.served_by)


def _counters(deployment: VirtualDeployment) -> list[tuple[int, ...]]:
    return [(s.steps_total, s.generation_tokens_total, s.prompt_tokens_total, s.preemptions_total)
            for s in (core.stats() for core in deployment.cores)]


def _both(topology: str, config: EngineConfig, play, seed: int = 0) -> tuple[VirtualDeployment, VirtualDeployment]:
    fast = VirtualDeployment(topology, config, seed=seed)
    slow = VirtualDeployment(topology, config, seed=seed, decode_runs=False)
    _same(play(fast), play(slow))
    assert _counters(fast) == _counters(slow)
    return fast, slow


def test_decode_run_seconds_are_the_steps_own(gb10: EngineConfig) -> None:
    for tp, executor in ((1, "uni"), (2, "mp")):
        cost = gb10.with_(tensor_parallel=tp, executor=executor).cost_model()
        contexts = [5, 1023, 1030, 4090, 20000]  # some cross the sliding window during the run
        runs = cost.decode_run_seconds(contexts, 12)
        steps = [cost.step([SeqWork(1, c + j) for c in contexts]).seconds for j in range(12)]
        assert runs == steps


@pytest.mark.parametrize("topology", ["solo", "tp2-mp", "2x-solo-shuffle"])
def test_closed_batches_of_mixed_lengths(gb10: EngineConfig, topology: str) -> None:
    prompts = [1024, 300, 5000, 17, 2048, 900, 9000, 64]
    outputs = [128, 40, 7, 300, 1, 64, 129, 33]

    def play(deployment: VirtualDeployment) -> list[RequestRecord]:
        records = deployment.run_batch(8, prompts, outputs, run=-1)
        return records + deployment.run_batch(8, prompts[::-1], outputs, run=0)

    _both(topology, gb10, play, seed=5)


@pytest.mark.parametrize("topology", ["solo", "2x-solo-shuffle"])
def test_open_loop_with_a_cap_and_arrivals_mid_run(gb10: EngineConfig, topology: str) -> None:
    specs = [RequestSpec(300 + 97 * (i % 13), 20 + 37 * (i % 7)) for i in range(60)]
    schedule = ArrivalProcess(4.0, 0.7).schedule(count=60, seed=42)

    def capped(deployment: VirtualDeployment) -> list[RequestRecord]:
        return simulate_open(deployment, specs, schedule, max_concurrency=6)

    def free(deployment: VirtualDeployment) -> list[RequestRecord]:
        return simulate_open(deployment, specs, schedule)

    fast, slow = _both(topology, gb10, capped, seed=1)
    assert sum(core.step_index for core in fast.cores) == sum(core.step_index for core in slow.cores)
    _both(topology, gb10, free, seed=1)


def test_kv_pressure_preemption_and_waiting_on_a_full_cache(gb10: EngineConfig) -> None:
    small = gb10.with_(gpu_memory_utilization=0.30, max_model_len=32768)
    specs = [RequestSpec(6000 + 1000 * (i % 5), 100 + 50 * (i % 3)) for i in range(24)]

    def play(deployment: VirtualDeployment) -> list[RequestRecord]:
        return simulate_open(deployment, specs, [0.05 * i for i in range(24)])

    fast, _ = _both("solo", small, play)
    assert fast.cores[0].stats().preemptions_total > 0  # the case did exercise preemption


def test_multi_turn_shapes_and_step_jitter(gb10: EngineConfig) -> None:
    noisy = gb10.with_(noise_cv=0.1, noise_seed=3)
    specs = [RequestSpec(4096 + 2048 * (i % 3), 64 + i) for i in range(12)]  # growing conversations
    schedule = ArrivalProcess(2.0, 1.0).schedule(count=12, seed=7)

    def play(deployment: VirtualDeployment) -> list[RequestRecord]:
        closed = deployment.run_batch(3, [8192, 6144, 4096], [50, 70, 90])
        return closed + simulate_open(deployment, specs, schedule, max_concurrency=4)

    _both("2x-solo-shuffle", noisy, play, seed=2)


@pytest.mark.parametrize("topology", ["solo", "2x-solo-shuffle"])
def test_jitter_draws_one_factor_per_step_taken(topology: str) -> None:
    # steps (the fast profile's) much shorter than the frontend's 8 ms, frequent arrivals: runs are cut at
    # planning (a request still in the frontend) and mid-run (one sent), each by several steps
    noisy = EngineConfig.from_names("fast", "gemma4-26b", noise_cv=0.2, noise_seed=11)
    specs = [RequestSpec(200 + 50 * (i % 9), 30 + 11 * (i % 5)) for i in range(80)]
    schedule = ArrivalProcess(40.0, 0.5).schedule(count=80, seed=9)

    def play(deployment: VirtualDeployment) -> list[RequestRecord]:
        return simulate_open(deployment, specs, schedule, max_concurrency=9)

    _both(topology, noisy, play, seed=4)
