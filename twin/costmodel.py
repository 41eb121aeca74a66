"""How long one engine step takes on named hardware: bytes moved, FLOPs done, messages sent.

A step is a batch of sequences, each adding `new_tokens` to a context of `context_tokens` already in the
KV cache (1 new token = a decode; more = a prefill chunk). Per rank of a TP=k engine:

- memory: the weights the batch touches (dense part always; for an MoE the expected number of DISTINCT
  experts for the step's tokens; the LM head), plus the KV cache read by attention and written for the
  new tokens, at the effective memory bandwidth;
- compute: 2 FLOPs per weight per token (routed experts: k per token) plus attention, at the effective
  matrix throughput of the weights' number format, each weight matrix at the efficiency its shape allows
  (`gemm_efficiency`: TP=2 halves a 704-wide expert to 352 per rank, and narrow GEMMs run slower);
  4-bit weights on hardware without native FP4 kernels take the W4A16 path: they stream at 4 bits, are
  dequantized to BF16 in the GEMM (CUDA-core work) and multiplied at the BF16 rate;
- memory and compute overlap by `compute_memory_overlap` (1 = roofline max, 0 = sum);
- TP: two ring all-reduces of the step's activations per layer over the link (the NCCL transport the
  engine's environment implies, twin.profiles.transport_from_env), plus a gather of the sampled rows'
  logits, plus the executor's per-step overhead;
- a fixed per-step overhead (scheduling, kernel launches, sampling);
- the profile's `decode_slowdown` (a what-if knob, 1.0 normally) multiplies a pure decode step's time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, TypeVar

import numpy as np

from twin.profiles import AttentionGroup, HardwareProfile, ModelCard, Transport, expected_distinct_experts

_F = TypeVar("_F", float, "np.ndarray")  # one step's figure, or one per step of a decode run

ACTIVATION_BYTES = 2  # bf16 activations on the wire
LOGIT_BYTES = 2  # bf16 logits gathered to rank 0


@dataclass(frozen=True)
class SeqWork:
    """One sequence's share of a step."""

    new_tokens: int  # tokens computed this step (1 for a decode)
    context_tokens: int  # tokens already in the KV cache before this step
    samples: bool = True  # produces a token this step (False for a prefill chunk that is not the last)


@dataclass(frozen=True)
class StepCost:
    """A step's modeled time and what it is made of (per rank; ranks run in parallel)."""

    seconds: float
    weight_bytes: float
    kv_bytes: float
    flops: float
    memory_seconds: float
    compute_seconds: float
    comm_seconds: float
    overhead_seconds: float


def ring_allreduce_seconds(
    message_bytes: float, ranks: int, bytes_per_second: float, latency_s: float, collective_s: float = 0.0
) -> float:
    """Ring all-reduce: a fixed cost, then 2(k-1) hops, each a message latency plus 1/k of the data."""
    if ranks <= 1:
        return 0.0
    hops = 2 * (ranks - 1)
    return collective_s + hops * latency_s + hops / ranks * message_bytes / bytes_per_second


def gather_seconds(
    message_bytes: float, ranks: int, bytes_per_second: float, latency_s: float, collective_s: float = 0.0
) -> float:
    """Gather of k equal shards to one rank: a fixed cost, one hop, k-1 shards cross the link."""
    if ranks <= 1:
        return 0.0
    return collective_s + latency_s + (ranks - 1) / ranks * message_bytes / bytes_per_second


def gemm_efficiency(narrow: float, half_width: float) -> float:
    """Share of the large-GEMM rate a weight matrix whose narrowest dimension is `narrow` reaches.

    Hockney's half-performance length: every output tile pays a fixed cost (filling the k-loop's software
    pipeline, the epilogue writing the tile, the last partial wave) worth `half_width` of the narrow
    dimension, so a d-wide matrix runs at d / (d + half_width). With half_width 0 every GEMM runs at the rate.
    """
    if half_width <= 0:
        return 1.0
    return narrow / (narrow + half_width)


@dataclass(frozen=True)
class Gemm:
    """One weight matrix as one rank holds it: `params` weights, the narrower of its two dimensions, how
    many of it a token multiplies (1; a routed expert: per token routed to it), in the quantized format or not."""

    name: str
    params: float  # weights on one rank
    narrow: float  # the smaller of its two dimensions on one rank
    per_layer: int  # how many layers have it (0 for the LM head)
    expert: bool = False
    quantized: bool = True


