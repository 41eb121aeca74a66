"""The roofline: ceilings from published peaks and the card's bytes/FLOPs, shares, and the one sentence."""

from __future__ import annotations

import pandas as pd
import pytest

from telemetry.roofline import (
    EngineShape,
    decode_ceiling_tps,
    limit_sentences,
    prefill_ceiling_tps,
    roofline,
    step_breakdown,
)
from twin.costmodel import CostModel, SeqWork
from twin.predict import topology_model
from twin.profiles import load_card, load_hardware

SHAPE = EngineShape(load_hardware("gb10"), load_card("gemma4-26b"), weight_bytes_per_param=1.0,
                    kv_bytes_per_element=1.0, pp=1024, tg=128)


def test_decode_ceiling_is_published_bandwidth_over_the_bytes_of_a_step() -> None:
    model = CostModel(SHAPE.hardware, SHAPE.card, weight_bytes_per_param=1.0, kv_cache_bytes_per_element=1.0)
    step_bytes = model.weight_bytes(1, 1) + model.kv_bytes([SeqWork(1, 1024 + 64)])
    solo = decode_ceiling_tps(SHAPE, topology_model("solo"), 1)
    assert solo == pytest.approx(273e9 / step_bytes)  # published 273 GB/s, not the calibrated effective rate
    # the 3.8B active parameters of an fp8 MoE: ~4-5 GB a token at c1, so a ceiling of some 55-70 t/s
    assert 50 < solo < 75
    # TP=2 splits every rank's bytes in two; two replicas each stream their own half of the batch
    assert decode_ceiling_tps(SHAPE, topology_model("tp2-mp"), 1) == pytest.approx(2 * solo, rel=0.05)
    assert decode_ceiling_tps(SHAPE, topology_model("2x-solo-shuffle"), 64) == pytest.approx(
        2 * decode_ceiling_tps(SHAPE, topology_model("solo"), 32))
    # batching shares the weights: the ceiling grows with c, but less than c-fold (more distinct experts)
    c64 = decode_ceiling_tps(SHAPE, topology_model("solo"), 64)
    assert 4 * solo < c64 < 64 * solo


def test_prefill_ceiling_is_peak_flops_over_the_flops_of_a_prompt() -> None:
    model = CostModel(SHAPE.hardware, SHAPE.card, weight_bytes_per_param=1.0)
    flops = model.flops([SeqWork(1024, 0)])
    assert prefill_ceiling_tps(SHAPE, topology_model("solo")) == pytest.approx(1024 / (flops / 250e12))


def test_shares_and_sentences_of_measured_cells() -> None:
    ceiling = decode_ceiling_tps(SHAPE, topology_model("solo"), 1)
    cells = pd.DataFrame([
        {"topology": "solo", "concurrency": 1, "decode_tps": 0.5 * ceiling, "prefill_tps": 1000.0},
        {"topology": "solo", "concurrency": 1, "decode_tps": 0.7 * ceiling, "prefill_tps": 1000.0},
        {"topology": "tp2-mp", "concurrency": 1, "decode_tps": 1.0, "prefill_tps": 1000.0},
        {"topology": "tp9-nothing", "concurrency": 1, "decode_tps": 1.0, "prefill_tps": 1.0},
    ])
    table = roofline(cells, SHAPE)
    assert list(table.topology) == ["solo", "tp2-mp"]  # a layout the twin does not know has no ceiling
    assert table.iloc[0]["decode_share"] == pytest.approx(0.6)  # the mean over runs
    sentences = limit_sentences(table, SHAPE)
    assert sentences["solo"].startswith("solo: decode at 60% of the bandwidth ceiling at c1")
    assert "memory bandwidth" in sentences["solo"] and "prediction" not in sentences["solo"]
    # 1 t/s is far below what the twin predicts for TP=2 at c1: the sentence says the model does not explain it
    assert "well below the twin's prediction" in sentences["tp2-mp"]
    # the modeled TP=2 step spends part of its time on the link's all-reduces; the solo step none
    assert step_breakdown(SHAPE, topology_model("tp2-mp"), 1)["link"] > 0
    assert step_breakdown(SHAPE, topology_model("solo"), 1)["link"] == 0
