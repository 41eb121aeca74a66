"""Hardware profiles and model cards: the YAML facts the twin's performance model is built from.

Every number in these files says where it comes from. In YAML a constant is written as
``{value: 273, source: "published: ..."}``; the source must start with one of

- ``published:``  a fact from ../shared/reference/README.md, a vendor spec or the model's config.json
- ``estimate:``   a first-principles estimate (the text says how it was reasoned)
- ``calibrated:`` fitted against the published SOLO column only (never a multi-node figure)

Loading splits each pair into the plain value (what the cost model reads) and ``sources[key]`` (what
`topo predict` and the calibration script print), so the model code reads ``hw.memory_bandwidth_gbs``.
"""

from __future__ import annotations

import math
from functools import cached_property, lru_cache
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from common.config import StrictModel, load_model, read_yaml, resolve_config, validate_model
from common.errors import ConfigError
from topology.nccl import TRANSPORTS, Transport, transport_from_env

SOURCE_KINDS = ("published:", "estimate:", "calibrated:")

# Keys that are descriptive, not constants of the model: they need no source.
# `decode_slowdown` and `noise_cv` are what-if knobs (tests: "what if decode got 10% slower", "what if every
# step jittered by 5%"), not facts to source.
_UNSOURCED_KEYS = frozenset({"name", "description", "hf_id", "default_quantization", "sources", "decode_slowdown",
                             "noise_cv"})


