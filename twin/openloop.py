"""Open-loop arrivals through a topology in virtual time: the twin's own step loop, driven by events.

`simulate_open()` plays a schedule of due times (bench/arrivals.py) and per-request lengths through a
`VirtualDeployment`'s engines. Every replica runs the same `run_step_loop` as the wall-clock engine, on an
`EventClock` whose sleeps hand control back to a small discrete-event driver instead of returning at once.
The driver interleaves, in time order: a client freeing a slot (its last byte arrived), a request falling
due, and an engine step ending. A request due while `max_concurrency` requests are in flight waits for
the next free slot, as `vllm bench serve --max-concurrency` does, and that wait is the user's (the record's
`scheduled_at` stays the due time; `batch_start` and `start` are when it was sent). KV pressure and
preemption come from the scheduler itself (twin/scheduler.py), as in the wall-clock twin.

Stretches of pure-decode steps run as one wake-up (twin/engine.py DecodeRun); a request sent to a replica
in the middle of one cuts it at the first step that starts once the request is ready, the step that
admits it when every step wakes on its own. (With a zero frontend time, a request released by another
replica's last token at the very end of a step could join one step earlier than step by step.)
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Coroutine, Generator, Sequence
from typing import Any

from bench.records import RequestRecord
from bench.shapes import RequestSpec
from common.errors import ConfigError
from twin.engine import DecodeRun, GenerationRequest, VirtualClock, run_step_loop
from twin.predict import VirtualDeployment
from twin.scheduler import DecodeRunTokens, EmittedToken


class _Wake:
    """Awaited by a sleeping step loop: yields the deadline to the driver, which resumes it then. Over a
    decode run, the driver may move the deadline earlier to the end of one of the run's steps."""

    __slots__ = ("deadline", "run", "steps")

    def __init__(self, deadline: float, run: DecodeRun | None = None) -> None:
        self.deadline = deadline
        self.run = run
        self.steps = len(run.deadlines) if run is not None else 0

    def __await__(self) -> Generator[float, None, None]:
        yield self.deadline


