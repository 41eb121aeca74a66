"""The gate on the twin's virtual-time predictions: a repeat of the same profile is clean, a slower one is not."""

from __future__ import annotations

import pandas as pd
import pytest

from reports.regress import compare_sweeps
from twin.engine import EngineConfig
from twin.predict import predict_sweep

TOPOLOGIES = ["solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle"]
LEVELS = (1, 8, 32)


@pytest.fixture(scope="module")
def gb10() -> EngineConfig:
    return EngineConfig.from_names("gb10", "gemma4-26b")


def sweep(config: EngineConfig, seed: int) -> pd.DataFrame:
    return pd.DataFrame(predict_sweep(TOPOLOGIES, config, LEVELS, runs=3, seed=seed))


def test_same_profile_twice_is_not_flagged_and_slower_memory_is(gb10: EngineConfig) -> None:
    baseline = sweep(gb10, seed=0)
    again = compare_sweeps(baseline, sweep(gb10, seed=1))
    assert again.exit_code == 0, again.to_markdown()
    assert again.improvements == []

    hardware = gb10.hardware
    slower = gb10.with_(hardware=hardware.model_copy(
        update={"bandwidth_efficiency": hardware.bandwidth_efficiency * 0.9}))
    result = compare_sweeps(baseline, sweep(slower, seed=1))
    assert result.exit_code == 1
    decode_flagged = {(c.topology, c.concurrency) for c in result.regressions if c.metric.key == "decode_tps"}
    # decode is memory-bound: 10% less bandwidth slows it by more than the 5% threshold wherever the layout
    # is deterministic; Shuffle's random split of a batch over two engines is noise that 3 runs may not beat
    deterministic = {(t, c) for t in TOPOLOGIES for c in LEVELS if t != "2x-solo-shuffle" or c == 1}
    assert deterministic <= decode_flagged
    assert result.improvements == []
    assert all(c.status.value in ("regression", "unchanged") for c in result.comparisons)
