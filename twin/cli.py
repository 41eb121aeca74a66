"""`twin serve`: vLLM's serving flags, parsed so the twin runs wherever topo would run `vllm serve`.

topo renders one argv for `vllm serve` per node; the twin must accept that same argv (the engine name
swapped) and reject anything it does not understand by name, never ignore it. The vLLM-only flags that
change nothing in the twin's performance model (--trust-remote-code, --dtype, --load-format, --seed,
--enforce-eager) are accepted and recorded so a plan stays runnable on both engines.

    parse_serve_args(argv) -> ServeArgs          flags -> a validated, frozen record (ConfigError if not)

What runs once they are parsed is twin/launch.py; the HTTP server is twin/server.py.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, NoReturn, Sequence

from common.config import CONFIGS_DIR
from common.errors import ConfigError
from twin.profiles import TRANSPORTS

# What the twin's --kv-cache-dtype values cost per element (vLLM's names; "auto" = the engine's default).
KV_CACHE_DTYPE_BYTES: dict[str, float | None] = {
    "auto": None,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "fp8_inc": 1.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "half": 2.0,
}

DEFAULT_HARDWARE = "gb10"


class _FlagParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and calling sys.exit on a bad flag."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"twin serve: {message} (see `topo twin serve --help`)")


@dataclass(frozen=True)
class ServeArgs:
    """Everything `twin serve` was told, after validation. Field names follow vLLM's flag names."""

    model: str
    served_model_names: tuple[str, ...]  # clients may use any; the first is reported (like vLLM)
    card: str  # twin: model card name or path (configs/cards)
    hardware: str  # twin: hardware profile name or path (configs/hardware)
    host: str | None
    port: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    headless: bool
    distributed_executor_backend: str | None  # None = vLLM's default for the layout
    max_model_len: int | None
    max_num_batched_tokens: int
    max_num_seqs: int
    gpu_memory_utilization: float
    quantization: str | None
    kv_cache_dtype: str
    enforce_eager: bool
    trust_remote_code: bool
    enable_prefix_caching: bool | None
    dtype: str
    load_format: str
    seed: int | None
    api_key: str | None
    link: str | None  # twin: roce2 | roce1 | sockets; None = what NCCL's env implies (transport_from_env)
    rank_timeout_s: float  # twin: how long rank 0 waits for an ack / peers wait to join
    noise_cv: float | None = None  # twin: per-step jitter (None: the hardware profile's)

    @property
    def served_model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def executor(self) -> str:
        """The executor EngineConfig models: uni for one rank, else the backend (mp unless told ray)."""
        if self.tensor_parallel_size * self.pipeline_parallel_size == 1 and self.nnodes == 1:
            return "uni"
        return self.distributed_executor_backend or "mp"

    def redacted(self) -> dict[str, Any]:
        """For logs: every field, the API key as `***`."""
        out = dict(self.__dict__)
        if out.get("api_key"):
            out["api_key"] = "***"
        return out


