"""`topo plan`: the dry run from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.errors import ConfigError, PlanError
from topo.cli import app

runner = CliRunner()


def test_default_prints_the_four_study_topologies_on_local_twin():
    result = runner.invoke(app, ["plan"])
    assert result.exit_code == 0, result.output
    for name in ("solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle"):
        assert f"plan: {name} on cluster local-twin, model gemma4-26b" in result.output
    assert "LITELLM_MASTER_KEY=***" in result.output
    assert "sk-topo-" not in result.output  # the generated key's prefix never shows


def test_json_for_one_topology(data_dir):
    result = runner.invoke(
        app, ["plan", "--cluster", str(data_dir / "two-sparks.yaml"), "--topology", "2x-solo-shuffle", "-f", "json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["topology"] == "2x-solo-shuffle"
    assert document["endpoint_headers"] == {"Authorization": "***"}
    assert document["teardown_order"] == ["proxy", "engine-spark2", "engine-spark1"]
    proxy = document["stages"][1]["steps"][0]
    assert proxy["env"]["LITELLM_MASTER_KEY"] == "***"
    assert "sk-topo-" not in result.output


def test_bad_inputs_raise_topo_errors():
    result = runner.invoke(app, ["plan", "--topology", "tp3-mp"])
    assert isinstance(result.exception, PlanError)
    result = runner.invoke(app, ["plan", "--model", "no-such-model"])
    assert isinstance(result.exception, ConfigError)


def test_cli_exits_2_with_one_line_on_a_plan_error():
    topo = Path(sys.executable).parent / "topo"
    if not topo.exists():
        pytest.skip("topo entry point not installed in this interpreter's venv")
    completed = subprocess.run(
        [str(topo), "plan", "--topology", "tp2-mp", "--cluster", "tests/topology/data/one-node.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert completed.returncode == 2
    assert "needs 2 nodes" in completed.stderr and "Traceback" not in completed.stderr


def test_topologies_comma_separated_like_the_sweep():
    result = runner.invoke(app, ["plan", "--topology", "solo,tp2-ray", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert [document["topology"] for document in json.loads(result.output)] == ["solo", "tp2-ray"]
