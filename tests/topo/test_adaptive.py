"""The adaptive stop rule (topo/adaptive.py) on hand-made run rows: precise, settled, max runs, not yet."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from tests.reports.fixtures import cell_rows
from topo.adaptive import AdaptivePolicy, stop_reason
from topo.commands.sweep import parse_runs
from topo.sweep import SweepSpec

POLICY = AdaptivePolicy(precision_pct=5.0, margin_pct=3.0, max_runs=6)


def rows(topology: str, decode: list[float], prefill: float = 1000.0, ttft: float = 100.0) -> list[dict]:
    # prefill and TTFT with the same relative spread as decode, so decode's interval decides
    spread = [d / decode[0] for d in decode]
    return cell_rows(topology, 4, decode, [prefill * s for s in spread], [ttft * s for s in spread])


def test_one_run_never_stops_and_the_maximum_always_does() -> None:
    assert stop_reason("solo", rows("solo", [100]), {}, POLICY) is None
    assert stop_reason("solo", rows("solo", [100, 150, 60, 120, 90, 140]), {}, POLICY) == "max runs: 6"


def test_a_precise_cell_stops_alone() -> None:
    # 100, 101: s = 0.71, t(1) = 12.7 -> ± 6.35 (6.3%): not yet; 100, 101, 100.5: ± 1.24%: precise
    assert stop_reason("solo", rows("solo", [100, 101]), {}, POLICY) is None
    assert stop_reason("solo", rows("solo", [100, 101, 100.5]), {}, POLICY) == "precise: ±1.2% after 3 runs"


def test_a_noisy_cell_far_from_its_rival_stops_as_settled_a_close_one_does_not() -> None:
    noisy = rows("tp2-mp", [150, 250])  # 200 ± 635 (t(1) = 12.7): anything is possible
    # 40 [38.8, 41.2] (and far slower prefill and TTFT): TP=2 wins whatever more runs say
    far = {"solo": rows("solo", [39.5, 40, 40.5], prefill=200.0, ttft=500.0)}
    assert stop_reason("tp2-mp", rows("tp2-mp", [190, 200, 210]), far, POLICY) == \
        "settled against Solo after 3 runs"  # 200 ± 24.8: clears 41.2 by far
    assert stop_reason("tp2-mp", noisy, far, POLICY) is None  # reaches down to solo's interval
    close = {"solo": rows("solo", [195, 200, 205], prefill=200.0, ttft=500.0)}  # decode too close to call
    assert stop_reason("tp2-mp", rows("tp2-mp", [190, 200, 210]), close, POLICY) is None


def test_a_tie_that_matters_to_nobody_is_settled_too() -> None:
    # both at 100 within ±0.5%: whatever more runs say, the difference stays under the 3% margin
    rival = {"solo": rows("solo", [99.5, 100, 100.5])}
    mine = rows("tp2-mp", [99.8, 100.1, 100.4])
    assert stop_reason("tp2-mp", mine, rival, AdaptivePolicy(precision_pct=0.1, margin_pct=3.0)) == \
        "settled against Solo after 3 runs"


def test_runs_option_and_spec() -> None:
    assert parse_runs("auto") is None and parse_runs("3") == 3
    with pytest.raises(ConfigError, match="--runs"):
        parse_runs("many")
    assert SweepSpec().adaptive and SweepSpec().planned_runs == 10
    assert not SweepSpec(runs=2).adaptive and SweepSpec(runs=2).planned_runs == 2
    with pytest.raises(ConfigError, match="--max-runs"):
        SweepSpec(max_runs=1)
    with pytest.raises(ConfigError, match="--precision"):
        SweepSpec(precision_pct=0)
