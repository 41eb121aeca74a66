"""The twin's ranks really talk over the network: rank 0 tells every peer about every engine step.

vLLM's multi-node engines are only as healthy as their slowest, least reliable rank; the twin reproduces
that part for real, while the cost of the all-reduces is modeled in twin/costmodel.py. Two transports,
matching vLLM's two executors:

- mp (`--nnodes N --node-rank R --headless --master-addr A --master-port P`): rank 0 listens on A:P and
  does not report ready until all N-1 node ranks joined; every step is sent to every peer as one JSON
  line and rank 0 waits for each ack. A peer that closes its connection, misses an ack or a heartbeat is
  lost, and rank 0 turns unhealthy for good (a real TP group cannot continue without a rank). A headless
  rank exits when rank 0 goes away.
- ray (`--distributed-executor-backend ray -tp K`): rank 0 is the Ray driver, connects to the running
  cluster and starts one actor per other rank, each pinned to a different node than its own
  (NodeAffinitySchedulingStrategy, soft=False); every step is `await actor.step.remote(...)`. An actor
  that dies makes rank 0 unhealthy.

Interfaces:

    class RankGroup(Protocol)                 rank 0's view of its peers (the engine's StepHook + health)
      await start(); await step(desc); await stop(); healthy; failure; on_lost(cb); describe()
    LocalRanks()                              one rank, nothing to coordinate
    TcpRankServer(host, port, nnodes, ...)    mp rank 0
    RayRankGroup(tensor_parallel, ...)        ray rank 0
    await run_headless_rank(master_addr, master_port, node_rank, nnodes, ...) -> HeadlessSummary

Wire format (mp): newline-delimited JSON objects, one key naming the message:
    peer -> 0: {"hello": {"node_rank", "nnodes", "pid", "host"}}     0 -> peer: {"welcome": {...}} | {"reject": why}
    0 -> peer: {"step": {StepDescription fields}}                    peer -> 0: {"ack": step}
    0 -> peer: {"ping": n}                                           peer -> 0: {"pong": n}
    0 -> peer: {"bye": why}                                          (rank 0 shuts down; the peer exits)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Callable, Protocol

from common.errors import BringUpError, ConfigError, ConnectError

STEP_FIELDS = ("step", "prefill_tokens", "decode_tokens", "num_running", "modeled_seconds", "memory_seconds",
               "compute_seconds")
_OPTIONAL_STEP_FIELDS = {"memory_seconds": 0.0, "compute_seconds": 0.0}  # a peer's power model; older senders lack them
MAX_LINE_BYTES = 1 << 20


def step_to_wire(desc: Any) -> dict[str, Any]:
    """A StepDescription (or anything with its fields) as a plain dict: what crosses the network."""
    if is_dataclass(desc) and not isinstance(desc, type):
        data = asdict(desc)
    elif isinstance(desc, dict):
        data = desc
    else:
        data = {name: getattr(desc, name) for name in STEP_FIELDS if hasattr(desc, name)}
    return {name: data[name] if name in data else _OPTIONAL_STEP_FIELDS[name] for name in STEP_FIELDS}


def _log(message: str) -> None:
    # Progress of rank coordination goes to stderr: bring-up shows it as the node's log.
    print(f"twin: {message}", file=sys.stderr, flush=True)


def _mean_ms(total_seconds: float, count: int) -> float | None:
    return round(1000 * total_seconds / count, 3) if count else None


LostCallback = Callable[[str], None]


class RankGroup(Protocol):
    """Rank 0's peers. `step` is the engine's StepHook; it never raises (a lost peer is a health state)."""

    async def start(self) -> None: ...
    async def step(self, desc: Any) -> None: ...
    async def stop(self) -> None: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def failure(self) -> str | None: ...
    def on_lost(self, callback: LostCallback) -> None: ...
    def describe(self) -> dict[str, Any]: ...


class _HealthMixin:
    """Healthy until the first loss; the first reason is kept and every listener hears it once."""

    def _init_health(self) -> None:
        self._failure: str | None = None
        self._listeners: list[LostCallback] = []

    @property
    def healthy(self) -> bool:
        return self._failure is None

    @property
    def failure(self) -> str | None:
        return self._failure

    def on_lost(self, callback: LostCallback) -> None:
        self._listeners.append(callback)
        if self._failure is not None:
            callback(self._failure)

    def _mark_lost(self, reason: str) -> None:
        if self._failure is not None:
            return
        self._failure = reason
        _log(f"UNHEALTHY: {reason}")
        for callback in list(self._listeners):
            callback(reason)


class LocalRanks(_HealthMixin):
    """A single-rank engine (or all ranks in one process): nothing crosses a network."""

    def __init__(self) -> None:
        self._init_health()
        self.steps = 0

    async def start(self) -> None:
        return None

    async def step(self, desc: Any) -> None:
        self.steps += 1

    async def stop(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"transport": "local", "healthy": self.healthy, "failure": self.failure, "peers": []}


# ------------------------------------------------------------------------------------------------ TCP


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at end of stream. A malformed line is a protocol error (ValueError)."""
    line = await reader.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        return None  # the connection closed mid-line: same as gone
    message = json.loads(line)
    if not isinstance(message, dict) or len(message) != 1:
        raise ValueError(f"not a rank message: {line[:200]!r}")
    return message


