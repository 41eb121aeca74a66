"""The twin's noise_cv knob: seeded per-step jitter, from the profile, `twin serve --noise-cv` or a sweep."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from topo.sweep import SweepSpec, plan_sweep
from topology.inventory import TwinEngine
from twin.cli import parse_serve_args
from twin.launch import engine_config_kwargs
from twin.engine import EngineConfig
from twin.predict import predict_cells
from twin.profiles import load_hardware


def decode_runs(config: EngineConfig, seed: int = 0, runs: int = 6, concurrency: int = 1) -> np.ndarray:
    rows = predict_cells("solo", config, [concurrency], prompt_tokens=256, max_tokens=64, runs=runs, seed=seed)
    return np.array([row["decode_tps"] for row in rows])


@pytest.fixture(scope="module")
def fast() -> EngineConfig:
    return EngineConfig.from_names("fast", "tiny")


def test_no_noise_by_default_runs_are_identical(fast: EngineConfig) -> None:
    assert load_hardware("fast").noise_cv == 0.0 and fast.effective_noise_cv == 0.0
    values = decode_runs(fast)
    assert np.ptp(values) < 1e-9 * values.mean()


def test_noise_spreads_runs_as_per_step_jitter_predicts_and_a_seed_replays_it(fast: EngineConfig) -> None:
    noisy = fast.with_(noise_cv=0.3)
    values = decode_runs(noisy, runs=12)
    # 63 pure decode steps per run, each x a factor of cv 0.3: the run's decode t/s varies by about
    # 0.3 / sqrt(63) = 3.8% (not more than 3x off either way)
    spread = values.std(ddof=1) / values.mean()
    assert 0.013 < spread < 0.11
    assert abs(values.mean() / decode_runs(fast)[0] - 1) < 0.05  # mean-one jitter: no bias
    assert np.array_equal(values, decode_runs(noisy, runs=12))  # same seed, same steps
    assert not np.array_equal(values, decode_runs(noisy.with_(noise_seed=1), runs=12))


def test_replicas_behind_a_router_get_their_own_noise(fast: EngineConfig) -> None:
    from twin.predict import VirtualDeployment

    deployment = VirtualDeployment("2x-solo-shuffle", fast.with_(noise_cv=0.3))
    first, second = deployment.cores
    assert [first.jitter.factor() for _ in range(3)] != [second.jitter.factor() for _ in range(3)]


def test_twin_serve_flag_overrides_the_profile_and_is_checked() -> None:
    args = parse_serve_args(["tiny", "--noise-cv", "0.05", "--seed", "3", "--port", "8001"])
    kw = engine_config_kwargs(args)
    assert kw["noise_cv"] == 0.05
    config = EngineConfig.from_names("fast", "tiny", **kw)
    assert config.effective_noise_cv == 0.05
    other_port = engine_config_kwargs(parse_serve_args(["tiny", "--noise-cv", "0.05", "--seed", "3", "--port", "8002"]))
    assert other_port["noise_seed"] != kw["noise_seed"]  # two engines of one sweep do not jitter alike
    assert engine_config_kwargs(parse_serve_args(["tiny"]))["noise_cv"] is None  # the profile's
    with pytest.raises(ConfigError, match="--noise-cv"):
        parse_serve_args(["tiny", "--noise-cv", "-1"])


def test_a_derived_profile_can_set_noise(tmp_path) -> None:
    path = tmp_path / "noisy.yaml"
    path.write_text("name: fast-noisy\nderived_from: gb10\nspeedup: 5\nnoise_cv: 0.05\n")
    assert load_hardware(path).noise_cv == 0.05


def test_a_sweep_sets_every_twin_nodes_noise_and_the_plan_passes_it_on() -> None:
    sweep = plan_sweep(SweepSpec(topologies=("solo", "2x-solo-shuffle"), concurrency=(1,), twin_noise_cv=0.05))
    assert all(isinstance(n.engine, TwinEngine) and n.engine.noise_cv == 0.05 for n in sweep.cluster.nodes)
    for item in sweep.topologies:
        engines = [s for s in item.launch.steps() if s.role.startswith("engine")]
        assert engines and all(("--noise-cv", "0.05") == tuple(s.argv[s.argv.index("--noise-cv"):][:2])
                               for s in engines)
    with pytest.raises(ConfigError, match="--twin-noise-cv"):
        SweepSpec(twin_noise_cv=3.0)
