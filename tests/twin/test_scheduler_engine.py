"""The engine's step loop: wall clock vs virtual clock, step hooks, cancellation, refusals."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import ConfigError, EngineRequestError
from twin.engine import (
    Engine,
    EngineConfig,
    EngineCore,
    GenerationRequest,
    StepDescription,
    VirtualClock,
    run_step_loop,
)
from twin.costmodel import SeqWork
from twin.predict import _drive


def slow_tiny_config() -> EngineConfig:
    """The tiny card on gb10, with per-step overhead large enough that asyncio's timer jitter is small."""
    base = EngineConfig.from_names("gb10", "tiny", max_num_batched_tokens=256)
    hardware = base.hardware.model_copy(
        update={"step_overhead_ms": 12.0, "frontend_ms_per_request": 2.0, "engine_pickup_ms": 3.0}
    )
    return base.with_(hardware=hardware)


SCENARIO = [("a", 300, 6), ("b", 100, 8), ("c", 50, 4)]  # a's prompt takes two chunks of 256


def virtual_token_times(config: EngineConfig) -> dict[str, list[float]]:
    core = EngineCore(config)
    clock = VirtualClock()
    for request_id, prompt, max_tokens in SCENARIO:
        core.submit(GenerationRequest(request_id, prompt, max_tokens), clock.now())
    times: dict[str, list[float]] = {rid: [] for rid, _, _ in SCENARIO}

    def collect(tokens):
        for token in tokens:
            times[token.request_id].append(token.time)

    _drive(run_step_loop(core, clock, collect, stop_when_idle=True))
    return times


async def wall_token_times(config: EngineConfig) -> dict[str, list[float]]:
    engine = Engine(config)
    await engine.start()
    try:
        start = engine.clock.now()

        async def one(request_id: str, prompt: int, max_tokens: int) -> list[float]:
            return [e.time - start async for e in engine.generate(GenerationRequest(request_id, prompt, max_tokens))]

        # submit all three in one go (same event-loop tick), as the virtual scenario does
        streams = [one(*spec) for spec in SCENARIO]
        results = await asyncio.gather(*streams)
    finally:
        await engine.stop()
    return {spec[0]: times for spec, times in zip(SCENARIO, results)}


def test_virtual_run_is_deterministic_and_complete():
    config = slow_tiny_config()
    first = virtual_token_times(config)
    assert first == virtual_token_times(config)
    assert {rid: len(t) for rid, t in first.items()} == {"a": 6, "b": 8, "c": 4}
    for times in first.values():
        assert times == sorted(times)
    # frontend: a ready at 2 ms, b at 4, c at 6; the idle engine starts 3 ms after a (5 ms). Step 1 is a's
    # first 256-token chunk (the whole budget); step 2 is a's last 44 tokens + b + c: one first-token time.
    assert first["a"][0] == first["b"][0] == first["c"][0]
    assert first["a"][0] > 0.005 + 2 * 0.012
    assert first["a"][1] - first["a"][0] >= 0.012  # then one decode step per token


async def test_wall_clock_matches_virtual_time_within_ratio():
    config = slow_tiny_config()
    virtual = virtual_token_times(config)
    wall = await wall_token_times(config)
    for request_id, _, max_tokens in SCENARIO:
        assert len(wall[request_id]) == max_tokens
        # first token and last token: same times within a ratio bound (timer jitter only adds)
        for got, want in ((wall[request_id][0], virtual[request_id][0]), (wall[request_id][-1], virtual[request_id][-1])):
            assert 0.97 <= got / want <= 1.25, (request_id, got, want)