@dataclass
class _Peer:
    node_rank: int
    address: str
    pid: int | None
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    joined_at: float = field(default_factory=time.time)
    steps_acked: int = 0
    last_ack_step: int = 0
    pending: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    lost: str | None = None


class TcpRankServer(_HealthMixin):
    """mp rank 0: listens for the headless ranks, then drives them step by step."""

    def __init__(
        self,
        host: str,
        port: int,
        nnodes: int,
        *,
        ack_timeout_s: float = 30.0,
        join_timeout_s: float | None = 900.0,
        heartbeat_s: float = 1.0,
    ) -> None:
        if nnodes < 2:
            raise ConfigError(f"TcpRankServer needs nnodes >= 2 (got {nnodes})")
        self._init_health()
        self.host = host
        self.port = port
        self.nnodes = nnodes
        self.ack_timeout_s = ack_timeout_s
        self.join_timeout_s = join_timeout_s
        self.heartbeat_s = heartbeat_s
        self.peers: dict[int, _Peer] = {}
        self._all_joined = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._last_traffic = time.monotonic()
        self._ping_seq = 0
        self.steps_sent = 0
        self.step_seconds_total = 0.0  # real time rank 0 spent telling peers about steps (and waiting)

    @property
    def bound_port(self) -> int:
        """The port really listened on (differs from `port` when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return self.port
        return int(self._server.sockets[0].getsockname()[1])

    async def listen(self) -> None:
        """Open the coordination port (separate from `wait_for_peers` so tests can learn the port)."""
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._handle_connection, self.host, self.port, reuse_address=True, limit=MAX_LINE_BYTES
            )
        except OSError as exc:
            raise BringUpError(
                f"rank 0 cannot listen on --master-addr {self.host} --master-port {self.port}: {exc.strerror or exc}"
            ) from exc
        _log(f"rank 0 listening on {self.host}:{self.bound_port} for {self.nnodes - 1} headless rank(s)")

    async def start(self) -> None:
        """Listen and wait until every node rank joined (BringUpError after join_timeout_s)."""
        await self.listen()
        try:
            await asyncio.wait_for(self._all_joined.wait(), self.join_timeout_s)
        except asyncio.TimeoutError as exc:
            missing = sorted(set(range(1, self.nnodes)) - set(self.peers))
            await self.stop()
            raise BringUpError(
                f"rank 0 waited {self.join_timeout_s:.0f} s on {self.host}:{self.bound_port} but node rank(s) "
                f"{missing} never joined (are they started with --master-addr {self.host} "
                f"--master-port {self.bound_port}?)"
            ) from exc
        if self.failure is not None:
            raise BringUpError(f"a rank was lost before serving started: {self.failure}")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="twin-rank-heartbeat")
        _log(f"all {self.nnodes} node ranks joined: {self._peer_summary()}")

    def _peer_summary(self) -> str:
        return ", ".join(f"rank {r} from {p.address}" for r, p in sorted(self.peers.items()))

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = "%s:%s" % writer.get_extra_info("peername")[:2]
        try:
            hello_message = await asyncio.wait_for(_receive(reader), 10.0)
        except (asyncio.TimeoutError, ValueError, OSError, asyncio.IncompleteReadError):
            writer.close()
            return
        hello = (hello_message or {}).get("hello")
        reason = self._check_hello(hello)
        if reason is not None:
            _log(f"rejected a rank from {address}: {reason}")
            try:
                await _send(writer, {"reject": reason})
            except OSError:
                pass
            writer.close()
            return
        assert isinstance(hello, dict)
        rank = int(hello["node_rank"])
        peer = _Peer(rank, address, hello.get("pid"), reader, writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small message per step
        self.peers[rank] = peer
        await _send(writer, {"welcome": {"nnodes": self.nnodes, "node_rank": rank}})
        _log(f"node rank {rank} joined from {address} ({len(self.peers)}/{self.nnodes - 1})")
        peer.reader_task = asyncio.create_task(self._read_peer(peer), name=f"twin-rank-{rank}-reader")
        if len(self.peers) == self.nnodes - 1:
            self._all_joined.set()

    def _check_hello(self, hello: Any) -> str | None:
        if not isinstance(hello, dict) or not isinstance(hello.get("node_rank"), int):
            return "the first message must be a hello with node_rank"
        rank = hello["node_rank"]
        if hello.get("nnodes") != self.nnodes:
            return f"--nnodes mismatch: rank 0 has {self.nnodes}, rank {rank} has {hello.get('nnodes')}"
        if not 1 <= rank < self.nnodes:
            return f"--node-rank {rank} is outside 1..{self.nnodes - 1}"
        if rank in self.peers:
            return f"node rank {rank} already joined from {self.peers[rank].address}"
        if self._all_joined.is_set():
            return "every node rank already joined"
        return None

    async def _read_peer(self, peer: _Peer) -> None:
        try:
            while True:
                message = await _receive(peer.reader)
                if message is None:
                    self._lose(peer, f"node rank {peer.node_rank} ({peer.address}) closed its connection")
                    return
                key, value = next(iter(message.items()))
                if key == "ack":
                    peer.steps_acked += 1
                    peer.last_ack_step = int(value)
                    waiter = peer.pending.pop(f"step:{value}", None)
                elif key == "pong":
                    waiter = peer.pending.pop(f"ping:{value}", None)
                else:
                    raise ValueError(f"unexpected message {key!r}")
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            self._lose(peer, f"node rank {peer.node_rank} ({peer.address}): {exc}")
        except asyncio.CancelledError:
            raise

    def _lose(self, peer: _Peer, reason: str) -> None:
        if not self._all_joined.is_set():
            # Still assembling: a rank that left may come back (vLLM ranks are restarted the same way).
            if self.peers.get(peer.node_rank) is peer:
                del self.peers[peer.node_rank]
            _log(f"{reason} before every rank joined; waiting for it again")
            peer.writer.close()
            return
        if peer.lost is None:
            peer.lost = reason
        for waiter in peer.pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(reason))
        peer.pending.clear()
        self._mark_lost(reason)

    async def _round(self, kind: str, value: Any) -> None:
        """Send one message to every peer and wait for each reply; a missing reply loses that peer."""
        loop = asyncio.get_running_loop()
        waits: list[tuple[_Peer, asyncio.Future[None]]] = []
        for peer in self.peers.values():
            if peer.lost is not None:
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            peer.pending[f"{kind}:{value if kind == 'ping' else value['step']}"] = waiter
            try:
                await _send(peer.writer, {kind: value})
            except OSError as exc:
                self._lose(peer, f"node rank {peer.node_rank} ({peer.address}): send failed: {exc}")
                continue
            waits.append((peer, waiter))
        self._last_traffic = time.monotonic()
        for peer, waiter in waits:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self.ack_timeout_s)
            except asyncio.TimeoutError:
                self._lose(
                    peer, f"node rank {peer.node_rank} ({peer.address}) did not answer a {kind} within "
                    f"{self.ack_timeout_s:g} s"
                )
            except ConnectionError:
                pass  # already lost, reason recorded

    async def step(self, desc: Any) -> None:
        if not self.healthy:
            return  # the group is broken; the server fails requests, the engine must not block on it
        self.steps_sent += 1
        started = time.perf_counter()
        await self._round("step", step_to_wire(desc))
        self.step_seconds_total += time.perf_counter() - started

    async def _heartbeat(self) -> None:
        # Between steps nothing flows; a heartbeat notices a dead peer while the engine is idle.
        while self.healthy:
            await asyncio.sleep(self.heartbeat_s)
            if time.monotonic() - self._last_traffic < self.heartbeat_s:
                continue
            self._ping_seq += 1
            await self._round("ping", self._ping_seq)

    async def stop(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        for peer in self.peers.values():
            try:
                if peer.lost is None:
                    await asyncio.wait_for(_send(peer.writer, {"bye": "rank 0 is shutting down"}), 2.0)
            except (OSError, asyncio.TimeoutError):
                pass
            if peer.reader_task is not None:
                peer.reader_task.cancel()
            peer.writer.close()
        for peer in self.peers.values():
            if peer.reader_task is not None:
                await asyncio.gather(peer.reader_task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def describe(self) -> dict[str, Any]:
        return {
            "transport": "tcp",
            "listen": f"{self.host}:{self.bound_port}",
            "nnodes": self.nnodes,
            "healthy": self.healthy,
            "failure": self.failure,
            "steps_sent": self.steps_sent,
            "mean_step_round_ms": _mean_ms(self.step_seconds_total, self.steps_sent),
            "peers": [
                {
                    "node_rank": rank,
                    "address": peer.address,
                    "pid": peer.pid,
                    "steps_acked": peer.steps_acked,
                    "last_ack_step": peer.last_ack_step,
                    "lost": peer.lost,
                }
                for rank, peer in sorted(self.peers.items())
            ],
        }


@dataclass(frozen=True)
class HeadlessSummary:
    """How a headless rank's life ended."""

    node_rank: int
    steps: int  # engine steps it took part in
    prefill_tokens: int
    decode_tokens: int
    reason: str  # why it ended
    clean: bool  # True when rank 0 said goodbye, False when it vanished


