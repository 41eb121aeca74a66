"""Predictions: the twin's scheduler and cost model in virtual time, in the shape of a measurement.

`simulate_batch()` plays one closed batch of c requests (llama-benchy's concurrency mode) through a
topology and returns `bench.records.RequestRecord`s with virtual timestamps, so the same metric code turns
predictions and measurements into cells. `predict_cells()` runs a warm-up batch plus `runs` batches per
concurrency and returns rows with the columns of cells.parquet.

A topology (topology/registry.py) is a number of independent engine replicas (each TP=k over k nodes)
behind a router when there is more than one. The router picks a replica at random per request (LiteLLM's
simple-shuffle, the only strategy the registry knows yet), hands a
burst on in a clump (twin.profiles.RouterProfile: one asyncio process accepts every request of the burst
before it dispatches any), relays every chunk back through its one event loop (chunks of all replicas queue,
`relay_per_chunk_ms` each) and adds its latency to every chunk. Replicas share nothing but the proxy, so
each is simulated on its own clock and the relay is applied to their chunks afterwards; a batch ends when
the slowest replica is done, and the next batch starts then.
"""

from __future__ import annotations

import random
from typing import Any, Coroutine, Iterable, Sequence

from bench.metrics import run_metrics
from bench.records import RequestRecord
from common.errors import ConfigError, PlanError
from topology.registry import Topology, compared_on_nodes, parse_topology
from twin.engine import EngineConfig, EngineCore, GenerationRequest, VirtualClock, run_step_loop
from twin.scheduler import DecodeRunTokens, EmittedToken

def engine_config(topology: Topology, base: EngineConfig) -> EngineConfig:
    """One replica's engine: its tensor-parallel size, over as many nodes, with the topology's executor."""
    return base.with_(tensor_parallel=topology.tensor_parallel, nnodes=topology.tensor_parallel,
                      executor=topology.executor)


def topologies_for_nodes(nodes: int) -> list[str]:
    """The layouts worth comparing on `nodes` nodes (solo is always the baseline), from the registry."""
    try:
        return compared_on_nodes(nodes)
    except PlanError as error:
        raise ConfigError(str(error)) from None


def topology_model(topology: str | Topology) -> Topology:
    if isinstance(topology, Topology):
        return topology
    try:
        return parse_topology(topology)
    except PlanError as error:
        raise ConfigError(str(error)) from None


def _drive(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never really suspends (virtual clock, no step hook) to completion."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the virtual step loop suspended; it must not await real I/O")