def hooked_virtual_times(config: EngineConfig, hook_seconds: float):
    """The scenario in virtual time, with a step hook that spends `hook_seconds` of (virtual) real time."""
    core = EngineCore(config)
    clock = VirtualClock()
    for request_id, prompt, max_tokens in SCENARIO:
        core.submit(GenerationRequest(request_id, prompt, max_tokens), clock.now())
    times: dict[str, list[float]] = {rid: [] for rid, _, _ in SCENARIO}
    seen: list[StepDescription] = []

    async def hook(step: StepDescription) -> None:
        seen.append(step)
        clock.advance_to(clock.now() + hook_seconds)  # e.g. a TCP round trip to the peer ranks

    def collect(tokens):
        for token in tokens:
            times[token.request_id].append(token.time)

    _drive(run_step_loop(core, clock, collect, step_hook=hook, stop_when_idle=True))
    return times, seen


def test_step_hook_time_is_not_counted_twice():
    config = slow_tiny_config()  # every step models >= 12 ms
    plain = virtual_token_times(config)
    short, seen = hooked_virtual_times(config, 0.004)
    # 4 ms of coordination inside a 12+ ms step: the step still ends at its modeled time
    assert short == plain
    assert [s.step for s in seen] == list(range(1, len(seen) + 1))
    assert seen[0].prefill_tokens == 256 and seen[0].decode_tokens == 0
    assert seen[-1].decode_tokens > 0 and seen[-1].prefill_tokens == 0
    assert all(s.modeled_seconds >= 0.012 for s in seen)
    # coordination slower than the model: each step lasts as long as the hook, not hook + model
    slow, _ = hooked_virtual_times(config, 0.030)
    gaps = [b - a for a, b in zip(slow["b"], slow["b"][1:])]
    assert gaps == pytest.approx([0.030] * len(gaps))


async def test_wall_clock_delivers_no_token_before_its_time():
    config = slow_tiny_config()
    engine = Engine(config)
    await engine.start()
    try:
        lateness = []
        async for event in engine.generate(GenerationRequest("x", 100, 5)):
            lateness.append(engine.clock.now() - event.time)
        assert len(lateness) == 5 and min(lateness) >= 0
    finally:
        await engine.stop()


