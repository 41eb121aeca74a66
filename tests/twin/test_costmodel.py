"""The cost model's parts against hand-computed values (tiny card: bf16 weights, numbers small enough)."""

from __future__ import annotations

import math

import pytest

from common.config import CONFIGS_DIR
from common.errors import ConfigError
from twin.costmodel import (
    CostModel,
    SeqWork,
    attention_pairs,
    gather_seconds,
    gemm_efficiency,
    rank_gemms,
    ring_allreduce_seconds,
)
from twin.profiles import (
    AttentionGroup,
    HardwareProfile,
    expected_distinct_experts,
    load_card,
    load_hardware,
    transport_from_env,
)

# tiny card, by hand:
#   attention per layer: q 256x256 + k,v 256x(2*64*2=256) + o 256x256       = 196_608
#   shared MLP 3*256*512 = 393_216, router 256*8 = 2_048                     -> 591_872 per layer
#   4 layers                                                                  -> 2_367_488 dense params
#   one expert 3*256*128                                                      = 98_304
#   embedding / tied LM head 4096*256                                         = 1_048_576
TINY_DENSE = 2_367_488
TINY_EXPERT = 98_304
TINY_EMBED = 1_048_576


@pytest.fixture(scope="module")
def tiny():
    return load_card("tiny")


@pytest.fixture(scope="module")
def gb10():
    return load_hardware("gb10")


def test_expected_distinct_experts_by_hand():
    assert expected_distinct_experts(128, 8, 1) == pytest.approx(8.0)
    # 128 * (1 - (120/128)^2) = 128 * 0.12109375
    assert expected_distinct_experts(128, 8, 2) == pytest.approx(15.5)
    assert expected_distinct_experts(8, 2, 2) == pytest.approx(3.5)  # 8 * (1 - 0.75^2)
    assert expected_distinct_experts(128, 8, 0) == 0.0
    assert expected_distinct_experts(128, 8, 8192) == pytest.approx(128.0)
    # grows with the batch but never past E
    values = [expected_distinct_experts(128, 8, b) for b in (1, 2, 4, 8, 16, 64)]
    assert values == sorted(values) and values[-1] < 128


def test_tiny_card_parameter_counts(tiny):
    assert tiny.dense_layer_params == TINY_DENSE
    assert tiny.expert_params == TINY_EXPERT
    assert tiny.embedding_params == TINY_EMBED
    assert tiny.total_params == TINY_DENSE + 4 * 8 * TINY_EXPERT + TINY_EMBED
    assert tiny.active_params == TINY_DENSE + 4 * 2 * TINY_EXPERT + TINY_EMBED


def test_gemma_card_reproduces_published_facts():
    card = load_card("gemma4-26b")
    assert card.total_params / 1e9 == pytest.approx(card.published_total_params_b, rel=0.02)
    assert card.active_params / 1e9 == pytest.approx(card.published_active_params_b, rel=0.02)
    gib = 2**30
    assert card.weights_bytes(1.0) / gib == pytest.approx(25.67, rel=0.01)  # published FP8 footprint
    assert card.weights_bytes(1.0, tensor_parallel=2) / gib == pytest.approx(13.57, rel=0.01)  # per node, TP=2


def test_decode_step_bytes_by_hand(tiny, gb10):
    model = CostModel(gb10, tiny, kv_cache_bytes_per_element=2.0)
    # one decode token: dense 2_367_488*2 + 2 experts x 4 layers x 98_304*2 + LM head 1_048_576*2
    assert model.weight_bytes(1, 1) == 4_734_976 + 1_572_864 + 2_097_152
    # two tokens touch 3.5 experts per layer on average
    assert model.weight_bytes(2, 2) == pytest.approx(4_734_976 + 3.5 * 4 * TINY_EXPERT * 2 + 2_097_152)
    # KV of one decode at context 100: 2*2*64 elements x 2 bytes = 512 B per token per layer
    #   sliding layers (window 64): read 64 + write 1 = 65 tokens x 2 layers
    #   full layers: read 101 + write 1 = 102 tokens x 2 layers
    assert model.kv_bytes([SeqWork(1, 100)]) == 65 * 512 * 2 + 102 * 512 * 2
    cost = model.step([SeqWork(1, 100)])
    expected_memory = (8_404_992 + 171_008) / (gb10.memory_bandwidth_gbs * 1e9 * gb10.bandwidth_efficiency)
    assert cost.memory_seconds == pytest.approx(expected_memory)
    assert cost.comm_seconds == 0.0