class SourcedModel(StrictModel):
    """A config section whose numeric constants each carry a `source` (see the module docstring)."""

    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split_sources(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        values: dict[str, Any] = {}
        sources: dict[str, str] = dict(data.get("sources") or {})
        for key, item in data.items():
            if key == "sources":
                continue
            if isinstance(item, dict) and set(item) == {"value", "source"}:
                source = str(item["source"]).strip()
                if not source.startswith(SOURCE_KINDS):
                    raise ValueError(
                        f"{key}.source must start with one of {', '.join(SOURCE_KINDS)} (got {source!r})"
                    )
                values[key] = item["value"]
                sources[key] = source
            else:
                values[key] = item
        missing = [
            key
            for key, item in values.items()
            if key not in _UNSOURCED_KEYS
            and key not in sources
            and isinstance(item, (int, float))
            and not isinstance(item, bool)
        ]
        if missing:
            raise ValueError(
                f"constants without a source: {', '.join(sorted(missing))} "
                "(write them as {value: X, source: 'published: ...' | 'estimate: ...' | 'calibrated: ...'})"
            )
        values["sources"] = sources
        return values


# --------------------------------------------------------------------------------------------- hardware


class LinkProfile(SourcedModel):
    """One NCCL transport between two nodes: RoCE over both twins of a port, over one, or TCP sockets.

    An all-reduce of k ranks costs collective_us (NCCL's own fixed cost of a collective) plus 2(k-1) hops
    of latency_us and 2(k-1)/k of the message over bandwidth x efficiency (twin/costmodel.py)."""

    bandwidth_gbit_s: float = Field(gt=0)  # line rate, gigabits per second
    efficiency: float = Field(gt=0, le=1)  # fraction of line rate a large all-reduce achieves
    latency_us: float = Field(ge=0)  # per-message latency of one all-reduce hop
    collective_us: float = Field(default=0.0, ge=0)  # fixed cost of one collective (kernel, protocol set-up)

    @property
    def bytes_per_second(self) -> float:
        return self.bandwidth_gbit_s * 1e9 / 8 * self.efficiency


class ExecutorProfile(SourcedModel):
    """What a distributed executor adds to every engine step (broadcast of the step, gathering results)."""

    step_overhead_ms: float = Field(ge=0)


class RouterProfile(SourcedModel):
    """An HTTP proxy in front of several engines: one asyncio process, so a burst is handled in a clump.

    Request k of a burst of c (k = 1..c) reaches its engine at request_latency + c x accept + k x dispatch:
    every request's first part (read and check the body) is done for the whole burst before any request's
    second part (pick a backend, open its stream). Each chunk back is response_latency later at the client.
    benchmarks/proxy_cost.py measures all four on a host."""

    request_latency_ms: float = Field(ge=0)
    accept_per_request_ms: float = Field(default=0.0, ge=0)
    dispatch_per_request_ms: float = Field(default=0.0, ge=0)
    response_latency_ms: float = Field(default=0.0, ge=0)
    # The proxy relays every streamed chunk in its one event loop: chunks from all engines queue for it,
    # each taking this long, so a busy proxy caps the tokens per second all streams together get.
    relay_per_chunk_ms: float = Field(default=0.0, ge=0)

    def relayed(self, arrivals: Sequence[float]) -> list[float]:
        """When chunks reaching the proxy at `arrivals` (seconds, any order) leave it, in the same order:
        first come, first served, one at a time."""
        service = self.relay_per_chunk_ms / 1000
        leave = [0.0] * len(arrivals)
        free = float("-inf")
        for index in sorted(range(len(arrivals)), key=arrivals.__getitem__):
            free = max(arrivals[index], free) + service
            leave[index] = free
        return leave

    def handover_s(self, burst: int, k: int) -> float:
        """When request k (1-based) of a burst that arrived at once reaches its engine, after the burst."""
        return (self.request_latency_ms + burst * self.accept_per_request_ms + k * self.dispatch_per_request_ms) / 1000


class PowerProfile(SourcedModel):
    """What one node's GPU draws (nvidia-smi's power.draw) as a function of the work the twin models:
    idle_w, plus memory_w times the share of time the memory system streams at its effective rate, plus
    compute_w times the share of time the matrix units run at theirs (twin/power.py). Clock and
    temperature follow, so the twin's nvidia-smi answers every field topo queries."""

    idle_w: float = Field(ge=0)
    memory_w: float = Field(ge=0)  # added at 100% of the effective bandwidth, all window long
    compute_w: float = Field(ge=0)  # added at 100% of the effective FLOP rate, all window long
    idle_sm_clock_mhz: float = Field(gt=0)
    busy_sm_clock_mhz: float = Field(gt=0)
    ambient_c: float
    heating_c_per_w: float = Field(ge=0)


class W4A16Profile(SourcedModel):
    """4-bit weights on a GPU without a native FP4 path (GB10/SM121: vLLM's Marlin W4A16 kernels).

    Weights stream at 4 bits; each GEMM dequantizes its weight tile to BF16 in registers, once per `m_tile`
    activation rows, at `dequant_ops_per_weight` CUDA-core instructions per weight, then multiplies at the
    BF16 tensor rate."""

    vector_tops: float = Field(gt=0)  # CUDA-core instructions per second, 1e12
    dequant_ops_per_weight: float = Field(ge=0)
    m_tile: int = Field(ge=1)  # activation rows that share one dequantized weight tile

    def dequant_seconds(self, weights: float, rows: float) -> float:
        """Dequantizing `weights` weight elements for a GEMM over `rows` activation rows."""
        if weights <= 0 or rows <= 0:
            return 0.0
        return weights * math.ceil(rows / self.m_tile) * self.dequant_ops_per_weight / (self.vector_tops * 1e12)


class HardwareProfile(SourcedModel):
    """One inference node (GPU + memory), the link between nodes, executors and a router."""

    name: str
    description: str = ""
    memory_gb: float = Field(gt=0)  # memory the GPU can use (unified on GB10), 1e9 bytes
    memory_bandwidth_gbs: float = Field(gt=0)  # GB/s
    bandwidth_efficiency: float = Field(gt=0, le=1)  # fraction of peak bandwidth the kernels reach
    dense_tflops_bf16: float = Field(gt=0)
    dense_tflops_fp8: float = Field(gt=0)
    dense_tflops_fp4: float = Field(gt=0)
    compute_efficiency: float = Field(gt=0, le=1)  # fraction of peak a large GEMM reaches (see gemm_efficiency)
    # Hockney's half-performance length of a GEMM in its narrowest dimension: a d-wide matrix runs at
    # d / (d + gemm_half_width) of the large-matrix rate (twin/costmodel.py gemm_efficiency).
    gemm_half_width: float = Field(default=0.0, ge=0)
    compute_memory_overlap: float = Field(ge=0, le=1)  # 1 = roofline max(), 0 = compute + memory
    step_overhead_ms: float = Field(ge=0)  # per engine step: scheduling, launches, sampling
    reserved_memory_gb: float = Field(ge=0)  # activations, CUDA graphs, runtime: not weights, not KV
    frontend_ms_per_request: float = Field(ge=0)  # API server: parse, render, tokenize (serial)
    engine_pickup_ms: float = Field(ge=0)  # an idle engine's delay from first arrival to first step
    response_latency_ms: float = Field(ge=0)  # token produced -> bytes on the wire (detokenize, SSE)
    links: dict[str, LinkProfile]
    executors: dict[Literal["mp", "ray"], ExecutorProfile]
    router: RouterProfile
    # 4-bit weights without native FP4 kernels (None: the dense_tflops_fp4 path)
    w4a16: W4A16Profile | None = None
    # What-if / testing knob, not a fitted number: a pure decode step (no prefill chunk in the batch) takes
    # this many times its modeled time. 1.1 = "decode got 10% slower" (a kernel or driver regression) while
    # TTFT and prefill stay as they were; the nightly gate's tests use it.
    decode_slowdown: float = Field(default=1.0, gt=0)
    # Testing knob: every engine step's modeled time is multiplied by a seeded random factor with mean 1 and
    # this coefficient of variation (lognormal), so intervals, ties and adaptive stops meet a noisy engine.
    # 0 (the default) keeps the twin deterministic.
    noise_cv: float = Field(default=0.0, ge=0, le=2)
    power: PowerProfile | None = None  # None: the twin's nvidia-smi is not installed (no power figures)

    @model_validator(mode="after")
    def _needs_links(self) -> HardwareProfile:
        for needed in TRANSPORTS:
            if needed not in self.links:
                raise ValueError(f"links.{needed} is missing (every transport is needed: {', '.join(TRANSPORTS)})")
        for needed in ("mp", "ray"):
            if needed not in self.executors:
                raise ValueError(f"executors.{needed} is missing")
        return self

    @property
    def effective_bandwidth(self) -> float:
        """Bytes per second the decode kernels stream."""
        return self.memory_bandwidth_gbs * 1e9 * self.bandwidth_efficiency

    def runs_w4a16(self, bytes_per_param: float) -> bool:
        """4-bit weights on hardware without a native FP4 path: stream 4-bit, dequantize, multiply in BF16."""
        return bytes_per_param <= 0.6 and self.w4a16 is not None

    def effective_flops(self, bytes_per_param: float) -> float:
        """FLOP/s of the matrix units for weights stored in `bytes_per_param` (fp4 / fp8 / bf16 paths), for a
        large GEMM; 4-bit weights through W4A16 multiply at the BF16 rate."""
        if bytes_per_param <= 0.6 and not self.runs_w4a16(bytes_per_param):
            peak = self.dense_tflops_fp4
        elif bytes_per_param <= 1.0 and not self.runs_w4a16(bytes_per_param):
            peak = self.dense_tflops_fp8
        else:
            peak = self.dense_tflops_bf16
        return peak * 1e12 * self.compute_efficiency


# ------------------------------------------------------------------------------------------- model card


class AttentionGroup(SourcedModel):
    """Layers sharing one attention layout (sliding-window or global)."""

    layers: int = Field(ge=0)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    window: int | None = Field(default=None, ge=1)  # None = attends to the whole context
    k_eq_v: bool = False  # one tensor serves as K and V (stored once)

    def kv_elements_per_token(self, tensor_parallel: int = 1) -> float:
        """K and V elements one token adds to one layer on one rank (KV heads split, or replicated)."""
        heads_per_rank = max(1.0, self.kv_heads / tensor_parallel)
        tensors = 1 if self.k_eq_v else 2
        return tensors * heads_per_rank * self.head_dim


class ModelCard(SourcedModel):
    """An LLM's architecture, enough to count bytes and FLOPs per step."""

    name: str
    hf_id: str = ""
    description: str = ""
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    q_heads: int = Field(ge=1)
    dense_mlp_intermediate: int = Field(ge=0)  # shared expert / dense MLP in every layer
    num_experts: int = Field(ge=0)  # routed experts per layer (0 = dense model)
    experts_per_token: int = Field(ge=0)
    expert_intermediate: int = Field(ge=0)
    # Zipf exponent of how unevenly the router spreads tokens over experts (0 = uniform): decides how many
    # DISTINCT experts a decode batch reads.
    expert_popularity_skew: float = Field(default=0.0, ge=0, le=3)
    tied_embeddings: bool = True
    sliding: AttentionGroup
    full: AttentionGroup
    max_position_embeddings: int = Field(ge=1)
    default_max_model_len: int = Field(ge=1)
    # Bytes per weight by quantization; embeddings / LM head stay in bf16 under vLLM's fp8 path.
    quantization_bytes: dict[str, float]
    default_quantization: str
    unquantized_bytes_per_param: float = Field(gt=0)
    non_text_weights_gb: float = Field(ge=0)  # vision tower etc.: loaded on every rank, not read per step
    published_total_params_b: float = Field(gt=0)
    published_active_params_b: float = Field(gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.sliding.layers + self.full.layers != self.num_layers:
            raise ValueError(
                f"sliding.layers + full.layers = {self.sliding.layers + self.full.layers} "
                f"but num_layers = {self.num_layers}"
            )
        if self.default_quantization not in self.quantization_bytes:
            raise ValueError(f"default_quantization {self.default_quantization!r} is not in quantization_bytes")
        if self.experts_per_token > self.num_experts:
            raise ValueError("experts_per_token exceeds num_experts")
        return self

    # --- parameter counts (from the architecture, checked against the published totals in the tests)
    def attention_params(self, group: AttentionGroup) -> int:
        q_out = self.q_heads * group.head_dim
        kv_out = group.kv_heads * group.head_dim * (1 if group.k_eq_v else 2)
        return self.hidden_size * q_out + self.hidden_size * kv_out + q_out * self.hidden_size

    @cached_property
    def expert_params(self) -> int:
        """One routed expert: gate, up and down projections."""
        return 3 * self.hidden_size * self.expert_intermediate

    @cached_property
    def dense_layer_params(self) -> int:
        """Per-layer weights every token uses, summed over layers: attention, shared MLP, router."""
        mlp = 3 * self.hidden_size * self.dense_mlp_intermediate
        router = self.hidden_size * self.num_experts
        per_group = (
            self.sliding.layers * (self.attention_params(self.sliding) + mlp + router)
            + self.full.layers * (self.attention_params(self.full) + mlp + router)
        )
        return per_group

    @cached_property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @cached_property
    def total_params(self) -> int:
        heads = 1 if self.tied_embeddings else 2
        return (
            self.dense_layer_params
            + self.num_layers * self.num_experts * self.expert_params
            + heads * self.embedding_params
        )

    @cached_property
    def active_params(self) -> int:
        heads = 1 if self.tied_embeddings else 2
        return (
            self.dense_layer_params
            + self.num_layers * self.experts_per_token * self.expert_params
            + heads * self.embedding_params
        )

    def bytes_per_param(self, override: float | None = None) -> float:
        return override if override is not None else self.quantization_bytes[self.default_quantization]

    def weights_bytes(self, bytes_per_param: float, tensor_parallel: int = 1) -> float:
        """Weights one rank holds: text weights split k ways, the rest replicated."""
        quantized = self.dense_layer_params + self.num_layers * self.num_experts * self.expert_params
        heads = 1 if self.tied_embeddings else 2
        text = quantized * bytes_per_param + heads * self.embedding_params * self.unquantized_bytes_per_param
        return text / tensor_parallel + self.non_text_weights_gb * 1e9

    def kv_bytes_per_token(self, kv_bytes_per_element: float, tensor_parallel: int = 1) -> float:
        """KV bytes one token of context adds on one rank, all layers (sliding layers included)."""
        return kv_bytes_per_element * (
            self.sliding.layers * self.sliding.kv_elements_per_token(tensor_parallel)
            + self.full.layers * self.full.kv_elements_per_token(tensor_parallel)
        )


@lru_cache(maxsize=64)
def expert_inclusion_probabilities(num_experts: int, experts_per_token: int, skew: float) -> tuple[float, ...]:
    """Probability that one token routes to each expert, when expert popularity follows a Zipf law.

    Expert i (1-based) is picked with weight i^-skew; each token picks k experts, so expert i's inclusion
    probability is k * p_i, capped at 1 (the excess is spread over the others so they still sum to k).
    skew = 0 is uniform routing: every expert k/E.
    """
    weights = [(i + 1) ** -skew for i in range(num_experts)]
    total = sum(weights)
    probs = [experts_per_token * w / total for w in weights]
    for _ in range(num_experts):
        excess = sum(p - 1.0 for p in probs if p > 1.0)
        if excess <= 1e-12:
            break
        free = sum(p for p in probs if p < 1.0)
        probs = [1.0 if p >= 1.0 else p + excess * p / free for p in probs]
    return tuple(probs)


@lru_cache(maxsize=16384)
def expected_distinct_experts(num_experts: int, experts_per_token: int, tokens: int, skew: float = 0.0) -> float:
    """Expected number of distinct experts a layer touches for `tokens` tokens.

    Uniform routing (skew 0): a given expert is missed by one token with probability 1 - k/E and by all b
    tokens with (1 - k/E)^b, so E * (1 - (1 - k/E)^b) experts are touched. With skewed popularity each
    expert has its own inclusion probability q_i and the sum is over (1 - (1 - q_i)^b).
    """
    if num_experts == 0 or tokens <= 0:
        return 0.0
    if skew == 0.0:
        miss = 1.0 - experts_per_token / num_experts
        return num_experts * (1.0 - math.pow(miss, tokens))
    return sum(
        1.0 - math.pow(1.0 - q, tokens) for q in expert_inclusion_probabilities(num_experts, experts_per_token, skew)
    )


class DerivedProfile(StrictModel):
    """A profile written as another one sped up: every bandwidth and FLOP rate times `speedup`, every
    latency and overhead divided by it (the `fast` test profile keeps the calibrated gb10's shape)."""

    name: str
    description: str = ""
    derived_from: str
    speedup: float = Field(gt=0)
    decode_slowdown: float | None = Field(default=None, gt=0)  # replaces the base's (not scaled)
    noise_cv: float | None = Field(default=None, ge=0, le=2)  # replaces the base's (not scaled)


_RATE_KEYS = frozenset({"memory_bandwidth_gbs", "dense_tflops_bf16", "dense_tflops_fp8", "dense_tflops_fp4", "bandwidth_gbit_s", "vector_tops"})
_TIME_SUFFIXES = ("_ms", "_us")


def _scaled(data: Any, speedup: float, note: str) -> Any:
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, item in data.items():
        if isinstance(item, dict) and set(item) == {"value", "source"}:
            value = item["value"]
            if key in _RATE_KEYS:
                value = value * speedup
            elif key.endswith(_TIME_SUFFIXES):
                value = value / speedup
            out[key] = {"value": value, "source": f"{item['source']} [{note}]"}
        else:
            out[key] = _scaled(item, speedup, note)
    return out


def hardware_data(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """The profile's YAML as a mapping ({value, source} pairs kept), a derived profile resolved; and what it
    was read from. `topo calibrate` writes a profile from it with some constants replaced."""
    path = resolve_config("hardware", str(name_or_path))
    data = read_yaml(path)
    if isinstance(data, dict) and "derived_from" in data:
        derived = validate_model(DerivedProfile, data, source=str(path))
        base_path = resolve_config("hardware", derived.derived_from)
        if base_path.resolve() == path.resolve():
            raise ConfigError(f"{path}: derived_from names the file itself")
        base = read_yaml(base_path)
        if not isinstance(base, dict) or "derived_from" in base:
            raise ConfigError(f"{path}: derived_from must name a complete profile ({base_path} is not one)")
        note = f"{derived.name} = {derived.derived_from} sped up x{derived.speedup:g}"
        scaled = _scaled(base, derived.speedup, note)
        scaled["name"] = derived.name
        scaled["description"] = derived.description or note
        if derived.decode_slowdown is not None:
            scaled["decode_slowdown"] = derived.decode_slowdown
        if derived.noise_cv is not None:
            scaled["noise_cv"] = derived.noise_cv
        return scaled, f"{path} (derived from {base_path})"
    if data is None:
        raise ConfigError(f"{path}: the file is empty (expected a hardware profile)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a hardware profile (a mapping), got {type(data).__name__}")
    return data, str(path)


def load_hardware(name_or_path: str | Path) -> HardwareProfile:
    """`gb10` -> configs/hardware/gb10.yaml; a path is loaded as it is.

    A file with `derived_from: OTHER` and `speedup: X` is OTHER with rates x X and latencies / X.
    """
    data, source = hardware_data(name_or_path)
    return validate_model(HardwareProfile, data, source=source)


def load_card(name_or_path: str | Path) -> ModelCard:
    """`gemma4-26b` -> configs/cards/gemma4-26b.yaml; a path is loaded as it is."""
    return load_model(ModelCard, resolve_config("cards", str(name_or_path)))


def describe_sources(section: SourcedModel, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, value, source) for every sourced constant, nested sections included: for printing."""
    rows: list[tuple[str, Any, str]] = []
    for key, source in section.sources.items():
        rows.append((f"{prefix}{key}", getattr(section, key), source))
    for key in type(section).model_fields:
        value = getattr(section, key)
        if isinstance(value, SourcedModel):
            rows.extend(describe_sources(value, f"{prefix}{key}."))
        elif isinstance(value, dict):
            for sub_key, sub in value.items():
                if isinstance(sub, SourcedModel):
                    rows.extend(describe_sources(sub, f"{prefix}{key}.{sub_key}."))
    return rows


__all__ = [
    "HardwareProfile",
    "LinkProfile",
    "W4A16Profile",
    "Transport",
    "TRANSPORTS",
    "transport_from_env",
    "ExecutorProfile",
    "RouterProfile",
    "PowerProfile",
    "ModelCard",
    "AttentionGroup",
    "expected_distinct_experts",
    "load_hardware",
    "hardware_data",
    "load_card",
    "describe_sources",
]
