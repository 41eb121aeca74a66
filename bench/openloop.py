"""Open-loop load against one endpoint: requests sent on a schedule of due times (METRICS.md "Open loop").

Everything that costs CPU happens before the clock starts: prompts of exact length are cut, bodies
serialized, a pool of connections opened (one per slot; as many as the cap, or as requests are expected
in flight, and more opened on demand). Then one loop sleeps until each due time and starts that request:
it takes a slot under the cap (a request due while `max_concurrency` are in flight waits for the first
to finish, as `vllm bench serve --max-concurrency` does), and its bytes go on the wire.

Per request the record keeps `scheduled_at` (the due time), `batch_start` (when the client was free to
send it: due, and a slot free) and `start` (on the wire). So `start - scheduled_at` is the user's queueing
(bench/metrics.py, open loop), and `send_lag = start - batch_start` is the client's own lateness, which flags a
client-bound run by the same rule as a closed batch (bench/records.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence

from bench.client import BenchClient, chat_payload
from bench.prompts import Prompt
from bench.records import RequestRecord
from bench.workload import DEFAULT_WORKLOAD
from common.errors import ConfigError, EndpointError

# Time between the end of the preparation and the first due time: the loop must be idle when it starts.
LEAD_S = 0.05
# Connections opened before the run when there is no cap: at most this many (more are opened on demand).
PREWARM_LIMIT = 64


async def run_open(
    client: BenchClient,
    prompts: Sequence[Prompt],
    outputs: Sequence[int],
    schedule: Sequence[float],
    *,
    max_concurrency: int | None = None,
    topology: str = "",
    workload: str = DEFAULT_WORKLOAD,
    run: int = 0,
    latency: float = 0.0,
    prewarm: int | None = None,
    on_request: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Send request i at `schedule[i]` seconds after the start (under the cap); wait for all of them."""
    if client.model is None:
        raise EndpointError("run_open before preflight(): no model chosen")
    if not (len(prompts) == len(outputs) == len(schedule)):
        raise ConfigError(f"{len(prompts)} prompts, {len(outputs)} output lengths, {len(schedule)} due times")
    if max_concurrency is not None and max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be >= 1 (got {max_concurrency})")
    n = len(prompts)
    pool_size = min(n, max_concurrency or min(prewarm or PREWARM_LIMIT, PREWARM_LIMIT))
    await client.warm_connections(pool_size)
    warmed = time.perf_counter()
    client.mark_fresh(pool_size, warmed)
    free = list(range(pool_size))[::-1]  # slot indexes; pop() takes the lowest first
    bodies = [json.dumps(chat_payload(client.model, prompt, out)).encode() for prompt, out in zip(prompts, outputs)]
    cap = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    concurrency = max_concurrency or 0
    results: list[tuple[RequestRecord, list]] = []

    async def one(i: int, due: float) -> None:
        eligible = due  # the client could send it when due ...
        if cap is not None:
            if cap.locked():
                await cap.acquire()
                eligible = max(due, time.perf_counter())  # ... or when a slot under the cap freed
            else:
                await cap.acquire()
        try:
            # a free connection of the pool, or one more (its handshake shows as send lag)
            slot_index = free.pop() if free else client.slot_count
            record, chunks = await client.send_on_slot(
                slot_index, bodies[i], prompts[i], outputs[i], topology=topology, workload=workload,
                concurrency=concurrency, run=run, request_index=i, eligible=eligible, latency=latency)
            record.scheduled_at = due
            results.append((record, chunks))
            free.append(slot_index)
            if on_request is not None:
                on_request(record)
        finally:
            if cap is not None:
                cap.release()

    origin = time.perf_counter() + LEAD_S
    tasks = []
    for i, offset in enumerate(schedule):
        due = origin + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return client.finish_records(sorted(results, key=lambda pair: pair[0].index))

