"""The cost model's parts against hand-computed values (tiny card: bf16 weights, numbers small enough)."""

from __future__ import annotations

import math

import pytest

from common.config import CONFIGS_DIR
from common.errors import ConfigError
from twin.costmodel import CostModel, SeqWork, attention_pairs, gather_seconds, ring_allreduce_seconds
from twin.profiles import (
    AttentionGroup,
    HardwareProfile,
    expected_distinct_experts,
    load_card,
    load_hardware,
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
    model = CostModel(gb10, tiny, tensor_parallel=2, executor="mp", link="roce")
    link = gb10.links["roce"]
    bandwidth = 200e9 / 8 * link.efficiency
    latency = link.latency_us / 1e6
    # one decode token: 2 all-reduces per layer of 256 activations x 2 bytes, then a gather of 4096 bf16 logits
    per_allreduce = 2 * latency + 1 * 512 / bandwidth
    expected = 2 * 4 * per_allreduce + latency + 0.5 * 4096 * 2 / bandwidth
    assert model.comm_seconds(1, 1) == pytest.approx(expected)
    sockets = CostModel(gb10, tiny, tensor_parallel=2, executor="mp", link="sockets")
    assert sockets.comm_seconds(1, 1) > model.comm_seconds(1, 1)


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
    assert fast.links["roce"].latency_us == pytest.approx(gb10.links["roce"].latency_us / 50)