async def _connect_with_retry(
    master_addr: str, master_port: int, local_addr: str | None, connect_timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + connect_timeout_s
    delay = 0.1
    last_error: OSError | None = None
    announced = False
    while time.monotonic() < deadline:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    master_addr,
                    master_port,
                    local_addr=(local_addr, 0) if local_addr else None,
                    limit=MAX_LINE_BYTES,
                ),
                max(0.1, min(5.0, deadline - time.monotonic())),
            )
        except (OSError, asyncio.TimeoutError) as exc:
            last_error = exc if isinstance(exc, OSError) else OSError(str(exc) or "timed out")
            if not announced:
                _log(f"waiting for rank 0 at {master_addr}:{master_port} ({last_error})")
                announced = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise ConnectError(
        f"headless rank could not reach rank 0 at --master-addr {master_addr} --master-port {master_port} "
        f"within {connect_timeout_s:g} s: {last_error}"
    )


async def run_headless_rank(
    master_addr: str,
    master_port: int,
    node_rank: int,
    nnodes: int,
    *,
    local_addr: str | None = None,
    connect_timeout_s: float = 900.0,
    silence_timeout_s: float = 60.0,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> HeadlessSummary:
    """Join rank 0 (retrying until it listens), take part in every step, return when rank 0 goes away.

    ConnectError if rank 0 never answers or rejects this rank. `silence_timeout_s` bounds how long the
    rank waits without any message (rank 0 pings every second while idle) before it gives rank 0 up.
    """
    reader, writer = await _connect_with_retry(master_addr, master_port, local_addr, connect_timeout_s)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    steps = prefill = decode = 0
    try:
        await _send(writer, {"hello": {"node_rank": node_rank, "nnodes": nnodes, "pid": os.getpid(),
                                       "host": socket.gethostname()}})
        answer = await asyncio.wait_for(_receive(reader), 30.0)
        if answer is None or "welcome" not in answer:
            why = (answer or {}).get("reject", "rank 0 closed the connection")
            raise ConnectError(f"rank 0 at {master_addr}:{master_port} refused node rank {node_rank}: {why}")
        _log(f"node rank {node_rank} joined rank 0 at {master_addr}:{master_port}")
        while True:
            try:
                message = await asyncio.wait_for(_receive(reader), silence_timeout_s)
            except asyncio.TimeoutError:
                return HeadlessSummary(node_rank, steps, prefill, decode,
                                       f"rank 0 silent for {silence_timeout_s:g} s", clean=False)
            if message is None:
                return HeadlessSummary(node_rank, steps, prefill, decode,
                                       "rank 0 closed the connection", clean=False)
            key, value = next(iter(message.items()))
            if key == "step":
                steps += 1
                prefill += int(value.get("prefill_tokens", 0))
                decode += int(value.get("decode_tokens", 0))
                if on_step is not None:
                    on_step(value)  # this node's modeled power (twin/power.py)
                await _send(writer, {"ack": value["step"]})
            elif key == "ping":
                await _send(writer, {"pong": value})
            elif key == "bye":
                return HeadlessSummary(node_rank, steps, prefill, decode, f"rank 0 said bye: {value}", clean=True)
    except (OSError, asyncio.IncompleteReadError) as exc:
        return HeadlessSummary(node_rank, steps, prefill, decode, f"connection to rank 0 failed: {exc}", clean=False)
    except (ValueError, asyncio.TimeoutError) as exc:
        raise ConnectError(f"rank 0 at {master_addr}:{master_port} spoke an unknown protocol: {exc}") from exc
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------ Ray


class TwinRankActor:
    """A rank of a Ray-executed twin engine: takes part in every step on its own node."""

    def __init__(self, rank: int, world_size: int, hardware: str | None = None) -> None:
        import ray

        self.rank = rank
        self.world_size = world_size
        self.node_id = ray.get_runtime_context().get_node_id()
        self.steps = 0
        self.prefill_tokens = 0
        self.decode_tokens = 0
        # The actor runs in a worker of this node's raylet, whose env (from the plan) names the telemetry dir.
        self.gpu = None
        if hardware is not None:
            from twin.power import NodeGpuTelemetry
            from twin.profiles import load_hardware

            self.gpu = NodeGpuTelemetry.from_env(load_hardware(hardware).power)

    def step(self, desc: dict[str, Any]) -> int:
        if self.gpu is not None:
            self.gpu.on_step(desc)
        self.steps += 1
        self.prefill_tokens += int(desc["prefill_tokens"])
        self.decode_tokens += int(desc["decode_tokens"])
        return int(desc["step"])

    def info(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "node_id": self.node_id,
            "pid": os.getpid(),
            "steps": self.steps,
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
        }


class RayRankGroup(_HealthMixin):
    """ray rank 0: the driver; one TwinRankActor per other rank, each on another node of the cluster."""

    def __init__(
        self,
        tensor_parallel: int,
        *,
        address: str | None = None,
        ack_timeout_s: float = 30.0,
        heartbeat_s: float = 1.0,
        namespace: str = "topo-twin",
        hardware: str | None = None,  # the actors' power model (twin/power.py); None: no GPU telemetry
    ) -> None:
        if tensor_parallel < 2:
            raise ConfigError(f"the ray executor needs -tp >= 2 here (got {tensor_parallel})")
        self._init_health()
        self.tensor_parallel = tensor_parallel
        self.address = address or os.environ.get("RAY_ADDRESS") or "auto"
        self.ack_timeout_s = ack_timeout_s
        self.heartbeat_s = heartbeat_s
        self.namespace = namespace
        self.hardware = hardware
        self.actors: list[Any] = []
        self.actor_nodes: list[str] = []
        self.driver_node: str | None = None
        self.steps_sent = 0
        self.step_seconds_total = 0.0
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._connected = False

    def _connect(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            ray.init(
                address=self.address,
                namespace=self.namespace,
                log_to_driver=False,
                logging_level="WARNING",
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BringUpError(
                f"the ray executor could not join a running Ray cluster at {self.address!r} "
                f"(start one with `ray start --head`, or set RAY_ADDRESS): {exc}"
            ) from exc
        self._connected = True
        self.driver_node = ray.get_runtime_context().get_node_id()
        alive = [node for node in ray.nodes() if node.get("Alive")]
        others = [node for node in alive if node["NodeID"] != self.driver_node]
        if len(alive) < self.tensor_parallel or len(others) < self.tensor_parallel - 1:
            raise BringUpError(
                f"-tp {self.tensor_parallel} over Ray needs {self.tensor_parallel} nodes (one rank per node) "
                f"but the Ray cluster at {self.address} has {len(alive)} alive node(s): "
                + ", ".join(f"{n.get('NodeManagerAddress')} {n['NodeID'][:8]}" for n in alive)
            )
        remote_class = ray.remote(num_cpus=0, max_restarts=0)(TwinRankActor)
        for rank, node in enumerate(others[: self.tensor_parallel - 1], start=1):
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            self.actors.append(
                remote_class.options(scheduling_strategy=strategy, name=None).remote(
                    rank, self.tensor_parallel, self.hardware)
            )
            self.actor_nodes.append(node["NodeID"])

    async def start(self) -> None:
        # ray.init blocks; nothing else runs yet (the HTTP port opens only after this), so blocking is fine.
        try:
            self._connect()
        except BaseException:
            await self.stop()
            raise
        import ray

        try:
            infos = await asyncio.wait_for(
                asyncio.gather(*(actor.info.remote() for actor in self.actors)), max(60.0, self.ack_timeout_s)
            )
        except (asyncio.TimeoutError, ray.exceptions.RayError) as exc:
            await self.stop()
            raise BringUpError(f"the twin's Ray rank actors did not start: {exc}") from exc
        for info, wanted in zip(infos, self.actor_nodes):
            if info["node_id"] != wanted or info["node_id"] == self.driver_node:
                await self.stop()
                raise BringUpError(f"rank {info['rank']} landed on node {info['node_id']}, not {wanted}")
        _log(
            f"ray: driver on node {self.driver_node[:8] if self.driver_node else '?'}, rank actors on "
            + ", ".join(f"rank {i['rank']} node {i['node_id'][:8]} pid {i['pid']}" for i in infos)
        )
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="twin-ray-heartbeat")

    async def _call_all(self, method: str, *args: Any) -> None:
        import ray

        refs = [getattr(actor, method).remote(*args) for actor in self.actors]
        for rank, ref in enumerate(refs, start=1):
            try:
                await asyncio.wait_for(ref, self.ack_timeout_s)
            except asyncio.TimeoutError:
                self._mark_lost(f"ray rank {rank} did not answer {method} within {self.ack_timeout_s:g} s")
            except ray.exceptions.RayError as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self._mark_lost(f"ray rank {rank} on node {self.actor_nodes[rank - 1][:8]} is gone: {first_line}")

    async def step(self, desc: Any) -> None:
        if not self.healthy:
            return
        self.steps_sent += 1
        self._last_traffic = time.monotonic()
        started = time.perf_counter()
        await self._call_all("step", step_to_wire(desc))
        self.step_seconds_total += time.perf_counter() - started

    async def _heartbeat(self) -> None:
        self._last_traffic = time.monotonic()
        while self.healthy:
            await asyncio.sleep(self.heartbeat_s)
            if time.monotonic() - self._last_traffic >= self.heartbeat_s:
                await self._call_all("info")
                self._last_traffic = time.monotonic()

    async def actor_infos(self) -> list[dict[str, Any]]:
        """What each actor says about itself (steps it saw, its node): proof the steps crossed over."""
        return list(await asyncio.gather(*(actor.info.remote() for actor in self.actors)))

    async def stop(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        if not self._connected:
            return
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - best effort: the actor may be gone already
                pass
        self.actors.clear()
        ray.shutdown()
        self._connected = False

    def describe(self) -> dict[str, Any]:
        return {
            "transport": "ray",
            "address": self.address,
            "tensor_parallel": self.tensor_parallel,
            "driver_node": self.driver_node,
            "healthy": self.healthy,
            "failure": self.failure,
            "steps_sent": self.steps_sent,
            "mean_step_round_ms": _mean_ms(self.step_seconds_total, self.steps_sent),
            "peers": [{"rank": i + 1, "node_id": node} for i, node in enumerate(self.actor_nodes)],
        }


__all__ = [
    "RankGroup",
    "LocalRanks",
    "TcpRankServer",
    "RayRankGroup",
    "TwinRankActor",
    "HeadlessSummary",
    "run_headless_rank",
    "step_to_wire",
]