def test_tensor_parallel_halves_per_rank_bytes(tiny, gb10):
    solo = CostModel(gb10, tiny, kv_cache_bytes_per_element=2.0)
    tp2 = CostModel(gb10, tiny, tensor_parallel=2, executor="mp", kv_cache_bytes_per_element=2.0)
    assert tp2.weight_bytes(1, 1) == pytest.approx(solo.weight_bytes(1, 1) / 2)
    assert tp2.kv_bytes([SeqWork(1, 100)]) == pytest.approx(solo.kv_bytes([SeqWork(1, 100)]) / 2)
    # 2 KV heads over 4 ranks: each rank keeps a whole head (replicated), not half of one
    tp4 = CostModel(gb10, tiny, tensor_parallel=4, executor="mp", kv_cache_bytes_per_element=2.0)
    assert tp4.kv_bytes([SeqWork(1, 100)]) == pytest.approx(solo.kv_bytes([SeqWork(1, 100)]) / 2)


def test_ring_allreduce_by_hand():
    # k=2: 2 hops x 10 us + 2(k-1)/k x 1 MB / 1 GB/s = 20 us + 1 ms
    assert ring_allreduce_seconds(1e6, 2, 1e9, 10e-6) == pytest.approx(20e-6 + 1e-3)
    # k=4: 6 hops x 10 us + 6/4 x 1 ms
    assert ring_allreduce_seconds(1e6, 4, 1e9, 10e-6) == pytest.approx(60e-6 + 1.5e-3)
    assert ring_allreduce_seconds(1e6, 1, 1e9, 10e-6) == 0.0
    assert gather_seconds(8192, 2, 1e9, 10e-6) == pytest.approx(10e-6 + 4096 / 1e9)


def test_tp_step_communication_by_hand(tiny, gb10):
    model = CostModel(gb10, tiny, tensor_parallel=2, executor="mp", link="roce2")
    link = gb10.links["roce2"]
    bandwidth = 200e9 / 8 * link.efficiency
    latency = link.latency_us / 1e6
    fixed = link.collective_us / 1e6
    # one decode token: 2 all-reduces per layer of 256 activations x 2 bytes, then a gather of 4096 bf16 logits
    per_allreduce = fixed + 2 * latency + 1 * 512 / bandwidth
    expected = 2 * 4 * per_allreduce + fixed + latency + 0.5 * 4096 * 2 / bandwidth
    assert model.comm_seconds(1, 1) == pytest.approx(expected)
    sockets = CostModel(gb10, tiny, tensor_parallel=2, executor="mp", link="sockets")
    assert sockets.comm_seconds(1, 1) > model.comm_seconds(1, 1)


def test_link_per_transport_by_hand(gb10):
    """gemma-4-26B, TP=2, one decode token and one 8192-token prefill step, on each transport (gb10.yaml):
    roce2 200 Gb/s x 0.90 = 22.5 GB/s, roce1 111.7 Gb/s x 0.95 = 13.26 GB/s, sockets 100 Gb/s x 0.30 =
    3.75 GB/s; a hop 2.5 / 2.5 / 25 us, a collective 6 us."""
    card = load_card("gemma4-26b")
    assert gb10.links["roce2"].bytes_per_second == pytest.approx(22.5e9)
    assert gb10.links["roce1"].bytes_per_second == pytest.approx(13.264375e9)
    assert gb10.links["sockets"].bytes_per_second == pytest.approx(3.75e9)

    def comm(link: str, tokens: int, sampled: int) -> float:
        return CostModel(gb10, card, tensor_parallel=2, executor="mp", link=link).comm_seconds(tokens, sampled)

    # decode: 60 all-reduces of 2816 x 2 = 5632 bytes (a 2-rank ring: 2 hops of half the message each),
    # then the gather of 262144 x 2 / 2 = 262144 bytes of logits
    roce2_decode = 60 * (6e-6 + 2 * 2.5e-6 + 5632 / 22.5e9) + 6e-6 + 2.5e-6 + 262144 / 22.5e9
    # 60 x (6 + 5 + 0.25) us = 675 us, + 8.5 us + 11.65 us of the gather
    assert roce2_decode == pytest.approx(0.0006952, rel=1e-3)
    assert comm("roce2", 1, 1) == pytest.approx(roce2_decode)
    sockets_decode = 60 * (6e-6 + 2 * 25e-6 + 5632 / 3.75e9) + 6e-6 + 25e-6 + 262144 / 3.75e9
    assert comm("sockets", 1, 1) == pytest.approx(sockets_decode)  # ~3.55 ms a step
    # prefill: 60 all-reduces of 8192 x 5632 = 46.1 MB, the bandwidth term dominates
    message = 8192 * 5632
    for link, bandwidth, hop in (("roce2", 22.5e9, 2.5e-6), ("roce1", 13.264375e9, 2.5e-6), ("sockets", 3.75e9, 25e-6)):
        assert comm(link, 8192, 0) == pytest.approx(60 * (6e-6 + 2 * hop + message / bandwidth))
    assert comm("roce2", 8192, 0) == pytest.approx(0.1236, rel=1e-3)  # 123.6 ms
    assert comm("sockets", 8192, 0) == pytest.approx(0.7416, rel=1e-3)  # 741.6 ms: as long as the compute