def build_parser() -> argparse.ArgumentParser:
    p = _FlagParser(
        prog="twin serve",
        description=(
            "Serve an emulated vLLM engine (the twin) on a named hardware profile. Accepts vLLM's serving "
            "flags, so it runs from the same argv topo renders for `vllm serve`. Multi-node flags really "
            "coordinate: a --headless rank joins rank 0 over TCP; --distributed-executor-backend ray runs "
            "the other ranks as actors on other nodes of the running Ray cluster."
        ),
        allow_abbrev=False,  # vLLM's own parser does not guess, and a guessed flag hides a typo
    )
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL", help="model to serve (like `vllm serve MODEL`)")
    p.add_argument("--model", default=None, help="model to serve, if not given positionally")
    p.add_argument("--served-model-name", nargs="+", default=None, help="name(s) clients use; the first is reported")
    p.add_argument("--host", default=None, help="address to bind the HTTP server to (default: all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("-tp", "--tensor-parallel-size", type=int, default=1, help="tensor-parallel ranks")
    p.add_argument("-pp", "--pipeline-parallel-size", type=int, default=1, help="pipeline stages (the twin: 1 only)")
    p.add_argument("--nnodes", type=int, default=1, help="nodes the engine spans (mp executor)")
    p.add_argument("--node-rank", type=int, default=0, help="this node's rank; 0 serves HTTP")
    p.add_argument("--master-addr", default="127.0.0.1", help="rank 0's address the other ranks connect to")
    p.add_argument("--master-port", type=int, default=29501, help="rank 0's coordination port")
    p.add_argument("--headless", action="store_true", help="run a rank without the HTTP server (node rank > 0)")
    p.add_argument("--distributed-executor-backend", choices=("mp", "ray"), default=None,
                   help="how ranks are driven: mp (TCP to headless ranks) or ray (actors on other Ray nodes)")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the card's)")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192, help="token budget per engine step")
    p.add_argument("--max-num-seqs", type=int, default=256, help="most sequences running at once")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.70,
                   help="share of device memory for weights + KV cache (default 0.70)")
    p.add_argument("--quantization", "-q", default=None, help="weight format, e.g. fp8, nvfp4 (the card lists them)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=sorted(KV_CACHE_DTYPE_BYTES),
                   help="KV cache element type")
    p.add_argument("--enforce-eager", action="store_true", help="accepted for vLLM compatibility")
    p.add_argument("--trust-remote-code", action="store_true", help="accepted for vLLM compatibility")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="accepted; the twin does not model prefix caching")
    p.add_argument("--dtype", default="auto", help="accepted for vLLM compatibility")
    p.add_argument("--load-format", default="auto", help="accepted for vLLM compatibility")
    p.add_argument("--seed", type=int, default=None, help="seed of the generated text's offsets")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1/*")
    twin = p.add_argument_group("twin (not vLLM flags)")
    twin.add_argument("--hardware", default=DEFAULT_HARDWARE,
                      help="hardware profile: a name in configs/hardware (gb10, fast) or a YAML path")
    twin.add_argument("--card", default=None,
                      help="model card: a name in configs/cards or a YAML path (default: the card of MODEL)")
    twin.add_argument("--link", choices=TRANSPORTS, default=None,
                      help="how TP ranks talk in the cost model: NCCL over both RoCE twins, one, or TCP sockets "
                           "(default: what this process's NCCL_IB_HCA / NCCL_IB_DISABLE imply, like NCCL)")
    twin.add_argument("--noise-cv", type=float, default=None,
                      help="per-step jitter: each step's modeled time times a seeded random factor with this "
                           "coefficient of variation (default: the hardware profile's, 0 = deterministic); "
                           "seeded by --seed")
    twin.add_argument("--rank-timeout", type=float, default=30.0,
                      help="seconds rank 0 waits for a peer's ack before declaring it lost (default 30)")
    return p


def _card_ids() -> dict[str, str]:
    """Every name a card answers to -> the card's name: its file stem, its `name` and its `hf_id`."""
    import yaml

    ids: dict[str, str] = {}
    for path in sorted((CONFIGS_DIR / "cards").glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # a broken card is reported when it is loaded, not while guessing names
        hf_id = str(data.get("hf_id", ""))
        names = {path.stem, str(data.get("name", "")), hf_id, hf_id.rsplit("/", 1)[-1]}
        for name in names - {""}:
            ids[name.lower()] = path.stem
    return ids


def card_for_model(model: str) -> str:
    """The card a model name means: `gemma4-26b`, `google/gemma-4-26B-A4B-it`, or a local path's last part."""
    ids = _card_ids()
    for candidate in (model, model.rstrip("/").rsplit("/", 1)[-1]):
        if candidate.lower() in ids:
            return ids[candidate.lower()]
    known = ", ".join(sorted(set(ids.values()))) or "none"
    raise ConfigError(
        f"twin serve: no model card for model {model!r} (cards: {known}); pass --card NAME or --card PATH"
    )


def parse_serve_args(argv: Sequence[str]) -> ServeArgs:
    """Parse and check `twin serve` flags; every problem is a ConfigError that names the flag."""
    ns = build_parser().parse_args(list(argv))
    if ns.model_tag and ns.model and ns.model_tag != ns.model:
        raise ConfigError(f"twin serve: model given twice, as {ns.model_tag!r} and --model {ns.model!r}")
    model = ns.model_tag or ns.model
    if not model:
        raise ConfigError("twin serve: no model (give it positionally or with --model)")
    if ns.pipeline_parallel_size != 1:
        raise ConfigError(
            f"twin serve: -pp/--pipeline-parallel-size {ns.pipeline_parallel_size} is not supported by the twin "
            "(only 1); use -tp to split a model across nodes"
        )
    for flag, value, low in (
        ("-tp/--tensor-parallel-size", ns.tensor_parallel_size, 1),
        ("--nnodes", ns.nnodes, 1),
        ("--max-num-batched-tokens", ns.max_num_batched_tokens, 1),
        ("--max-num-seqs", ns.max_num_seqs, 1),
        ("--node-rank", ns.node_rank, 0),
    ):
        if value < low:
            raise ConfigError(f"twin serve: {flag} must be at least {low} (got {value})")
    if ns.max_model_len is not None and ns.max_model_len < 1:
        raise ConfigError(f"twin serve: --max-model-len must be at least 1 (got {ns.max_model_len})")
    if not 0.0 < ns.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"twin serve: --gpu-memory-utilization must be in (0, 1] (got {ns.gpu_memory_utilization})")
    for flag, port in (("--port", ns.port), ("--master-port", ns.master_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"twin serve: {flag} must be a TCP port 0..65535 (got {port})")
    if ns.node_rank >= ns.nnodes:
        raise ConfigError(f"twin serve: --node-rank {ns.node_rank} must be below --nnodes {ns.nnodes}")
    if ns.nnodes > ns.tensor_parallel_size * ns.pipeline_parallel_size:
        raise ConfigError(
            f"twin serve: --nnodes {ns.nnodes} exceeds the {ns.tensor_parallel_size} ranks of "
            f"-tp {ns.tensor_parallel_size}: every node needs at least one rank"
        )
    if ns.node_rank > 0 and not ns.headless:
        raise ConfigError(f"twin serve: --node-rank {ns.node_rank} serves no HTTP: add --headless (like vLLM)")
    if ns.headless and ns.node_rank == 0:
        raise ConfigError("twin serve: --headless needs --node-rank 1 or higher (rank 0 serves the API)")
    if ns.nnodes > 1 and ns.distributed_executor_backend == "ray":
        raise ConfigError(
            "twin serve: --nnodes is for the mp executor; with --distributed-executor-backend ray the ranks are "
            "placed on the nodes of the running Ray cluster (drop --nnodes/--node-rank)"
        )
    if ns.rank_timeout <= 0:
        raise ConfigError(f"twin serve: --rank-timeout must be positive (got {ns.rank_timeout})")
    if ns.noise_cv is not None and not 0 <= ns.noise_cv <= 2:
        raise ConfigError(f"twin serve: --noise-cv must be between 0 and 2 (got {ns.noise_cv})")
    card = ns.card or card_for_model(model)
    served = tuple(ns.served_model_name) if ns.served_model_name else (model,)
    return ServeArgs(
        model=model,
        served_model_names=served,
        card=card,
        hardware=ns.hardware,
        host=ns.host,
        port=ns.port,
        tensor_parallel_size=ns.tensor_parallel_size,
        pipeline_parallel_size=ns.pipeline_parallel_size,
        nnodes=ns.nnodes,
        node_rank=ns.node_rank,
        master_addr=ns.master_addr,
        master_port=ns.master_port,
        headless=ns.headless,
        distributed_executor_backend=ns.distributed_executor_backend,
        max_model_len=ns.max_model_len,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        max_num_seqs=ns.max_num_seqs,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        quantization=ns.quantization,
        kv_cache_dtype=ns.kv_cache_dtype,
        enforce_eager=ns.enforce_eager,
        trust_remote_code=ns.trust_remote_code,
        enable_prefix_caching=ns.enable_prefix_caching,
        dtype=ns.dtype,
        load_format=ns.load_format,
        seed=ns.seed,
        api_key=ns.api_key,
        link=ns.link,
        rank_timeout_s=ns.rank_timeout,
        noise_cv=ns.noise_cv,
    )


__all__ = ["KV_CACHE_DTYPE_BYTES", "ServeArgs", "build_parser", "card_for_model", "parse_serve_args"]
