"""The twin's engine: the scheduler and the cost model driven by a clock.

One step loop (`run_step_loop`) serves both uses:
- wall-clock (`Engine`, what `topo twin serve` runs): the clock really sleeps each step's modeled time,
  minus the real time already spent in the step (awaiting the peers' step hook), so real coordination
  overhead is not counted twice;
- virtual time (twin/predict.py): the clock only moves a number forward, so a whole sweep takes
  milliseconds — and agrees with the wall-clock engine by construction, since it is the same loop.
  Given a run sink, the virtual loop takes a stretch of pure-decode steps in one go (`DecodeRun`): their
  times come from the cost model vectorized over the steps, the scheduler applies them at once, and the
  clock may cut the stretch short when a request arrives in the middle (twin/openloop.py). The steps and
  their times are bit for bit those of the step-by-step loop.

Requests pass a modeled API frontend first: it handles one request at a time (`frontend_ms_per_request`),
and an idle engine waits `engine_pickup_ms` after the first arrival before its first step — the engine
core's own reaction time, which decides how many of a burst of requests the first step sees.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from common.errors import ConfigError, EngineRequestError
from twin.costmodel import CostModel, SeqWork, StepCost
from twin.profiles import TRANSPORTS, HardwareProfile, ModelCard, Transport, load_card, load_hardware
from twin.scheduler import BLOCK_SIZE, DecodeRunTokens, EmittedToken, Scheduler, Sequence, StepPlan, blocks_for

Executor = Literal["uni", "mp", "ray"]

# vLLM's buckets for vllm:time_to_first_token_seconds (upper bounds, seconds).
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0, 160.0, 640.0, 2560.0,
)


@dataclass(frozen=True)
class EngineConfig:
    """Everything the performance model needs; built from vLLM-style flags."""

    hardware: HardwareProfile
    card: ModelCard
    tensor_parallel: int = 1
    nnodes: int = 1
    executor: Executor = "uni"
    max_model_len: int | None = None
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.70
    weight_bytes_per_param: float | None = None  # what-if: fp8=1, nvfp4~0.56, bf16=2
    kv_cache_bytes_per_element: float | None = None  # fp8 kv = 1 (the default)
    link: Transport = "roce2"  # how the ranks of a TP>1 engine talk (twin.profiles.transport_from_env)
    noise_cv: float | None = None  # per-step jitter (HardwareProfile.noise_cv); None: the profile's
    noise_seed: int = 0  # seeds the jitter: the same seed replays the same steps

    def __post_init__(self) -> None:
        problems = []
        if self.tensor_parallel < 1:
            problems.append(f"tensor_parallel must be >= 1 (got {self.tensor_parallel})")
        if self.nnodes < 1:
            problems.append(f"nnodes must be >= 1 (got {self.nnodes})")
        if self.tensor_parallel == 1 and self.executor not in ("uni", "mp", "ray"):
            problems.append(f"unknown executor {self.executor!r}")
        if self.tensor_parallel > 1 and self.executor == "uni":
            problems.append("tensor_parallel > 1 needs the mp or ray executor (--distributed-executor-backend)")
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append(f"gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            problems.append("max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.link not in TRANSPORTS:
            problems.append(f"unknown link {self.link!r} (one of {', '.join(TRANSPORTS)})")
        if self.max_model_len is not None and self.max_model_len < 1:
            problems.append(f"max_model_len must be >= 1 (got {self.max_model_len})")
        if self.noise_cv is not None and not 0 <= self.noise_cv <= 2:
            problems.append(f"noise_cv must be between 0 and 2 (got {self.noise_cv})")
        if problems:
            raise ConfigError("engine config: " + "; ".join(problems))

    @classmethod
    def from_names(cls, hardware: str | Path, card: str | Path, **kw: object) -> EngineConfig:
        """`EngineConfig.from_names("gb10", "gemma4-26b", tensor_parallel=2, executor="mp")`."""
        return cls(hardware=load_hardware(hardware), card=load_card(card), **kw)  # type: ignore[arg-type]

    @property
    def effective_max_model_len(self) -> int:
        return self.max_model_len or self.card.default_max_model_len

    @property
    def effective_noise_cv(self) -> float:
        return self.hardware.noise_cv if self.noise_cv is None else self.noise_cv

    def cost_model(self) -> CostModel:
        return CostModel(
            self.hardware,
            self.card,
            tensor_parallel=self.tensor_parallel,
            executor=self.executor,
            link=self.link,
            weight_bytes_per_param=self.weight_bytes_per_param,
            kv_cache_bytes_per_element=self.kv_cache_bytes_per_element,
        )

    def with_(self, **changes: object) -> EngineConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_tokens: int
    max_tokens: int  # the twin generates exactly max_tokens tokens
    # Engine-clock time the request reached the server, before the twin parsed and tokenized it (None:
    # when generate() is called). The modeled frontend starts from it, so the twin's own parsing time is
    # absorbed into the modeled frontend instead of being added to it.
    arrival: float | None = None


@dataclass(frozen=True)
class TokenEvent:
    index: int  # 0-based index of the generated token
    time: float  # engine clock time at which the token was produced
    finished: bool


@dataclass(frozen=True)
class StepDescription:
    """What one engine step did; sent to peer ranks in multi-node mode."""

    step: int
    prefill_tokens: int
    decode_tokens: int
    num_running: int
    modeled_seconds: float
    # per rank, inside modeled_seconds: what the power model (twin/power.py) turns into watts on every node
    memory_seconds: float = 0.0
    compute_seconds: float = 0.0


class StepHook(Protocol):
    async def __call__(self, step: StepDescription) -> None: ...


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int  # in the scheduler's queue or still in the modeled frontend
    kv_cache_usage: float  # 0..1
    kv_capacity_tokens: int
    prompt_tokens_total: int
    generation_tokens_total: int
    preemptions_total: int
    steps_total: int
    ttft_seconds: tuple[float, ...]  # every request's time to first token (engine side), in order

    def ttft_histogram(self, buckets: tuple[float, ...] = TTFT_BUCKETS) -> tuple[list[int], float, int]:
        """Cumulative bucket counts (Prometheus `le` semantics, +Inf last), sum and count."""
        counts = [sum(1 for v in self.ttft_seconds if v <= bound) for bound in buckets]
        counts.append(len(self.ttft_seconds))
        return counts, float(sum(self.ttft_seconds)), len(self.ttft_seconds)


# ---------------------------------------------------------------------------------------------- clocks


class Clock(Protocol):
    real: bool  # True when sleeping takes real time (then late-arriving requests are worth waiting for)

    def now(self) -> float: ...
    async def sleep_until(self, deadline: float) -> None: ...


class WallClock:
    """Real time (perf_counter seconds); sleeping really sleeps."""

    real = True

    def now(self) -> float:
        return time.perf_counter()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


class VirtualClock:
    """Simulated time: sleeping moves the clock to the deadline and returns at once."""

    real = False

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline > self._now:
            self._now = deadline

    def advance_to(self, moment: float) -> None:
        self._now = max(self._now, moment)

    async def sleep_through(self, run: DecodeRun) -> int:
        """Sleep to the end of a decode run; returns how many of its steps were taken (here: all)."""
        self._now = max(self._now, run.deadlines[-1])
        return len(run.deadlines)


# ------------------------------------------------------------------------------------------- the core


@dataclass(order=True)
class _Pending:
    ready: float
    order: int
    seq: Sequence = field(compare=False)


class StepJitter:
    """Seeded per-step noise: a lognormal factor with mean 1 and coefficient of variation `cv`."""

    def __init__(self, cv: float, seed: int) -> None:
        self.sigma = math.sqrt(math.log1p(cv * cv))
        self.rng = random.Random(seed)

    def factor(self) -> float:
        return math.exp(self.rng.gauss(-self.sigma * self.sigma / 2, self.sigma))


class EngineCore:
    """Scheduler + cost model + the modeled frontend, with no clock of its own (times are passed in)."""

    def __init__(self, config: EngineConfig, *, noise_stream: int = 0) -> None:
        """`noise_stream` tells apart engines that share a config (replicas behind a router)."""
        self.config = config
        self.cost = config.cost_model()
        cv = config.effective_noise_cv
        self.jitter = StepJitter(cv, config.noise_seed * 1_000_003 + noise_stream) if cv > 0 else None
        hw = config.hardware
        self.frontend_seconds = hw.frontend_ms_per_request / 1000
        self.pickup_seconds = hw.engine_pickup_ms / 1000
        capacity = self.cost.kv_capacity_blocks(config.gpu_memory_utilization, BLOCK_SIZE)
        max_len = config.effective_max_model_len
        if capacity < blocks_for(max_len):
            raise ConfigError(
                f"the KV cache of {config.card.name} on {hw.name} (tp={config.tensor_parallel}, "
                f"gpu_memory_utilization={config.gpu_memory_utilization}) holds {capacity * BLOCK_SIZE} "
                f"tokens, fewer than max_model_len={max_len}; lower --max-model-len or raise the utilization"
            )
        self.scheduler = Scheduler(
            kv_capacity_blocks=capacity,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_num_seqs=config.max_num_seqs,
        )
        self._pending: list[_Pending] = []
        self._order = itertools.count()
        self._frontend_free_at = float("-inf")
        self.step_index = 0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.scheduler.capacity * BLOCK_SIZE

    def validate(self, request: GenerationRequest) -> None:
        if request.prompt_tokens < 1 or request.max_tokens < 1:
            raise EngineRequestError(
                f"request {request.request_id}: prompt_tokens and max_tokens must be >= 1 "
                f"(got {request.prompt_tokens} and {request.max_tokens})"
            )
        total = request.prompt_tokens + request.max_tokens
        limit = self.config.effective_max_model_len
        if total > limit:
            raise EngineRequestError(
                f"request {request.request_id}: {request.prompt_tokens} prompt tokens + {request.max_tokens} "
                f"max_tokens = {total} exceeds the model's maximum context length {limit}"
            )

    def submit(self, request: GenerationRequest, now: float) -> float:
        """Accept a request at `now`; returns when the modeled frontend hands it to the scheduler."""
        self.validate(request)
        arrival = now if request.arrival is None else min(request.arrival, now)
        if request.request_id in self.scheduler.by_id or any(
            p.seq.request_id == request.request_id for p in self._pending
        ):
            raise EngineRequestError(f"request id {request.request_id!r} is already in the engine")
        ready = max(arrival, self._frontend_free_at) + self.frontend_seconds
        self._frontend_free_at = ready
        seq = Sequence(request.request_id, request.prompt_tokens, request.max_tokens, arrival=arrival)
        heapq.heappush(self._pending, _Pending(ready, next(self._order), seq))
        return ready

    def admit_ready(self, now: float) -> None:
        while self._pending and self._pending[0].ready <= now:
            self.scheduler.add(heapq.heappop(self._pending).seq)

    def next_ready_time(self) -> float | None:
        return self._pending[0].ready if self._pending else None

    def first_step_grace(self, limit: float) -> float:
        """How long a wall-clock engine may wait, in real time, before planning the first step after idling.

        The step's modeled start does not move: requests the model says were ready by then, but that the
        twin's own HTTP/tokenizer work handed over a little late, still join it. Capped at half the cost of
        the smallest step it could be (the first request's prefill chunk), so the wait stays inside the
        step's modeled time and costs nothing.
        """
        if not self._pending:
            return 0.0
        first = self._pending[0].seq
        chunk = min(first.prompt_tokens, self.config.max_num_batched_tokens)
        return min(limit, 0.5 * self.cost.step([SeqWork(chunk, 0)]).seconds)

    def abort(self, request_id: str) -> None:
        for index, pending in enumerate(self._pending):
            if pending.seq.request_id == request_id:
                self._pending.pop(index)
                heapq.heapify(self._pending)
                return
        self.scheduler.abort(request_id)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    @property
    def idle(self) -> bool:
        return not self.scheduler.has_work and not self._pending

    def plan_step(self) -> tuple[StepPlan, StepCost, StepDescription]:
        plan = self.scheduler.schedule()
        cost = self.cost.step(plan.works())
        if self.jitter is not None and cost.seconds > 0:
            cost = replace(cost, seconds=cost.seconds * self.jitter.factor())
        self.step_index += 1
        description = StepDescription(
            step=self.step_index,
            prefill_tokens=plan.prefill_tokens,
            decode_tokens=plan.decode_tokens,
            num_running=len(self.scheduler.running),
            modeled_seconds=cost.seconds,
            memory_seconds=cost.memory_seconds,
            compute_seconds=cost.compute_seconds,
        )
        return plan, cost, description

    def complete(self, plan: StepPlan, now: float) -> list[EmittedToken]:
        return self.scheduler.complete(plan, now)

    def plan_decode_run(self, start: float) -> DecodeRun | None:
        """The pure-decode steps that follow from `start` (scheduler.decode_run_steps), up to the first
        that starts when a pending request is ready; None when fewer than two."""
        steps = self.scheduler.decode_run_steps()
        if steps < 2:
            return None
        seconds = self.cost.decode_run_seconds([seq.num_computed for seq in self.scheduler.running], steps)
        jitter = self.jitter
        jitter_state = jitter.rng.getstate() if jitter is not None else None
        ready = self.next_ready_time()
        deadlines: list[float] = []
        moment = start
        for value in seconds:
            if deadlines and ready is not None and moment >= ready:
                break  # this step would admit the pending request
            if jitter is not None:  # one factor per step taken, in step order, as plan_step draws them
                value = value * jitter.factor()
            moment = moment + value
            deadlines.append(moment)
        if len(deadlines) < 2:
            if jitter is not None:
                jitter.rng.setstate(jitter_state)
            return None
        return DecodeRun(start, tuple(deadlines), jitter_state)

    def complete_decode_run(self, run: DecodeRun, steps: int) -> DecodeRunTokens:
        """Apply the first `steps` steps of `run` (a clock may have cut it short)."""
        if self.jitter is not None and run.jitter_state is not None and steps < len(run.deadlines):
            self.jitter.rng.setstate(run.jitter_state)  # draw only the factors of the steps taken
            for _ in range(steps):
                self.jitter.factor()
        self.step_index += steps
        return self.scheduler.complete_decode_run(run.deadlines[:steps])

    def stats(self) -> EngineStats:
        sched = self.scheduler
        counters = sched.counters
        return EngineStats(
            num_running=len(sched.running),
            num_waiting=len(sched.waiting) + len(self._pending),
            kv_cache_usage=sched.used_blocks / sched.capacity if sched.capacity else 0.0,
            kv_capacity_tokens=self.kv_capacity_tokens,
            prompt_tokens_total=counters.prompt_tokens_total,
            generation_tokens_total=counters.generation_tokens_total,
            preemptions_total=counters.preemptions_total,
            steps_total=counters.steps_total,
            ttft_seconds=tuple(counters.ttft_seconds),
        )


@dataclass(frozen=True)
class DecodeRun:
    """Consecutive pure-decode steps planned at once: the first starts at `start`, step j ends at deadlines[j]."""

    start: float
    deadlines: tuple[float, ...]
    jitter_state: object = None  # the jitter's generator before the run's factors were drawn

    def steps_before(self, ready: float) -> int:
        """How many of the steps are planned before a request ready at `ready` (>= the run's start) can
        join one: those that start earlier, and always the first (already planned)."""
        return 1 + bisect.bisect_left(self.deadlines, ready, 0, len(self.deadlines) - 1)


class TokenSink(Protocol):
    def __call__(self, tokens: list[EmittedToken]) -> None: ...


class RunSink(Protocol):
    def __call__(self, tokens: DecodeRunTokens) -> None: ...


# A busy wall-clock engine keeps its modeled schedule: when a sleep wakes late (the twin's own CPU was
# busy, e.g. streaming to 64 clients on 2 cores), the next step starts at the previous step's modeled end,
# not at "now", so the lateness does not pile up — a GPU would not have waited for the twin's Python. Beyond
# this much lateness (a stall), the schedule is reset to now instead of bursting to catch up.
MAX_CATCH_UP_SECONDS = 1.0
# See EngineCore.first_step_grace: the twin's tokenizing a burst of long prompts takes tens of ms on 2 cores.
FIRST_STEP_GRACE_SECONDS = 0.05


async def run_step_loop(
    core: EngineCore,
    clock: Clock,
    on_tokens: TokenSink,
    *,
    step_hook: StepHook | None = None,
    wait_for_work: asyncio.Event | None = None,
    stop_when_idle: bool = False,
    on_run: RunSink | None = None,
) -> None:
    """The engine's step loop, for any clock.

    Idle: wait for a request (wall clock: `wait_for_work`; virtual: return when `stop_when_idle`). The
    first step after idling starts `pickup` after the first request reaches the scheduler. Each step:
    plan, tell the peers (step hook), sleep until start + modeled time, then emit its tokens stamped with
    that modeled end. Time spent in the hook counts inside the step; only if the hook outlasts the modeled
    step does the step end later (real coordination that was slower than the model).

    With `on_run` (a virtual clock and no hook only), stretches of pure-decode steps are taken as one
    `DecodeRun` and their tokens go to `on_run` at once; every other step as above.
    """
    if on_run is not None and (step_hook is not None or not isinstance(clock, VirtualClock)):
        raise ValueError("decode runs are for a virtual clock without a step hook")
    anchor: float | None = None  # modeled start of the next step while the engine is busy
    while True:
        now = clock.now()
        if anchor is not None and now - anchor > MAX_CATCH_UP_SECONDS:
            anchor = None  # a stall: restart the schedule from now
        if anchor is None and not core.has_work:
            # Idle: the first step starts `pickup` after the first request is ready (in the modeled past,
            # when the server handed it over late), and takes whatever is ready by then.
            ready = core.next_ready_time()
            if ready is None:
                if stop_when_idle or wait_for_work is None:
                    return
                wait_for_work.clear()
                await wait_for_work.wait()
                continue
            anchor = max(ready + core.pickup_seconds, now - MAX_CATCH_UP_SECONDS / 2)
            grace = core.first_step_grace(FIRST_STEP_GRACE_SECONDS) if clock.real else 0.0
            await clock.sleep_until(anchor + grace)
            continue
        moment = now if anchor is None else anchor
        core.admit_ready(moment)
        if not core.has_work:
            anchor = None  # ran dry: idle until the next request is ready
            continue
        started = moment
        if on_run is not None:
            run = core.plan_decode_run(started)
            if run is not None:
                steps = await clock.sleep_through(run)  # type: ignore[attr-defined]
                anchor = run.deadlines[steps - 1]
                on_run(core.complete_decode_run(run, steps))
                continue
        plan, cost, description = core.plan_step()
        if plan.empty:
            # Nothing fits (only possible if every waiting request needs more KV than is free and nothing
            # runs to free it; validation prevents it). Wait for the frontend instead of spinning.
            ready = core.next_ready_time()
            if ready is None:
                raise RuntimeError("twin scheduler stalled: work queued but nothing schedulable")
            anchor = None
            await clock.sleep_until(ready)
            continue
        deadline = started + cost.seconds
        if step_hook is not None:
            await step_hook(description)
            deadline = max(deadline, clock.now())
        await clock.sleep_until(deadline)
        anchor = deadline
        on_tokens(core.complete(plan, deadline))


# -------------------------------------------------------------------------------- the wall-clock engine


class TokenStream:
    """The tokens of one request, as an async iterator; `aclose()` (or leaving the loop early and closing
    it) withdraws the request from the engine, whether or not iteration has started."""

    def __init__(self, engine: Engine, request_id: str, queue: asyncio.Queue[TokenEvent]) -> None:
        self._engine = engine
        self.request_id = request_id
        self._queue = queue
        self._done = False  # finished or closed

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._queue.get()
        except BaseException:
            await self.aclose()  # cancelled while waiting: the client went away
            raise
        if event.finished:
            self._done = True
            self._engine._release(self.request_id, finished=True)
        return event

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._engine._release(self.request_id, finished=False)

    async def __aenter__(self) -> TokenStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Engine:
    """The wall-clock engine `topo twin serve` runs: `await start()`, then `generate()` per request."""

    def __init__(self, config: EngineConfig, *, step_hook: StepHook | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.core = EngineCore(config)
        self.clock: Clock = clock or WallClock()
        self._step_hook = step_hook
        self._queues: dict[str, asyncio.Queue[TokenEvent]] = {}
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="twin-engine-step-loop")

    async def _run(self) -> None:
        await run_step_loop(
            self.core, self.clock, self._deliver, step_hook=self._step_hook, wait_for_work=self._work
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _deliver(self, tokens: list[EmittedToken]) -> None:
        for token in tokens:
            queue = self._queues.get(token.request_id)
            if queue is not None:
                queue.put_nowait(TokenEvent(token.index, token.time, token.finished))

    def generate(self, request: GenerationRequest) -> TokenStream:
        """Submit a request; iterate its tokens. Raises EngineRequestError at once if it cannot be served.

        Closing the stream early (`await stream.aclose()`, also before the first token) takes the request
        out of the batch and frees its KV cache.
        """
        if self._task is None:
            raise RuntimeError("Engine.generate() before Engine.start()")
        if self._task.done():
            exc = self._task.exception() if not self._task.cancelled() else None
            raise RuntimeError("the twin engine's step loop has stopped") from exc
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.core.submit(request, self.clock.now())
        self._queues[request.request_id] = queue
        self._work.set()
        return TokenStream(self, request.request_id, queue)

    def _release(self, request_id: str, finished: bool) -> None:
        self._queues.pop(request_id, None)
        if not finished:
            self.core.abort(request_id)

    def stats(self) -> EngineStats:
        return self.core.stats()


__all__ = [
    "Clock",
    "Engine",
    "EngineConfig",
    "EngineCore",
    "EngineRequestError",
    "EngineStats",
    "GenerationRequest",
    "StepDescription",
    "StepHook",
    "TokenEvent",
    "TTFT_BUCKETS",
    "TokenStream",
    "VirtualClock",
    "WallClock",
    "run_step_loop",
]