class EventClock(VirtualClock):
    """Virtual time for one replica; `sleep_until` suspends the step loop until the driver reaches it."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self._run_wake: _Wake | None = None

    async def sleep_until(self, deadline: float) -> None:
        if deadline > self._now:
            await _Wake(deadline)
            self._now = deadline

    async def sleep_through(self, run: DecodeRun) -> int:
        wake = self._run_wake = _Wake(run.deadlines[-1], run)
        await wake
        self._run_wake = None
        self._now = max(self._now, wake.deadline)
        return wake.steps

    def cut(self, ready: float) -> float | None:
        """A request submitted during a decode run and ready at `ready`: keep only the run's steps planned
        before it can join one, and return the new wake-up time (None: not in a run)."""
        wake = self._run_wake
        if wake is None or wake.run is None:
            return None
        wake.steps = min(wake.steps, wake.run.steps_before(ready))
        wake.deadline = wake.run.deadlines[wake.steps - 1]
        return wake.deadline


def simulate_open(
    deployment: VirtualDeployment,
    specs: Sequence[RequestSpec],
    schedule: Sequence[float],
    *,
    max_concurrency: int | None = None,
    run: int = 0,
    origin: float | None = None,
) -> list[RequestRecord]:
    """Requests i = 0..n-1 due at `origin + schedule[i]` (default: the deployment's current time)."""
    if len(specs) != len(schedule):
        raise ConfigError(f"{len(specs)} request shapes for {len(schedule)} arrivals")
    if max_concurrency is not None and max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be >= 1 (got {max_concurrency})")
    start_at = deployment.now if origin is None else origin
    due = [start_at + t for t in schedule]
    n = len(specs)
    replicas = len(deployment.cores)
    clocks = [EventClock(start_at) for _ in range(replicas)]
    loops: list[Coroutine[Any, Any, None] | None] = [None] * replicas
    wakes = [math.inf] * replicas
    sent = [math.nan] * n
    chosen = [0] * n
    token_times: list[list[float]] = [[] for _ in range(n)]
    releases: list[tuple[float, int]] = []  # (client saw the last byte, request index)
    index_of: dict[str, int] = {}
    # the engine's and the router's response latency; the router's per-chunk relay queue (RouterProfile,
    # 0 in the shipped profiles) is modeled for closed batches only
    latency = deployment.engine_response + deployment.router_response
    router = deployment.router
    topology = deployment.topology

    def collect(tokens: list[EmittedToken]) -> None:
        for token in tokens:
            i = index_of[token.request_id]
            token_times[i].append(token.time + latency)
            if token.finished:
                heapq.heappush(releases, (token.time + latency, i))

    def collect_run(tokens: DecodeRunTokens) -> None:
        times = [time + latency for time in tokens.times]
        for request_id, done in zip(tokens.request_ids, tokens.finished):
            i = index_of[request_id]
            token_times[i].extend(times)
            if done:
                heapq.heappush(releases, (times[-1], i))

    def resume(replica: int) -> None:
        loop = loops[replica]
        assert loop is not None
        try:
            wakes[replica] = loop.send(None)
        except StopIteration:
            loops[replica], wakes[replica] = None, math.inf

    def send(i: int, now: float) -> None:
        replica = deployment.route(1)[0]  # the topology's router picks, one request at a time
        chosen[i] = replica
        sent[i] = now
        deployment._ids += 1
        request_id = f"req-{deployment._ids}"
        index_of[request_id] = i
        # one request reaches the router at a time: a burst of one
        handover = now + (router.handover_s(1, 1) if router else 0.0)
        spec = specs[i]
        ready = deployment.cores[replica].submit(GenerationRequest(request_id, spec.prompt_tokens, spec.output),
                                                 handover)
        if loops[replica] is None:
            clocks[replica].advance_to(now)
            loops[replica] = run_step_loop(deployment.cores[replica], clocks[replica], collect, stop_when_idle=True,
                                           on_run=collect_run if deployment.decode_runs else None)
            resume(replica)
        else:
            cut = clocks[replica].cut(ready)  # a decode run in progress stops before the step it can join
            if cut is not None:
                wakes[replica] = cut

    waiting: deque[int] = deque()
    in_flight = 0
    next_due = 0
    while True:
        release_at = releases[0][0] if releases else math.inf
        due_at = due[next_due] if next_due < n else math.inf
        wake_at = min(wakes) if replicas else math.inf
        now = min(release_at, due_at, wake_at)
        if math.isinf(now):
            break
        if release_at == now:  # a slot frees before anything else at the same moment
            heapq.heappop(releases)
            in_flight -= 1
            if waiting:
                send(waiting.popleft(), now)
                in_flight += 1
        elif due_at == now:
            next_due += 1
            if max_concurrency is None or in_flight < max_concurrency:
                send(next_due - 1, now)
                in_flight += 1
            else:
                waiting.append(next_due - 1)
        else:
            resume(wakes.index(now))
    if waiting or any(not times for times in token_times):
        raise RuntimeError("open-loop simulation ended with requests that never finished")

    records = []
    for i, spec in enumerate(specs):
        times = token_times[i]
        records.append(RequestRecord(
            topology=topology.name, concurrency=max_concurrency or 0, run=run, index=i,
            batch_start=sent[i], start=sent[i], prompt_tokens_sent=spec.prompt_tokens,
            first_response=times[0], first_token=times[0], token_times=times, end=times[-1],
            prompt_tokens=spec.prompt_tokens, completion_tokens=len(times), status_code=200,
            served_by=f"replica{chosen[i]}" if topology.routed else None, scheduled_at=due[i],
        ))
    deployment.now = max([deployment.now, *(r.end for r in records if r.end is not None)])
    for clock, core in zip(clocks, deployment.clocks):
        core.advance_to(clock.now())
    return records
