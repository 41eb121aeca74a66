"""Starting the twin: what `twin serve FLAGS` runs once the flags are parsed (twin/cli.py) — rank 0 with
the HTTP server (twin/server.py) in front of an engine, or a headless rank that follows rank 0.

    main(argv) -> None                           the entry point of `python -m twin` and `topo twin serve`
    engine_config_kwargs(args) -> dict           ServeArgs -> keyword arguments of twin.engine.EngineConfig
    run_serve(args) -> None                      blocks until stopped (SIGINT/SIGTERM) or rank 0 leaves
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any, Iterator, Sequence

import uvicorn

from common.errors import BringUpError, ConfigError, ConnectError
from twin.cli import KV_CACHE_DTYPE_BYTES, ServeArgs, parse_serve_args
from twin.distributed import LocalRanks, RankGroup, RayRankGroup, TcpRankServer, run_headless_rank
from twin.power import NodeGpuTelemetry, gpu_telemetry_running
from twin.engine import Engine, EngineConfig
from twin.hang_fault import hang_fault_from_env
from topology.nccl import transport_from_env
from twin.profiles import load_card, load_hardware
from twin.server import build_app, default_text_source, twin_version


def engine_config_kwargs(
    args: ServeArgs, quantization_bytes: dict[str, float] | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Keyword arguments for `EngineConfig.from_names(args.hardware, args.card, **kw)`.

    `quantization_bytes` is the card's table (bytes per weight by format); a --quantization the card does
    not list is an error naming the choices. Without --link the link is the transport NCCL would pick from
    `env` (default: this process's environment, i.e. the env the plan rendered for the engine).
    """
    weight_bytes: float | None = None
    if args.quantization is not None:
        table = quantization_bytes or {}
        if args.quantization not in table:
            raise ConfigError(
                f"twin serve: --quantization {args.quantization!r} is not known for card {args.card!r} "
                f"(known: {', '.join(sorted(table)) or 'none'})"
            )
        weight_bytes = table[args.quantization]
    return {
        "tensor_parallel": args.tensor_parallel_size,
        "nnodes": args.nnodes,
        "executor": args.executor,
        "max_model_len": args.max_model_len,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "weight_bytes_per_param": weight_bytes,
        "kv_cache_bytes_per_element": KV_CACHE_DTYPE_BYTES[args.kv_cache_dtype],
        "link": args.link or transport_from_env(os.environ if env is None else env),
        "noise_cv": args.noise_cv,
        # two engines of one sweep (2x solo) get the same --seed: the port keeps their noise apart
        "noise_seed": (args.seed or 0) * 65_537 + args.port,
    }


def bind_host(args: ServeArgs) -> str:
    """The HTTP bind address: --host, else all interfaces (vLLM's default)."""
    return args.host if args.host is not None else "0.0.0.0"


HTTP_KEEP_ALIVE_ENV = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
DEFAULT_HTTP_KEEP_ALIVE_S = 5  # vLLM's default, and uvicorn's


def http_keep_alive_s() -> int:
    """How long an idle HTTP connection is kept open: VLLM_HTTP_TIMEOUT_KEEP_ALIVE (like vLLM), else 5 s."""
    raw = os.environ.get(HTTP_KEEP_ALIVE_ENV, "").strip()
    if not raw:
        return DEFAULT_HTTP_KEEP_ALIVE_S
    try:
        seconds = int(raw)
    except ValueError:
        seconds = -1
    if seconds < 1:
        raise ConfigError(f"{HTTP_KEEP_ALIVE_ENV}={raw!r}: expected a whole number of seconds, at least 1")
    return seconds


def local_rank_address() -> str | None:
    """This node's address for rank traffic: VLLM_HOST_IP when set (like vLLM), else the OS's choice."""
    return os.environ.get("VLLM_HOST_IP") or None


def _log(message: str) -> None:
    print(f"twin: {message}", file=sys.stderr, flush=True)


def make_rank_group(args: ServeArgs) -> RankGroup:
    """The peers rank 0 coordinates with, from the flags (mp over TCP, ray actors, or none)."""
    if args.executor == "ray":
        return RayRankGroup(args.tensor_parallel_size, ack_timeout_s=args.rank_timeout_s, hardware=args.hardware)
    if args.nnodes > 1:
        return TcpRankServer(args.master_addr, args.master_port, args.nnodes, ack_timeout_s=args.rank_timeout_s)
    return LocalRanks()  # all ranks on this node: nothing crosses a network


