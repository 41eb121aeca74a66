"""The results folder's rows: round trip, crash-safe appends, compaction, later writes win."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.metrics import run_metrics
from bench.records import CELL_COLUMNS, RequestRecord
from bench.results_folder import CELLS_FILE, REQUESTS_FILE, ResultsFolder
from common.errors import ResultsError


def make_records(topology: str, c: int, run: int, failed: int = 0, shift: float = 0.0) -> list[RequestRecord]:
    records = []
    for i in range(c):
        start = 100.0 + run + i * 0.001 + shift
        if i < failed:
            records.append(RequestRecord(topology, c, run, i, 100.0 + run, start, 64, end=start + 0.5,
                                         status_code=500, error="HTTP 500 from POST x: boom"))
            continue
        times = [start + 0.2 + k * 0.01 for k in range(8)]
        records.append(RequestRecord(topology, c, run, i, 100.0 + run, start, 64, first_response=start + 0.19,
                                     first_token=times[0], token_times=times, end=times[-1] + 0.001,
                                     prompt_tokens=64, completion_tokens=8, status_code=200,
                                     served_by="node1" if i % 2 else None, latency_offset=0.002,
                                     response_id=f"chatcmpl-{run}-{i}"))
    return records


def test_round_trip_keeps_every_field_exactly(tmp_path):
    store = ResultsFolder(tmp_path)
    records = make_records("solo", 3, 0, failed=1)
    store.append(records, [run_metrics(records)])
    assert store.read_records() == records
    store.compact()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CELLS_FILE, REQUESTS_FILE]
    assert store.read_records() == records  # the same after compaction
    cells = store.read_cells()
    assert list(cells.columns) == list(CELL_COLUMNS)
    assert cells.loc[0, "failed"] == 1 and cells.loc[0, "requests"] == 3
    # the stored file is plain parquet: token_times is a list column, readable without topo
    table = pq.read_table(tmp_path / REQUESTS_FILE)
    assert table.schema.field("token_times").type == pa.list_(pa.float64())
    assert table.num_rows == 3


def test_appends_are_visible_before_compaction_and_survive_a_crash(tmp_path):
    store = ResultsFolder(tmp_path)
    for run in range(3):
        records = make_records("tp2-mp", 2, run)
        store.append(records, [run_metrics(records)])
    # "crash": no compact(). A new store object on the same folder sees every run.
    reread = ResultsFolder(tmp_path)
    assert len(reread.read_requests()) == 6
    assert list(reread.read_cells()["run"]) == [0, 1, 2]
    reread.compact()
    more = make_records("tp2-mp", 4, 0)
    reread.append(more, [run_metrics(more)])
    assert len(reread.read_requests()) == 10  # main file + the new part
    reread.compact()
    assert not (tmp_path / "parts").exists()
    assert sorted(reread.read_cells()["concurrency"].tolist()) == [2, 2, 2, 4]


def test_a_cell_measured_again_replaces_the_old_rows(tmp_path):
    store = ResultsFolder(tmp_path)
    first = make_records("solo", 2, 0)
    store.append(first, [run_metrics(first)])
    store.compact()
    again = make_records("solo", 2, 0, shift=5.0)
    store.append(again, [run_metrics(again)])
    requests = store.read_requests()
    assert len(requests) == 2 and requests["start"].min() >= 105.0
    assert len(store.read_cells()) == 1


def test_all_failed_run_round_trips_with_nan_metrics(tmp_path):
    store = ResultsFolder(tmp_path)
    records = make_records("solo", 2, 0, failed=2)
    store.append(records, [run_metrics(records)])
    cells = store.read_cells()
    assert cells.loc[0, "failed"] == 2 and math.isnan(cells.loc[0, "decode_tps"])
    assert store.read_records() == records


def test_missing_folder_and_foreign_files_are_results_errors(tmp_path):
    with pytest.raises(ResultsError, match="no such results folder"):
        ResultsFolder(tmp_path / "nope").read_cells()
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / CELLS_FILE)
    with pytest.raises(ResultsError, match="schema version"):
        ResultsFolder(tmp_path).read_cells()
    (tmp_path / REQUESTS_FILE).write_text("not parquet")
    with pytest.raises(ResultsError, match="not a readable parquet file"):
        ResultsFolder(tmp_path).read_requests()


def test_duckdb_can_query_the_folder(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    store = ResultsFolder(tmp_path)
    records = make_records("solo", 2, 0)
    store.append(records, [run_metrics(records)])
    store.compact()
    (n, tokens) = duckdb.sql(f"select count(*), sum(len(token_times)) from '{tmp_path / REQUESTS_FILE}'").fetchall()[0]
    assert (n, tokens) == (2, 16)


def test_completed_cells_tell_a_resume_what_to_skip(tmp_path):
    store = ResultsFolder(tmp_path / "sweep")
    assert store.completed_cells(runs=2) == set()
    for run in range(2):
        records = make_records("solo", 1, run)
        store.append(records, [run_metrics(records)])
    partial = make_records("solo", 2, 0)
    store.append(partial, [run_metrics(partial)])
    assert store.completed_cells(runs=2) == {("solo", "default", "c1")}


def test_a_run_with_failed_requests_is_stored_as_failed_and_numbering_continues_past_it(tmp_path):
    store = ResultsFolder(tmp_path / "sweep")
    for run, failed in ((0, 0), (1, 1), (2, 2)):  # of 4 requests: none, one, two failed
        records = make_records("solo", 4, run, failed=failed)
        store.append(records, [run_metrics(records)])
    progress = store.cell_progress()[("solo", "default", "c4")]
    assert (progress.measured, progress.failed, progress.next_run) == (1, 2, 3)
    assert store.cell_progress(max_failed_share=0.25)[("solo", "default", "c4")].measured == 2
    assert store.completed_cells(runs=1) == {("solo", "default", "c4")} and store.completed_cells(runs=2) == set()


def test_a_damaged_part_is_set_aside_with_its_runs_other_half_and_reported(tmp_path):
    store = ResultsFolder(tmp_path / "sweep")
    records = make_records("solo", 1, 0)
    store.append(records, [run_metrics(records)])
    (tmp_path / "sweep" / "parts" / "cells-0009-1-000000.parquet").write_bytes(b"")
    (tmp_path / "sweep" / "parts" / "requests-0009-1-000000.parquet").write_bytes(b"PAR1")
    assert len(store.read_cells()) == 1  # the good run is read; the damaged one is not in the way
    assert len(store.notes) == 1 and "cells-0009-1-000000.parquet was damaged" in store.notes[0]
    damaged = sorted(p.name for p in (tmp_path / "sweep" / "parts" / "damaged").iterdir())
    assert damaged == ["cells-0009-1-000000.parquet", "requests-0009-1-000000.parquet"]
    store.compact()
    assert len(store.read_requests()) == 1


def test_a_full_disk_is_a_storage_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    from common.errors import StorageError

    store = ResultsFolder(tmp_path / "sweep")
    records = make_records("solo", 1, 0)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", no_space)
    with pytest.raises(StorageError, match=r"cannot write .*No space left on device \(free some space, then resume\)"):
        store.append(records, [run_metrics(records)])
    assert [p.name for p in (tmp_path / "sweep").rglob("*.tmp")] == []
