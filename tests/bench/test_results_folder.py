"""The results folder: typed meta, folders written before schema 2 (tests/bench/data, written by topo at
4be1103: a two-topology sweep and a prediction), unmerged parts, and the load as a value."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.metrics import run_metrics
from bench.records import CELL_COLUMNS, RequestRecord
from bench.records import SCHEMA_VERSION
from bench.results_folder import CELL_SCHEMA, META_SCHEMA_VERSION, SCHEMA_KEY, FolderMeta, ResultsFolder
from bench.workload import ClosedLoad, parse_load
from common.errors import ConfigError, ResultsError
from reports.results import render_results

DATA = Path(__file__).parent / "data"


def copy_of(name: str, tmp_path: Path) -> ResultsFolder:
    target = tmp_path / name
    shutil.copytree(DATA / name, target)
    return ResultsFolder(target)


def records(topology: str, c: int, run: int) -> list[RequestRecord]:
    out = []
    for i in range(c):
        start = 10.0 + run + i * 0.001
        times = [start + 0.1 + k * 0.01 for k in range(4)]
        out.append(RequestRecord(topology, c, run, i, 10.0 + run, start, 64, first_response=times[0],
                                 first_token=times[0], token_times=times, end=times[-1], prompt_tokens=64,
                                 completion_tokens=4, status_code=200))
    return out


def test_the_load_is_a_value_with_a_stable_label() -> None:
    assert ClosedLoad(4).label == "c4" and str(ClosedLoad(16)) == "c16"
    assert parse_load("c4") == ClosedLoad(4)
    assert sorted([ClosedLoad(8), ClosedLoad(2)]) == [ClosedLoad(2), ClosedLoad(8)]
    with pytest.raises(ConfigError, match="at least 1"):
        ClosedLoad(0)
    with pytest.raises(ConfigError, match="expected a closed load"):
        parse_load("r2.5")
    record = records("solo", 2, 0)[0]
    assert (record.workload, record.load) == ("default", "c2")  # a closed batch labels itself
    assert list(run_metrics(records("solo", 2, 0))) == list(CELL_COLUMNS)


def test_a_sweep_folder_written_before_schema_2_loads_migrated(tmp_path: Path) -> None:
    folder = copy_of("v1-sweep", tmp_path)
    assert json.loads(folder.meta_path.read_text())["schema"] == 1  # really the old layout
    assert pq.read_schema(folder.cells_path).metadata[SCHEMA_KEY] == b"1"
    meta = folder.read_meta()
    assert meta.schema_version == META_SCHEMA_VERSION and meta.kind == "sweep" and meta.status == "complete"
    assert (meta.model, meta.pp, meta.tg, meta.runs, meta.cluster_name) == ("gemma4-26b", 1024, 16, 1, "local-twin")
    assert set(meta.startup_s) == {"solo", "tp2-mp"}
    contents = folder.load()
    cells = contents.cells
    assert list(cells.columns) == list(CELL_COLUMNS)
    assert set(cells["workload"]) == {"default"}
    assert sorted(set(zip(cells["topology"], cells["load"], cells["concurrency"]))) == [
        ("solo", "c1", 1), ("solo", "c4", 4), ("tp2-mp", "c1", 1), ("tp2-mp", "c4", 4)]
    assert set(contents.requests["load"]) == {"c1", "c4"} and len(contents.requests) == 2 * (1 + 4)
    assert folder.runs_done() == {(t, "default", f"c{c}"): 1 for t in ("solo", "tp2-mp") for c in (1, 4)}
    # `topo report` renders it: the old warning text and the typed meta's facts in the header
    report, md_path, _ = render_results(folder.directory)
    markdown = md_path.read_text()
    assert "# Topology report — gemma4-26b" in markdown and "- Load: pp1024, tg16, 1 run(s) per level" in markdown
    assert "## Decode (t/s) — higher wins" in markdown and report.startup_s == meta.startup_s
    assert json.loads(folder.meta_path.read_text())["schema"] == 1  # reading never rewrites an old folder


def test_resuming_an_old_folder_appends_current_rows_and_compacts_to_the_current_schema(tmp_path: Path) -> None:
    folder = copy_of("v1-sweep", tmp_path)
    more = records("solo", 1, 1)
    folder.append(more, [run_metrics(more)])
    assert folder.runs_done()[("solo", "default", "c1")] == 2  # the old main file and the new part together
    folder.compact()
    assert pq.read_schema(folder.cells_path).metadata[SCHEMA_KEY] == str(SCHEMA_VERSION).encode()
    assert folder.read_cells()["ttft_p99_ms"].isna().sum() == 4  # the old rows lack the open-loop columns
    cells = folder.read_cells()
    assert len(cells) == 5 and set(cells["load"]) == {"c1", "c4"}
    assert len(folder.read_requests()) == 2 * (1 + 4) + 1


def test_a_prediction_folder_written_by_pandas_loads(tmp_path: Path) -> None:
    folder = copy_of("v1-prediction", tmp_path)
    assert SCHEMA_KEY not in (pq.read_schema(folder.cells_path).metadata or {})
    meta = folder.read_meta()
    assert meta.kind == "prediction" and meta.cluster_name == "twin:fast" and meta.title.startswith("Prediction")
    contents = folder.load()
    assert contents.requests is None and contents.unmerged_parts == 0
    assert len(contents.cells) == 2 * 2 * 2 and set(contents.cells["load"]) == {"c1", "c2"}
    render_results(folder.directory)


def test_unmerged_parts_are_reported_not_lost(tmp_path: Path) -> None:
    folder = ResultsFolder(tmp_path / "died")
    folder.write_meta(FolderMeta(kind="sweep", status="running", spec={"model": "m", "pp": 64, "tg": 4}))
    for topology in ("solo", "tp2-mp"):
        for run in range(2):
            rows = records(topology, 2, run)
            folder.append(rows, [run_metrics(rows)])
    assert not folder.cells_path.exists() and folder.has_cells()  # the sweep died before compacting
    contents = folder.load()
    assert contents.unmerged_parts == 8 and len(contents.cells) == 4
    report, md_path, _ = render_results(folder.directory)
    assert any("8 part file(s) of this folder are not merged yet" in c for c in report.caveats)
    assert "## Decode (t/s)" in md_path.read_text()
    assert folder.parts.is_dir()  # reporting never compacts: only the folder's writer does


def test_meta_round_trip_and_what_is_refused(tmp_path: Path) -> None:
    folder = ResultsFolder(tmp_path)
    meta = FolderMeta(kind="bench", status="complete", spec={"model": "tiny", "pp": 128, "tg": 16, "runs": 2})
    folder.write_meta(meta)
    assert folder.read_meta() == meta
    assert json.loads(folder.meta_path.read_text())["schema_version"] == META_SCHEMA_VERSION
    folder.meta_path.write_text(json.dumps({"schema_version": META_SCHEMA_VERSION + 1, "kind": "sweep"}))
    with pytest.raises(ResultsError, match="newer topo"):
        folder.read_meta()
    folder.meta_path.write_text(json.dumps({"schema": 1, "kind": "sweep", "status": "done"}))
    with pytest.raises(ResultsError, match="status"):
        folder.read_meta()
    with pytest.raises(ResultsError, match="no meta.json"):
        ResultsFolder(tmp_path / "empty").read_meta()


def test_a_metric_added_later_is_empty_in_older_files_but_the_key_is_required(tmp_path: Path) -> None:
    rows = [run_metrics(records("solo", 2, 0))]
    folder = ResultsFolder(tmp_path)
    older = pa.Table.from_pylist([{k: v for k, v in row.items() if k != "peak_tps"} for row in rows],
                                 schema=CELL_SCHEMA.remove(CELL_SCHEMA.get_field_index("peak_tps")))
    pq.write_table(older, folder.cells_path)
    cells = folder.read_cells()
    assert list(cells.columns) == list(CELL_COLUMNS) and math.isnan(cells.loc[0, "peak_tps"])
    assert cells.loc[0, "decode_tps"] == rows[0]["decode_tps"]
    keyless = older.drop(["run"])
    pq.write_table(keyless.replace_schema_metadata(CELL_SCHEMA.metadata), folder.cells_path)
    with pytest.raises(ResultsError, match=r"missing columns \['run'\]"):
        folder.read_cells()
