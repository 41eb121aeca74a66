"""`topo predict`: the twin's model in virtual time, printed as a sweep would be and stored in its columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from bench.records import CELL_COLUMNS
from topo.cli import app
from topo.transport import planned_transport

runner = CliRunner()


def predict(*args: str) -> pd.DataFrame:
    out = Path(args[args.index("--out") + 1])
    result = runner.invoke(app, ["predict", *args])
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out / "cells.parquet")


def test_predict_writes_the_sweeps_columns_and_a_report(tmp_path: Path) -> None:
    cells = predict("-c", "1,8", "--runs", "2", "--out", str(tmp_path))
    assert list(cells.columns) == list(CELL_COLUMNS)
    assert set(cells.topology) == {"solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle"}
    assert len(cells) == 4 * 2 * 2
    assert (tmp_path / "report.md").read_text().count("Winner") >= 3
    assert (tmp_path / "report.html").exists()


def test_a_lighter_weight_format_decodes_faster(tmp_path: Path) -> None:
    fp8 = predict("-t", "solo", "-c", "1", "--runs", "1", "--out", str(tmp_path / "fp8"))
    nvfp4 = predict("-t", "solo", "-c", "1", "--runs", "1", "-q", "nvfp4", "--out", str(tmp_path / "nvfp4"))
    # decode is bandwidth-bound: fewer bytes per weight, more tokens per second (not exactly 2x: KV cache,
    # bf16 embeddings and per-step overheads do not shrink)
    ratio = float(nvfp4.decode_tps.iloc[0] / fp8.decode_tps.iloc[0])
    assert 1.2 < ratio < 2.0


def test_four_nodes_bring_the_larger_layouts(tmp_path: Path) -> None:
    cells = predict("--nodes", "4", "-c", "4", "--runs", "1", "--out", str(tmp_path))
    assert {"tp4-mp", "2x-tp2-shuffle", "4x-solo-shuffle"} <= set(cells.topology)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-q", "int3"], "knows fp8"),
        (["-t", "tp4-mp", "--nodes", "2"], "needs 4 nodes"),
        (["-t", "tp9-xx"], "unknown topology"),
        (["--hardware", "no-such-board"], "no-such-board"),
        (["--link", "roce"], "roce2, roce1, sockets"),
    ],
)
def test_bad_input_is_named(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["predict", "-c", "1", *args])
    assert result.exit_code != 0
    assert message in str(result.exception) + result.output


def test_the_link_follows_the_rendered_env_and_link_is_a_what_if(tmp_path: Path) -> None:
    # the study recipe renders no NCCL_IB_HCA: NCCL auto-detects the RoCE device it finds, one twin
    assert planned_transport("gemma4-26b", None).transport == "roce1"
    assert planned_transport("gemma4-26b", "local-twin").transport == "roce1"
    rendered = predict("-t", "tp2-mp", "-c", "1", "--runs", "1", "--out", str(tmp_path / "rendered"))
    sockets = predict("-t", "tp2-mp", "-c", "1", "--runs", "1", "--link", "sockets", "--out", str(tmp_path / "s"))
    roce2 = predict("-t", "tp2-mp", "-c", "1", "--runs", "1", "--link", "roce2", "--out", str(tmp_path / "r2"))
    roce1 = predict("-t", "tp2-mp", "-c", "1", "--runs", "1", "--link", "roce1", "--out", str(tmp_path / "r1"))
    assert float(rendered.decode_tps.iloc[0]) == float(roce1.decode_tps.iloc[0])
    # per decode step, sockets cost ~2.9 ms more than RoCE (60 all-reduces x 2 hops x 22.5 us more)
    assert float(roce2.decode_tps.iloc[0]) > 1.05 * float(sockets.decode_tps.iloc[0])
    assert float(roce2.prefill_tps.iloc[0]) > float(roce1.prefill_tps.iloc[0]) > float(sockets.prefill_tps.iloc[0])


def test_a_rendered_nccl_hca_picks_roce(tmp_path: Path) -> None:
    """The RoCE devices come from each node's fast link (`rdma`); the plan renders NCCL_IB_HCA from them."""
    from common.config import CONFIGS_DIR

    cluster = yaml.safe_load((CONFIGS_DIR / "clusters" / "local-twin.yaml").read_text())
    for devices, expected in ((["rocep1s0f1", "roceP2p1s0f1"], "roce2"), (["rocep1s0f1"], "roce1")):
        for node in cluster["nodes"]:
            node["fast_link"]["rdma"] = devices
        path = tmp_path / f"{expected}.yaml"
        path.write_text(yaml.safe_dump(cluster))
        assert planned_transport("gemma4-26b", str(path)).transport == expected


def test_hardware_is_a_path_too(tmp_path: Path) -> None:
    from common.config import CONFIGS_DIR

    slower = tmp_path / "slower.yaml"
    slower.write_text((CONFIGS_DIR / "hardware" / "gb10.yaml").read_text().replace(
        "memory_bandwidth_gbs: {value: 273,", "memory_bandwidth_gbs: {value: 136.5,"))
    base = predict("-t", "solo", "-c", "1", "--runs", "1", "--out", str(tmp_path / "a"))
    half = predict("-t", "solo", "-c", "1", "--runs", "1", "--hardware", str(slower), "--out", str(tmp_path / "b"))
    assert float(half.decode_tps.iloc[0]) < 0.7 * float(base.decode_tps.iloc[0])


def test_a_docker_plan_passes_its_nccl_env_in_the_env_file() -> None:
    """Two Sparks running vLLM's container: the NCCL env reaches the engine through `--env-file`."""
    cluster = Path(__file__).resolve().parents[1] / "topology" / "data" / "two-sparks-rdma.yaml"
    assert planned_transport("gemma4-26b", str(cluster)).transport == "roce2"


@pytest.mark.parametrize(("rdma", "env", "transport"), [(["rocep1s0f1", "roceP2p1s0f1"], None, "roce2"),
                                                         (["rocep1s0f1"], None, "roce1"), (None, None, "roce1"),
                                                         (None, {"NCCL_IB_DISABLE": "1"}, "sockets")])
def test_a_fast_link_with_roce_twins_renders_their_transport(tmp_path: Path, rdma, env, transport) -> None:
    """The planner renders NCCL_IB_HCA from fast_link.rdma; the twin's link follows that env. Without rdma
    NCCL detects one twin; a node env with NCCL_IB_DISABLE=1 states the TCP socket fallback."""
    from common.config import CONFIGS_DIR

    data = yaml.safe_load((CONFIGS_DIR / "clusters" / "two-sparks.yaml").read_text())
    for node in data["nodes"]:
        if rdma is not None:
            node["fast_link"]["rdma"] = rdma
        if env is not None:
            node["env"] = {**node.get("env", {}), **env}
    path = tmp_path / "sparks.yaml"
    path.write_text(yaml.safe_dump(data))
    assert planned_transport("gemma4-26b", str(path)).transport == transport