@pytest.mark.parametrize(
    ("env", "transport"),
    [
        ({}, "roce1"),  # NCCL auto-detects the RoCE device it finds: one twin
        ({"GLOO_SOCKET_IFNAME": "enp1s0f1np1", "NCCL_SOCKET_IFNAME": "enp1s0f1np1"}, "roce1"),
        ({"NCCL_IB_DISABLE": "1"}, "sockets"),
        ({"NCCL_IB_DISABLE": "true", "NCCL_SOCKET_IFNAME": "enp1s0f1np1"}, "sockets"),
        ({"NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1"}, "roce2"),
        ({"NCCL_IB_HCA": "=rocep1s0f1:1,roceP2p1s0f1:1"}, "roce2"),
        ({"NCCL_IB_HCA": "rocep1s0f1"}, "roce1"),
        ({"NCCL_IB_HCA": "rocep1s0f1, rocep1s0f1"}, "roce1"),  # the same twin twice is one twin
        ({"NCCL_IB_HCA": "^mlx5_0"}, "roce1"),
        ({"NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1", "NCCL_IB_DISABLE": "1"}, "sockets"),
        ({"NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1", "NCCL_IB_DISABLE": "0"}, "roce2"),
        ({"NCCL_IB_HCA": " "}, "roce1"),
    ],
)
def test_transport_follows_the_nccl_env(env, transport):
    assert transport_from_env(env) == transport


def test_gemm_efficiency_by_hand():
    assert gemm_efficiency(704, 256) == pytest.approx(704 / 960)  # 0.733
    assert gemm_efficiency(352, 256) == pytest.approx(352 / 608)  # 0.579
    assert gemm_efficiency(256, 256) == 0.5
    assert gemm_efficiency(100, 0) == 1.0


def test_tp_halves_each_expert_gemm_and_it_runs_slower(gb10):
    """gemma-4-26B: solo an expert is gate_up 2816 -> 1408 and down 704 -> 2816; TP=2 halves 1408 and 704."""
    card = load_card("gemma4-26b")
    solo = {g.name: g for g in rank_gemms(card, 1)}
    tp2 = {g.name: g for g in rank_gemms(card, 2)}
    assert (solo["expert.gate_up"].narrow, solo["expert.down"].narrow) == (1408, 704)
    assert (tp2["expert.gate_up"].narrow, tp2["expert.down"].narrow) == (704, 352)
    assert tp2["expert.down"].params == 352 * 2816
    assert tp2["router"].params == solo["router"].params == 2816 * 128  # replicated
    # every dense matrix adds up to the card's dense params (router replicated: counted once per rank)
    dense = sum(g.params * g.per_layer for g in rank_gemms(card, 1) if not g.expert and g.per_layer)
    assert dense == card.dense_layer_params
    # the expert part of one token's compute: solo 8 experts x 30 layers x 2 FLOPs x (2816x1408 / eff(1408)
    # + 704x2816 / eff(704)) at the large-GEMM rate; TP=2 halves the FLOPs but not the time per FLOP
    rate = gb10.effective_flops(1.0)

    def expert_seconds(tp: int) -> float:
        inner = 704 / tp
        return 8 * 30 * 2 * (2816 * 2 * inner / gemm_efficiency(2 * inner, 256)
                             + inner * 2816 / gemm_efficiency(inner, 256)) / rate

    solo_model = CostModel(gb10, card)
    tp2_model = CostModel(gb10, card, tensor_parallel=2, executor="mp")
    no_experts = card.model_copy(update={"num_experts": 0, "experts_per_token": 0})
    for tp, model in ((1, solo_model), (2, tp2_model)):
        without = CostModel(gb10, no_experts, tensor_parallel=tp, executor="mp" if tp > 1 else "uni")
        # the router goes with the experts (it is absent in the expert-less card)
        router = 30 * 2 * 2816 * 128 / (gb10.effective_flops(2.0) * gemm_efficiency(128, 256))
        seq = [SeqWork(1, 0, samples=False)]
        assert model.compute_seconds(seq) - without.compute_seconds(seq) == pytest.approx(expert_seconds(tp) + router)
    # params / eff(d) = params x (d + 256) / d, and params = 2816 x d here: solo 2816 x ((1408 + 256) + (704 + 256)),
    # TP=2 2816 x ((704 + 256) + (352 + 256)): 1568 / 2624 = 0.598 of solo's time, not 0.5
    assert expert_seconds(2) / expert_seconds(1) == pytest.approx(1568 / 2624)