class VirtualDeployment:
    """A topology's engines on virtual clocks; plays closed batches one after the other."""

    def __init__(self, topology: str | Topology, config: EngineConfig, *, seed: int = 0,
                 decode_runs: bool = True) -> None:
        """`decode_runs=False` plays every step on its own: the reference the decode runs are tested against."""
        self.topology = topology_model(topology)
        self.decode_runs = decode_runs
        self.config = engine_config(self.topology, config)
        self.cores = [EngineCore(self.config, noise_stream=seed * 17 + replica)
                      for replica in range(self.topology.replicas)]
        self.clocks = [VirtualClock() for _ in self.cores]
        self.rng = random.Random(seed)
        hw = self.config.hardware
        self.router = hw.router if self.topology.routed else None
        self.engine_response = hw.response_latency_ms / 1000
        self.router_response = self.router.response_latency_ms / 1000 if self.router else 0.0
        self.now = 0.0
        self._ids = 0

    def route(self, concurrency: int) -> list[int]:
        """The replica each request of a burst goes to, as the topology's router strategy picks it."""
        if not self.topology.routed:
            return [0] * concurrency
        if self.topology.router == "simple-shuffle":  # uniform at random, independently per request
            return [self.rng.randrange(len(self.cores)) for _ in range(concurrency)]
        raise ConfigError(f"the twin has no model of router strategy {self.topology.router!r}")

    def run_batch(
        self,
        concurrency: int,
        prompt_tokens: int | Sequence[int],
        max_tokens: int | Sequence[int],
        *,
        run: int = 0,
        assignment: Sequence[int] | None = None,
        sends: Sequence[float] | None = None,
    ) -> list[RequestRecord]:
        """One closed batch. `assignment` (replica per request) replays a measured router split instead of
        drawing one; `sends` (seconds after the batch's start, per request) replays when a measured client
        really sent each request (llama-benchy's "at once" is a few ms apart on a busy host, enough to decide
        whether the second request makes the first step). Lengths are one for all, or one per request."""
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1 (got {concurrency})")
        prompts = [prompt_tokens] * concurrency if isinstance(prompt_tokens, int) else list(prompt_tokens)
        outputs = [max_tokens] * concurrency if isinstance(max_tokens, int) else list(max_tokens)
        if len(prompts) != concurrency or len(outputs) != concurrency:
            raise ConfigError(f"a batch of {concurrency} needs {concurrency} prompt and output lengths")
        batch_start = self.now
        if assignment is None:
            assignment = self.route(concurrency)
        elif len(assignment) != concurrency or not all(0 <= r < len(self.cores) for r in assignment):
            raise ConfigError(
                f"assignment must name one of {len(self.cores)} replicas for each of {concurrency} requests"
            )
        if sends is None:
            sends = [0.0] * concurrency
        elif len(sends) != concurrency or min(sends) < 0:
            raise ConfigError(f"sends must give a send time >= 0 for each of {concurrency} requests")
        # Through a router the burst reaches the engines in a clump (RouterProfile), in the order sent.
        handovers = sorted(
            (batch_start + sends[index] + (self.router.handover_s(concurrency, index + 1) if self.router else 0.0),
             index, replica)
            for index, replica in enumerate(assignment)
        )
        ids = [""] * concurrency
        for handover, index, replica in handovers:
            self._ids += 1
            request_id = f"req-{self._ids}"
            ids[index] = request_id
            self.clocks[replica].advance_to(batch_start)
            self.cores[replica].submit(GenerationRequest(request_id, prompts[index], outputs[index]), handover)
        times: dict[str, list[float]] = {request_id: [] for request_id in ids}

        def collect(tokens: list[EmittedToken]) -> None:
            for token in tokens:
                times[token.request_id].append(token.time + self.engine_response)

        def collect_run(tokens: DecodeRunTokens) -> None:
            shifted = [time + self.engine_response for time in tokens.times]
            for request_id in tokens.request_ids:
                times[request_id].extend(shifted)

        for core, clock in zip(self.cores, self.clocks):
            _drive(run_step_loop(core, clock, collect, stop_when_idle=True,
                                 on_run=collect_run if self.decode_runs else None))
        if self.router is not None and self.router.relay_per_chunk_ms > 0:
            # every replica's chunks pass the one proxy: relay them in arrival order across replicas
            flat = [(request_id, i) for request_id in ids for i in range(len(times[request_id]))]
            left = self.router.relayed([times[request_id][i] for request_id, i in flat])
            for (request_id, i), leave in zip(flat, left):
                times[request_id][i] = leave
        for request_id in ids:
            times[request_id] = [t + self.router_response for t in times[request_id]]
        records = []
        topology = self.topology.name
        for index, (request_id, replica) in enumerate(zip(ids, assignment)):
            token_times = times[request_id]
            records.append(
                RequestRecord(
                    topology=topology,
                    concurrency=concurrency,
                    run=run,
                    index=index,
                    batch_start=batch_start,
                    start=batch_start + sends[index],
                    prompt_tokens_sent=prompts[index],
                    first_response=token_times[0],
                    first_token=token_times[0],
                    token_times=token_times,
                    end=token_times[-1],
                    prompt_tokens=prompts[index],
                    completion_tokens=len(token_times),
                    status_code=200,
                    served_by=f"replica{replica}" if self.topology.routed else None,
                )
            )
        self.now = max(r.end for r in records if r.end is not None)
        return records


def simulate_batch(
    topology: str | Topology,
    config: EngineConfig,
    concurrency: int,
    prompt_tokens: int,
    max_tokens: int,
    seed: int = 0,
    assignment: Sequence[int] | None = None,
) -> list[RequestRecord]:
    """One closed batch of `concurrency` requests on fresh engines, virtual timestamps from 0."""
    return VirtualDeployment(topology, config, seed=seed).run_batch(
        concurrency, prompt_tokens, max_tokens, assignment=assignment
    )


# ------------------------------------------------------------------------------------------- metrics


def cell_row(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """A cells.parquet row (CELL_COLUMNS) for one run's records: bench's own metric code, so predictions
    and measurements become cells the same way."""
    return run_metrics(records)


def predict_cells(
    topology: str | Topology,
    config: EngineConfig,
    concurrencies: Iterable[int] = (1, 2, 4, 8, 16, 32, 64),
    *,
    prompt_tokens: int = 1024,
    max_tokens: int = 128,
    runs: int = 3,
    seed: int = 0,
    warmup: bool = True,
) -> list[dict[str, Any]]:
    """`runs` measured batches (after one discarded warm-up) per concurrency, as cells.parquet rows."""
    if runs < 1:
        raise ConfigError(f"runs must be >= 1 (got {runs})")
    rows: list[dict[str, Any]] = []
    for concurrency in concurrencies:
        deployment = VirtualDeployment(topology, config, seed=seed * 1_000_003 + concurrency)
        if warmup:
            deployment.run_batch(concurrency, prompt_tokens, max_tokens, run=-1)
        for run in range(runs):
            rows.append(cell_row(deployment.run_batch(concurrency, prompt_tokens, max_tokens, run=run)))
    return rows


def predict_sweep(
    topologies: Iterable[str | Topology],
    config: EngineConfig,
    concurrencies: Iterable[int] = (1, 2, 4, 8, 16, 32, 64),
    **kw: Any,
) -> list[dict[str, Any]]:
    """predict_cells for several topologies, rows concatenated (feed to pandas.DataFrame)."""
    levels = list(concurrencies)
    rows: list[dict[str, Any]] = []
    for topology in topologies:
        rows.extend(predict_cells(topology, config, levels, **kw))
    return rows
