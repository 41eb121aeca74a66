"""The twin profile's decode_slowdown knob: pure decode steps slower, prefill work untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from tests.nightly.support import slower_decode_profile
from twin.costmodel import CostModel, SeqWork
from twin.profiles import load_card, load_hardware


@pytest.mark.parametrize("base", ["gb10", "fast"])
def test_shipped_profiles_are_not_slowed(base: str) -> None:
    assert load_hardware(base).decode_slowdown == 1.0


def test_only_pure_decode_steps_take_longer(tmp_path: Path) -> None:
    card = load_card("gemma4-26b")
    normal = CostModel(load_hardware("gb10"), card)
    slowed = CostModel(load_hardware(slower_decode_profile(tmp_path, "gb10", 1.1)), card)
    decode_batch = [SeqWork(1, 1024 + i) for i in range(8)]
    prefill = [SeqWork(1024, 0)]
    mixed = [*decode_batch, SeqWork(512, 0, samples=False)]
    assert slowed.step(decode_batch).seconds == pytest.approx(1.1 * normal.step(decode_batch).seconds, rel=1e-12)
    assert slowed.step(prefill).seconds == normal.step(prefill).seconds
    assert slowed.step(mixed).seconds == normal.step(mixed).seconds


def test_a_derived_profile_takes_the_knob_without_scaling_it(tmp_path: Path) -> None:
    slowed = load_hardware(slower_decode_profile(tmp_path, "fast", 1.25))
    fast = load_hardware("fast")
    assert slowed.decode_slowdown == 1.25
    assert slowed.memory_bandwidth_gbs == fast.memory_bandwidth_gbs  # the rest is still gb10 x50


def test_a_non_positive_slowdown_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="decode_slowdown"):
        load_hardware(slower_decode_profile(tmp_path, "gb10", 0))