async def serve(args: ServeArgs) -> None:
    """Run what the flags say until stopped (SIGINT/SIGTERM) or, for a headless rank, until rank 0 leaves."""
    keep_alive_s = http_keep_alive_s()  # a bad value fails before anything starts
    card = load_card(args.card)
    config = EngineConfig(hardware=load_hardware(args.hardware), card=card,
                          **engine_config_kwargs(args, card.quantization_bytes))
    async with gpu_telemetry_running(config.hardware.power) as gpu:
        await _serve_with(args, config, keep_alive_s, gpu)


async def _serve_with(args: ServeArgs, config: EngineConfig, keep_alive_s: int, gpu: NodeGpuTelemetry | None) -> None:
    """`serve` once the node's GPU telemetry (twin/power.py: every rank on the node reports the steps it takes
    part in) is running, or None without a telemetry directory / power model."""
    card = config.card
    if args.headless:
        summary = await run_headless_rank(
            args.master_addr, args.master_port, args.node_rank, args.nnodes,
            local_addr=local_rank_address(), silence_timeout_s=max(10.0, 2 * args.rank_timeout_s),
            on_step=gpu.on_step if gpu is not None else None,
        )
        _log(f"node rank {summary.node_rank} done after {summary.steps} steps "
             f"({summary.prefill_tokens} prefill + {summary.decode_tokens} decode tokens): {summary.reason}")
        if not summary.clean:
            raise ConnectError(f"node rank {summary.node_rank}: {summary.reason}")
        return

    default_text_source(args.seed or 0)  # build the token table before the port opens, not on request 1
    group = make_rank_group(args)
    await group.start()
    step_hook = group.step
    if gpu is not None:
        async def step_hook(desc: Any) -> None:
            gpu.on_step(desc)  # this node's modeled power, then the peers
            await group.step(desc)
    engine = Engine(config, step_hook=hang_fault_from_env(step_hook))  # a fault knob, off unless set
    await engine.start()
    app = build_app(engine, group, served_model_names=args.served_model_names, model_root=args.model,
                    api_key=args.api_key, seed=args.seed or 0)
    host = bind_host(args)
    _log(
        f"serving {args.served_model_names[0]} (card {card.name}, hardware {config.hardware.name}, "
        f"tp={config.tensor_parallel}, executor={config.executor}, max_model_len={config.effective_max_model_len}, "
        f"KV cache {engine.stats().kv_capacity_tokens} tokens) on http://{host}:{args.port}"
    )
    server = _QuietSignalsServer(uvicorn.Config(app, host=host, port=args.port, log_level="warning",
                                                access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                                                timeout_keep_alive=keep_alive_s))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.request_exit)
    try:
        # Our own socket: uvicorn would sys.exit() on a port in use; we want a TopoError naming it.
        sock = _listen_socket(host, args.port)
        await server.serve(sockets=[sock])
    finally:
        try:
            await engine.stop()
        except Exception as exc:  # noqa: BLE001 - Engine.stop re-raises a step loop failure; it was reported
            _log(f"the engine's step loop had failed: {exc!r}")
        await group.stop()


class _QuietSignalsServer(uvicorn.Server):
    """uvicorn.Server whose signals are ours: uvicorn re-raises SIGTERM after its shutdown, which would kill
    the process before the peer ranks hear goodbye and the engine stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        _log("shutting down (signal)")
        self.should_exit = True


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted connections (it checks sock.proto); without
    # it a first token sent soon after the headers waits for the client's delayed ACK (~40 ms of fake TTFT).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BringUpError(f"the twin cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def run_serve(args: ServeArgs) -> None:
    asyncio.run(serve(args))


def main(argv: Sequence[str] | None = None) -> None:
    """`twin serve ...`: parse, then run rank 0 (HTTP) or a headless rank until stopped."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: twin serve [MODEL] [vLLM serving flags] [--hardware NAME|PATH] [--card NAME|PATH]")
        print("       twin serve --help   for every flag")
        return
    if argv[0] == "--version":  # like `vllm --version`: what `topo doctor` compares across nodes
        print(twin_version())
        return
    if argv[0] != "serve":
        raise ConfigError(f"twin: unknown command {argv[0]!r} (the only command is `serve`)")
    run_serve(parse_serve_args(argv[1:]))


__all__ = [
    "DEFAULT_HTTP_KEEP_ALIVE_S",
    "HTTP_KEEP_ALIVE_ENV",
    "bind_host",
    "engine_config_kwargs",
    "http_keep_alive_s",
    "local_rank_address",
    "main",
    "make_rank_group",
    "run_serve",
    "serve",
]