def rank_gemms(card: ModelCard, tp: int) -> tuple[Gemm, ...]:
    """The weight matrices of one rank of a TP=tp engine (vLLM's fused qkv and gate_up projections).

    Column-parallel matrices (qkv, gate_up) split their output, row-parallel ones (o, down) their input;
    the MoE router is replicated; the LM head splits the vocabulary. KV heads fewer than ranks are
    replicated (one head per rank)."""
    h = card.hidden_size
    out: list[Gemm] = []
    for label, group in (("sliding", card.sliding), ("full", card.full)):
        if group.layers == 0:
            continue
        q = card.q_heads * group.head_dim / tp
        kv = (1 if group.k_eq_v else 2) * max(1.0, group.kv_heads / tp) * group.head_dim
        out.append(Gemm(f"{label}.qkv", h * (q + kv), min(h, q + kv), group.layers))
        out.append(Gemm(f"{label}.o", q * h, min(q, h), group.layers))
    layers = card.num_layers
    if card.dense_mlp_intermediate:
        shared = card.dense_mlp_intermediate / tp
        out.append(Gemm("mlp.gate_up", h * 2 * shared, min(h, 2 * shared), layers))
        out.append(Gemm("mlp.down", shared * h, min(shared, h), layers))
    if card.num_experts:
        out.append(Gemm("router", h * card.num_experts, min(h, card.num_experts), layers, quantized=False))
        inner = card.expert_intermediate / tp
        out.append(Gemm("expert.gate_up", h * 2 * inner, min(h, 2 * inner), layers, expert=True))
        out.append(Gemm("expert.down", inner * h, min(inner, h), layers, expert=True))
    vocab = card.vocab_size / tp
    out.append(Gemm("lm_head", h * vocab, min(h, vocab), 0, quantized=False))
    return tuple(out)


def attention_pairs(group: AttentionGroup, new_tokens: int, context_tokens: int) -> float:
    """Sum over the new tokens of how many positions each attends to (itself included)."""
    total = 0.0
    first = context_tokens + 1  # 1-based position of the first new token
    last = context_tokens + new_tokens
    if group.window is None:
        # positions first..last attend to p tokens each
        return (first + last) * new_tokens / 2
    w = group.window
    # positions <= w attend to p; beyond, to w
    upto = min(last, w)
    if upto >= first:
        total += (first + upto) * (upto - first + 1) / 2
    beyond_start = max(first, w + 1)
    if last >= beyond_start:
        total += (last - beyond_start + 1) * w
    return total


def attended_kv_tokens(group: AttentionGroup, context_after: int) -> int:
    """KV entries a sequence's attention reads in one layer of this group."""
    return context_after if group.window is None else min(context_after, group.window)


def _sum_rows(values: np.ndarray) -> np.ndarray:
    """Per column, 0.0 + row 0 + row 1 + ... in row order: a Python loop's running total, not a pairwise sum."""
    return np.add.accumulate(values, axis=0)[-1]  # accumulate is sequential; a reduction may sum pairwise