def test_w4a16_path_by_hand(gb10):
    """NVFP4 on GB10: weights stream at 0.5625 bytes, multiply at the BF16 rate, and each weight tile is
    dequantized once per 64 rows at 2 instructions per weight on 15.4 T instructions/s."""
    card = load_card("gemma4-26b")
    w = gb10.w4a16
    assert w is not None and gb10.runs_w4a16(0.5625) and not gb10.runs_w4a16(1.0)
    assert w.dequant_seconds(1e9, 1) == pytest.approx(2e9 / 15.4e12)
    assert w.dequant_seconds(1e9, 65) == pytest.approx(2 * 2e9 / 15.4e12)  # two 64-row tiles
    assert gb10.effective_flops(0.5625) == gb10.effective_flops(2.0)  # BF16 tensor rate, not FP4
    fp8 = CostModel(gb10, card)
    nvfp4 = CostModel(gb10, card, weight_bytes_per_param=0.5625)
    # memory: the quantized weights at 4.5 bits, the bf16 LM head as it was
    lm_head = card.embedding_params * 2.0
    assert nvfp4.weight_bytes(1, 1) - lm_head == pytest.approx(0.5625 * (fp8.weight_bytes(1, 1) - lm_head))
    # compute: one decode token; the difference to fp8 is the doubled tensor time of the quantized weights
    # plus their dequantization (1 row: every touched weight once)
    seq = [SeqWork(1, 0, samples=False)]
    quantized = sum(g.params * g.per_layer * (8 if g.expert else 1) for g in rank_gemms(card, 1)
                    if g.quantized and g.per_layer)
    assert quantized == card.dense_layer_params - 30 * 2816 * 128 + 30 * 8 * card.expert_params
    dequant = quantized * 2 / 15.4e12
    tensor_fp8 = sum(2 * g.params * g.per_layer * (8 if g.expert else 1) / gemm_efficiency(g.narrow, 256)
                     for g in rank_gemms(card, 1) if g.quantized and g.per_layer) / gb10.effective_flops(1.0)
    # attention of the one token to itself: 4 x 16 heads x head_dim FLOPs per layer, also at the BF16 rate
    attention = (4 * 16 * 256 * 25 + 4 * 16 * 512 * 5) / gb10.effective_flops(1.0)
    # BF16 peak is half the FP8 one: the quantized matrices take twice as long, plus the dequantization
    assert nvfp4.compute_seconds(seq) - fp8.compute_seconds(seq) == pytest.approx(tensor_fp8 + attention + dequant)
    # prefill chunks: the dense weights are dequantized once per 64 rows; a touched expert gets tokens x 8 /
    # distinct-experts rows (< 64 here), so each touched expert's weights once
    no_dequant = CostModel(gb10.model_copy(update={"w4a16": w.model_copy(update={"dequant_ops_per_weight": 0.0})}),
                           card, weight_bytes_per_param=0.5625)
    dense_quantized = card.dense_layer_params - 30 * 2816 * 128
    for tokens, dense_tiles in ((64, 1), (65, 2)):
        chunk = [SeqWork(tokens, 0, samples=False)]
        distinct = expected_distinct_experts(128, 8, tokens, card.expert_popularity_skew)
        assert tokens * 8 / distinct < 64
        expected = (dense_tiles * dense_quantized + distinct * 30 * card.expert_params) * 2 / 15.4e12
        assert nvfp4.compute_seconds(chunk) - no_dequant.compute_seconds(chunk) == pytest.approx(expected)