async def test_cancelled_stream_leaves_the_batch_and_frees_kv():
    config = EngineConfig.from_names("fast", "tiny")
    engine = Engine(config)
    await engine.start()
    try:
        quitter = engine.generate(GenerationRequest("quitter", 500, 1000))
        stayer = engine.generate(GenerationRequest("stayer", 100, 30))
        got = 0
        async for _ in quitter:
            got += 1
            if got == 3:
                break
        await quitter.aclose()  # type: ignore[attr-defined]
        assert "quitter" not in engine.core.scheduler.by_id
        blocks_left = engine.core.scheduler.used_blocks
        assert blocks_left <= -(-(100 + 30) // 16)  # only the stayer's blocks remain
        count = 0
        async for event in stayer:
            count += 1
            last = event
        assert count == 30 and last.finished
        stats = engine.stats()
        assert stats.num_running == 0 and stats.kv_cache_usage == 0.0
        assert stats.generation_tokens_total >= 33
        assert len(stats.ttft_seconds) == 2
    finally:
        await engine.stop()


async def test_requests_beyond_max_model_len_are_refused_at_once():
    config = EngineConfig.from_names("fast", "tiny", max_model_len=512)
    engine = Engine(config)
    await engine.start()
    try:
        with pytest.raises(EngineRequestError) as info:
            engine.generate(GenerationRequest("long", 500, 20))
        assert isinstance(info.value, ValueError)
        assert "512" in str(info.value)
        with pytest.raises(EngineRequestError):
            engine.generate(GenerationRequest("empty", 0, 5))
        events = [e async for e in engine.generate(GenerationRequest("ok", 480, 32))]
        assert len(events) == 32
    finally:
        await engine.stop()


def test_engine_config_is_checked():
    with pytest.raises(ConfigError, match="executor"):
        EngineConfig.from_names("gb10", "gemma4-26b", tensor_parallel=2)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        EngineConfig.from_names("gb10", "gemma4-26b", gpu_memory_utilization=1.5)
    # max_model_len beyond what the KV cache can hold fails at start-up, as vLLM does
    config = EngineConfig.from_names("gb10", "gemma4-26b", gpu_memory_utilization=0.3, max_model_len=262144)
    with pytest.raises(ConfigError, match="KV cache"):
        EngineCore(config)


def test_stats_histogram_is_cumulative():
    core = EngineCore(EngineConfig.from_names("fast", "tiny"))
    for i in range(3):
        core.submit(GenerationRequest(f"r{i}", 64, 2), 0.0)
    clock = VirtualClock()
    _drive(run_step_loop(core, clock, lambda tokens: None, stop_when_idle=True))
    stats = core.stats()
    counts, total, n = stats.ttft_histogram((0.0001, 10.0))
    assert n == 3 and counts[-1] == 3 and counts[1] == 3 and counts[0] <= counts[1]
    assert total == pytest.approx(sum(stats.ttft_seconds))
    assert stats.prompt_tokens_total == 192 and stats.generation_tokens_total == 6


async def test_a_request_handed_over_late_still_joins_the_first_step(monkeypatch):
    """Two requests reach the server together; the twin's tokenizer hands the second over 20 ms later.
    The model says both were ready for the first step, and the wall-clock engine honours that."""
    import twin.engine as engine_module

    monkeypatch.setattr(engine_module, "FIRST_STEP_GRACE_SECONDS", 0.4)
    base = slow_tiny_config()
    config = base.with_(hardware=base.hardware.model_copy(update={"step_overhead_ms": 900.0}))
    engine = Engine(config)
    await engine.start()
    try:
        arrival = engine.clock.now()
        first = engine.generate(GenerationRequest("first", 64, 1, arrival=arrival))
        await asyncio.sleep(0.02)
        second = engine.generate(GenerationRequest("second", 64, 1, arrival=arrival))
        times = [[e.time async for e in stream] for stream in (first, second)]
        assert times[0] == times[1]  # one step for both
        assert engine.stats().steps_total == 1
        # modeled: the step starts `pickup` after the first request is ready (arrival + frontend)
        hw = config.hardware
        start = arrival + (hw.frontend_ms_per_request + hw.engine_pickup_ms) / 1000
        step = engine.core.cost.step([SeqWork(64, 0), SeqWork(64, 0)]).seconds
        assert times[0][0] == pytest.approx(start + step)
    finally:
        await engine.stop()


async def test_an_overdue_request_keeps_its_modeled_times():
    """A request the server received 300 ms ago (its tokenizing was slow) is timed from its arrival."""
    config = slow_tiny_config()
    engine = Engine(config)
    await engine.start()
    try:
        arrival = engine.clock.now() - 0.3
        events = [e async for e in engine.generate(GenerationRequest("late", 64, 2, arrival=arrival))]
        hw = config.hardware
        cost = engine.core.cost
        first = arrival + (hw.frontend_ms_per_request + hw.engine_pickup_ms) / 1000 + cost.step([SeqWork(64, 0)]).seconds
        assert events[0].time == pytest.approx(first)
        assert events[1].time == pytest.approx(first + cost.step([SeqWork(1, 64)]).seconds)
        assert engine.stats().ttft_seconds[0] == pytest.approx(first - arrival)
    finally:
        await engine.stop()


async def test_a_stream_closed_before_its_first_token_is_withdrawn():
    engine = Engine(EngineConfig.from_names("fast", "tiny"))
    await engine.start()
    try:
        never_read = engine.generate(GenerationRequest("never-read", 200, 50))
        await never_read.aclose()
        assert "never-read" not in engine.core.scheduler.by_id and engine.stats().num_waiting == 0
        # a consumer task cancelled while it waits for a token withdraws its request too
        stream = engine.generate(GenerationRequest("cancelled", 200, 1000))

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert "cancelled" not in engine.core.scheduler.by_id
        assert engine.stats().kv_cache_usage == 0.0 and not engine._queues
    finally:
        await engine.stop()