class CostModel:
    """Step time of an engine with `tensor_parallel` ranks of `hardware` running `card`."""

    def __init__(
        self,
        hardware: HardwareProfile,
        card: ModelCard,
        *,
        tensor_parallel: int = 1,
        executor: Literal["uni", "mp", "ray"] = "uni",
        link: Transport = "roce2",
        weight_bytes_per_param: float | None = None,
        kv_cache_bytes_per_element: float | None = None,
    ) -> None:
        self.hw = hardware
        self.card = card
        self.tp = tensor_parallel
        self.executor = executor
        self.link = hardware.links[link]
        self.bytes_per_param = card.bytes_per_param(weight_bytes_per_param)
        self.kv_bytes_per_element = kv_cache_bytes_per_element if kv_cache_bytes_per_element is not None else 1.0
        self.gemms = rank_gemms(card, tensor_parallel)
        if executor != "uni" and tensor_parallel > 1:
            self.executor_overhead = hardware.executors[executor].step_overhead_ms / 1000
        else:
            self.executor_overhead = 0.0

    # ----------------------------------------------------------------------------------- memory traffic
    def weight_bytes(self, step_tokens: int, sampled_rows: int) -> float:
        """Weight bytes one rank reads in a step of `step_tokens` tokens."""
        card = self.card
        if step_tokens <= 0:
            return 0.0
        dense = card.dense_layer_params * self.bytes_per_param
        experts = (
            expected_distinct_experts(card.num_experts, card.experts_per_token, step_tokens, card.expert_popularity_skew)
            * card.num_layers
            * card.expert_params
            * self.bytes_per_param
        )
        lm_head = card.embedding_params * card.unquantized_bytes_per_param if sampled_rows > 0 else 0.0
        return (dense + experts + lm_head) / self.tp

    def kv_bytes(self, seqs: Sequence[SeqWork]) -> float:
        """KV bytes one rank reads (attention over the context) and writes (the new tokens)."""
        card = self.card
        total = 0.0
        for group in (card.sliding, card.full):
            per_token = group.kv_elements_per_token(self.tp) * self.kv_bytes_per_element * group.layers
            for seq in seqs:
                after = seq.context_tokens + seq.new_tokens
                total += per_token * (attended_kv_tokens(group, after) + seq.new_tokens)
        return total

    # ---------------------------------------------------------------------------------------- compute
    def flops(self, seqs: Sequence[SeqWork]) -> float:
        """FLOPs one rank does in the step (what StepCost reports; the time comes from compute_seconds)."""
        card = self.card
        tokens = sum(s.new_tokens for s in seqs)
        sampled = sum(1 for s in seqs if s.samples)
        per_token = card.dense_layer_params + card.num_layers * card.experts_per_token * card.expert_params
        linear = 2.0 * tokens * per_token + 2.0 * sampled * card.embedding_params
        return linear / self.tp + self.attention_flops(seqs)

    def attention_flops(self, seqs: Sequence[SeqWork]) -> float:
        """QK^T and PV on one rank: 2 matmuls x 2 FLOPs per multiply-add, heads split over the ranks."""
        card = self.card
        attention = 0.0
        for group in (card.sliding, card.full):
            width = card.q_heads * group.head_dim
            for seq in seqs:
                attention += 4.0 * width * attention_pairs(group, seq.new_tokens, seq.context_tokens) * group.layers
        return attention / self.tp

    def compute_seconds(self, seqs: Sequence[SeqWork]) -> float:
        """Every weight matrix at the efficiency its shape allows, attention at the large-GEMM rate, and
        on the W4A16 path the dequantization of each weight tile (once per m_tile activation rows)."""
        tokens = sum(s.new_tokens for s in seqs)
        sampled = sum(1 for s in seqs if s.samples)
        attention = self.attention_flops(seqs) / self.hw.effective_flops(self.bytes_per_param)
        return self._add_linear_seconds(attention, tokens, sampled)

    def _add_linear_seconds(self, seconds: _F, tokens: int, sampled: int) -> _F:
        """`seconds` plus the weight matrices' share of compute_seconds, added in the same order either way
        (a float, or an array of decode steps' attention seconds: the same sums, element by element)."""
        hw, card = self.hw, self.card
        quantized_rate = hw.effective_flops(self.bytes_per_param)
        plain_rate = hw.effective_flops(card.unquantized_bytes_per_param)
        w4a16 = hw.w4a16 if hw.runs_w4a16(self.bytes_per_param) else None
        distinct = expected_distinct_experts(card.num_experts, card.experts_per_token, tokens,
                                             card.expert_popularity_skew)
        for gemm in self.gemms:
            if gemm.per_layer == 0:  # the LM head, for the sampled rows only
                rows, layers = sampled, 1
            else:
                rows = tokens * (card.experts_per_token if gemm.expert else 1)
                layers = gemm.per_layer
            rate = (quantized_rate if gemm.quantized else plain_rate) * gemm_efficiency(gemm.narrow, hw.gemm_half_width)
            seconds = seconds + 2.0 * rows * gemm.params * layers / rate
            if w4a16 is not None and gemm.quantized and rows > 0:
                if gemm.expert:  # each touched expert's tile is dequantized for the rows routed to it
                    seconds = seconds + w4a16.dequant_seconds(distinct * layers * gemm.params, rows / distinct)
                else:
                    seconds = seconds + w4a16.dequant_seconds(layers * gemm.params, rows)
        return seconds

    # ------------------------------------------------------------------------------------ communication
    def comm_seconds(self, step_tokens: int, sampled_rows: int) -> float:
        if self.tp <= 1 or step_tokens <= 0:
            return 0.0
        latency = self.link.latency_us / 1e6
        fixed = self.link.collective_us / 1e6
        bandwidth = self.link.bytes_per_second
        activations = step_tokens * self.card.hidden_size * ACTIVATION_BYTES
        allreduce = 2 * self.card.num_layers * ring_allreduce_seconds(activations, self.tp, bandwidth, latency, fixed)
        if sampled_rows == 0:  # a prefill chunk that samples nothing gathers no logits
            return allreduce
        logits = sampled_rows * self.card.vocab_size * LOGIT_BYTES
        return allreduce + gather_seconds(logits, self.tp, bandwidth, latency, fixed)

    # ------------------------------------------------------------------------------------------- total
    def step(self, seqs: Sequence[SeqWork]) -> StepCost:
        tokens = sum(s.new_tokens for s in seqs)
        if tokens == 0:
            return StepCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        sampled = sum(1 for s in seqs if s.samples)
        weight_bytes = self.weight_bytes(tokens, sampled)
        kv_bytes = self.kv_bytes(seqs)
        flops = self.flops(seqs)
        memory_s = (weight_bytes + kv_bytes) / self.hw.effective_bandwidth
        compute_s = self.compute_seconds(seqs)
        comm_s = self.comm_seconds(tokens, sampled)
        overhead = self.step_overhead_seconds
        seconds = self._step_seconds(memory_s, compute_s, comm_s, all(s.new_tokens == 1 for s in seqs))
        return StepCost(
            seconds=seconds,
            weight_bytes=weight_bytes,
            kv_bytes=kv_bytes,
            flops=flops,
            memory_seconds=memory_s,
            compute_seconds=compute_s,
            comm_seconds=comm_s,
            overhead_seconds=overhead,
        )

    @property
    def step_overhead_seconds(self) -> float:
        return self.hw.step_overhead_ms / 1000 + self.executor_overhead

    def _step_seconds(self, memory_s: _F, compute_s: _F, comm_s: float, pure_decode: bool) -> _F:
        """A step's time from its parts (floats, or arrays of decode steps element by element)."""
        overlap = self.hw.compute_memory_overlap
        if isinstance(memory_s, float):
            busy = max(memory_s, compute_s) + (1.0 - overlap) * min(memory_s, compute_s)
        else:
            busy = np.maximum(memory_s, compute_s) + (1.0 - overlap) * np.minimum(memory_s, compute_s)
        seconds = busy + comm_s + self.step_overhead_seconds
        if self.hw.decode_slowdown != 1.0 and pure_decode:
            seconds = seconds * self.hw.decode_slowdown  # the profile's what-if knob: pure decode steps only
        return seconds

    def decode_run_seconds(self, contexts: Sequence[int], steps: int) -> list[float]:
        """The times of `steps` consecutive pure-decode steps of the sequences whose contexts (tokens in the
        KV cache) are `contexts` before the first: each step adds one token to every one of them.

        The same arithmetic as `step()` of each of those steps, in the same order, vectorized over the
        steps: step j (0-based) of sequence i is SeqWork(1, contexts[i] + j), whose attention reads
        and pairs with min(contexts[i] + j + 1, window) positions; the results are bit for bit `step()`'s.
        """
        count = len(contexts)
        if count == 0 or steps <= 0:
            return []
        card = self.card
        after = np.asarray(contexts, dtype=np.int64)[:, None] + np.arange(1, steps + 1, dtype=np.int64)[None, :]
        kv_bytes = np.zeros(steps)
        attention = np.zeros(steps)
        groups = [(group, after if group.window is None else np.minimum(after, group.window))
                  for group in (card.sliding, card.full)]
        for group, attended in groups:  # kv_bytes(): per group, sequences in order
            per_token = group.kv_elements_per_token(self.tp) * self.kv_bytes_per_element * group.layers
            kv_bytes = kv_bytes + _sum_rows(per_token * (attended + 1))
        for group, attended in groups:  # attention_flops(): a decode's pairs are the positions it attends
            width = card.q_heads * group.head_dim
            attention = attention + _sum_rows(4.0 * width * attended.astype(np.float64) * group.layers)
        attention = attention / self.tp
        memory_s = (self.weight_bytes(count, count) + kv_bytes) / self.hw.effective_bandwidth
        compute_s = self._add_linear_seconds(attention / self.hw.effective_flops(self.bytes_per_param), count, count)
        seconds = self._step_seconds(memory_s, compute_s, self.comm_seconds(count, count), True)
        return seconds.tolist()

    # ------------------------------------------------------------------------------------ KV capacity
    def kv_block_bytes(self, block_size: int) -> float:
        return block_size * self.card.kv_bytes_per_token(self.kv_bytes_per_element, self.tp)

    def kv_capacity_blocks(self, gpu_memory_utilization: float, block_size: int) -> int:
        """Blocks of KV one rank can hold: its share of memory minus its weights and reserved memory.

        A block holds `block_size` tokens of every layer; vLLM's hybrid allocator would free sliding-window
        layers' blocks beyond the window, which only matters past window-length contexts (not counted).
        """
        budget = self.hw.memory_gb * 1e9 * gpu_memory_utilization
        free = budget - self.card.weights_bytes(self.bytes_per_param, self.tp) - self.hw.reserved_memory_gb * 1e9
        if free <= 0:
            return 0
        return int(free // self.kv_block_bytes(block_size))