def test_executor_overhead_ray_above_mp(gb10):
    card = load_card("gemma4-26b")
    mp = CostModel(gb10, card, tensor_parallel=2, executor="mp").step([SeqWork(1, 1024)])
    ray = CostModel(gb10, card, tensor_parallel=2, executor="ray").step([SeqWork(1, 1024)])
    assert ray.seconds - mp.seconds == pytest.approx(
        (gb10.executors["ray"].step_overhead_ms - gb10.executors["mp"].step_overhead_ms) / 1000
    )
    assert ray.seconds > mp.seconds


def test_attention_pairs_by_hand():
    said = {key: "estimate: test" for key in ("layers", "kv_heads", "head_dim", "window")}
    full = AttentionGroup(layers=1, kv_heads=1, head_dim=1, sources=said)
    window = AttentionGroup(layers=1, kv_heads=1, head_dim=1, window=4, sources=said)
    assert attention_pairs(full, 3, 0) == 1 + 2 + 3
    assert attention_pairs(full, 1, 9) == 10
    assert attention_pairs(window, 6, 0) == 1 + 2 + 3 + 4 + 4 + 4
    assert attention_pairs(window, 1, 100) == 4


def test_kv_capacity_by_hand(tiny, gb10):
    hardware = gb10.model_copy(update={"memory_gb": 1.0, "reserved_memory_gb": 0.1})
    solo = CostModel(hardware, tiny)  # fp8 KV: 4 layers x 2*2*64 elements x 1 byte = 1024 B per token
    weights = (TINY_DENSE + 4 * 8 * TINY_EXPERT) * 2 + TINY_EMBED * 2
    assert tiny.weights_bytes(2.0) == weights == 13_123_584
    free = 0.5e9 - weights - 0.1e9
    assert solo.kv_capacity_blocks(0.5, 16) == math.floor(free / (16 * 1024)) == 23_613
    tp2 = CostModel(hardware, tiny, tensor_parallel=2, executor="mp")  # half the weights, half the KV heads
    assert tp2.kv_capacity_blocks(0.5, 16) == math.floor((0.5e9 - weights / 2 - 0.1e9) / (16 * 512)) == 48_027
    assert tp2.kv_capacity_blocks(0.5, 16) > 2 * solo.kv_capacity_blocks(0.5, 16)


def test_quantization_what_if_shrinks_decode_bytes(gb10):
    card = load_card("gemma4-26b")
    fp8 = CostModel(gb10, card)
    nvfp4 = CostModel(gb10, card, weight_bytes_per_param=card.quantization_bytes["nvfp4"])
    assert nvfp4.weight_bytes(1, 1) < fp8.weight_bytes(1, 1)
    assert nvfp4.step([SeqWork(1, 1024)]).seconds < fp8.step([SeqWork(1, 1024)]).seconds


def test_profiles_demand_a_source_for_every_constant(tmp_path):
    source = (CONFIGS_DIR / "hardware" / "gb10.yaml").read_text()
    unsourced = tmp_path / "unsourced.yaml"
    unsourced.write_text(source.replace(
        'memory_gb: {value: 128, source: "published: reference README (128 GB unified memory)"}', "memory_gb: 128"
    ))
    with pytest.raises(ConfigError, match="memory_gb"):
        load_hardware(unsourced)
    bad_kind = tmp_path / "kind.yaml"
    bad_kind.write_text(source.replace('source: "published: reference README (273 GB/s)"', 'source: "guess"'))
    with pytest.raises(ConfigError, match="memory_bandwidth_gbs"):
        load_hardware(bad_kind)


def test_fast_profile_is_gb10_sped_up(gb10):
    fast = load_hardware("fast")
    assert isinstance(fast, HardwareProfile)
    assert fast.memory_bandwidth_gbs == pytest.approx(50 * gb10.memory_bandwidth_gbs)
    assert fast.step_overhead_ms == pytest.approx(gb10.step_overhead_ms / 50)
    assert fast.bandwidth_efficiency == gb10.bandwidth_efficiency
    assert fast.links["roce2"].latency_us == pytest.approx(gb10.links["roce2"].latency_us / 50)
    assert fast.links["sockets"].collective_us == pytest.approx(gb10.links["sockets"].collective_us / 50)
    assert fast.w4a16 is not None and fast.w4a16.vector_tops == pytest.approx(50 * gb10.w4a16.vector_tops)
