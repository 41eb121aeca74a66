"""`topo predict`: the twin's model in virtual time, printed as a sweep would be and stored in its columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.records import CELL_COLUMNS
from topo.cli import app

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
    ],
)
def test_bad_input_is_named(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["predict", "-c", "1", *args])
    assert result.exit_code != 0
    assert message in str(result.exception) + result.output
