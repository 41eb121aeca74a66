"""How long one engine step takes on named hardware: bytes moved, FLOPs done, messages sent.

A step is a batch of sequences, each adding `new_tokens` to a context of `context_tokens` already in the
KV cache (1 new token = a decode; more = a prefill chunk). Per rank of a TP=k engine:

- memory: the weights the batch touches (dense part always; for an MoE the expected number of DISTINCT
  experts for the step's tokens; the LM head), plus the KV cache read by attention and written for the
  new tokens, at the effective memory bandwidth;
- compute: 2 FLOPs per weight per token (routed experts: k per token) plus attention, at the effective
  matrix throughput of the weights' number format;
- memory and compute overlap by `compute_memory_overlap` (1 = roofline max, 0 = sum);
- TP: two ring all-reduces of the step's activations per layer over the link, plus a gather of the
  sampled rows' logits, plus the executor's per-step overhead;
- a fixed per-step overhead (scheduling, kernel launches, sampling);
- the profile's `decode_slowdown` (a what-if knob, 1.0 normally) multiplies a pure decode step's time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from twin.profiles import AttentionGroup, HardwareProfile, ModelCard, expected_distinct_experts

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


def ring_allreduce_seconds(message_bytes: float, ranks: int, bytes_per_second: float, latency_s: float) -> float:
    """Ring all-reduce: 2(k-1) hops, each a message latency plus 1/k of the data over the link."""
    if ranks <= 1:
        return 0.0
    hops = 2 * (ranks - 1)
    return hops * latency_s + hops / ranks * message_bytes / bytes_per_second


def gather_seconds(message_bytes: float, ranks: int, bytes_per_second: float, latency_s: float) -> float:
    """Gather of k equal shards to one rank: k-1 shards cross the link."""
    if ranks <= 1:
        return 0.0
    return latency_s + (ranks - 1) / ranks * message_bytes / bytes_per_second


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


class CostModel:
    """Step time of an engine with `tensor_parallel` ranks of `hardware` running `card`."""

    def __init__(
        self,
        hardware: HardwareProfile,
        card: ModelCard,
        *,
        tensor_parallel: int = 1,
        executor: Literal["uni", "mp", "ray"] = "uni",
        link: str = "roce",
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
        card = self.card
        tokens = sum(s.new_tokens for s in seqs)
        sampled = sum(1 for s in seqs if s.samples)
        per_token = card.dense_layer_params + card.num_layers * card.experts_per_token * card.expert_params
        linear = 2.0 * tokens * per_token + 2.0 * sampled * card.embedding_params
        attention = 0.0
        for group in (card.sliding, card.full):
            width = card.q_heads * group.head_dim  # QK^T and PV: 2 matmuls x 2 FLOPs per multiply-add
            for seq in seqs:
                attention += 4.0 * width * attention_pairs(group, seq.new_tokens, seq.context_tokens) * group.layers
        return (linear + attention) / self.tp

    # ------------------------------------------------------------------------------------ communication
    def comm_seconds(self, step_tokens: int, sampled_rows: int) -> float:
        if self.tp <= 1 or step_tokens <= 0:
            return 0.0
        latency = self.link.latency_us / 1e6
        bandwidth = self.link.bytes_per_second
        activations = step_tokens * self.card.hidden_size * ACTIVATION_BYTES
        allreduce = 2 * self.card.num_layers * ring_allreduce_seconds(activations, self.tp, bandwidth, latency)
        logits = sampled_rows * self.card.vocab_size * LOGIT_BYTES
        return allreduce + gather_seconds(logits, self.tp, bandwidth, latency)

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
        compute_s = flops / self.hw.effective_flops(self.bytes_per_param)
        overlap = self.hw.compute_memory_overlap
        busy = max(memory_s, compute_s) + (1.0 - overlap) * min(memory_s, compute_s)
        comm_s = self.comm_seconds(tokens, sampled)
        overhead = self.hw.step_overhead_ms / 1000 + self.executor_overhead
        seconds = busy + comm_s + overhead
        if self.hw.decode_slowdown != 1.0 and all(s.new_tokens == 1 for s in seqs):
            seconds *= self.hw.decode_slowdown  # the profile's what-if knob: pure decode steps only
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
