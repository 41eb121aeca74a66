"""Results on disk: `DIR/requests.parquet` (one row per request, raw timestamps) and `DIR/cells.parquet`
(CELL_COLUMNS, one row per topology x concurrency x run).

Appending is crash-safe by construction: `append()` never rewrites anything, it writes one new part file
per call under `DIR/parts/` (written to a temporary name, then renamed). `compact()` merges the parts into
the two main files (again temp file + rename, then deletes the merged parts). Readers always see the main
file plus every part, so a sweep that dies between appends loses nothing and can resume. Rows are keyed
(requests: topology, concurrency, run, index; cells: topology, concurrency, run); when a key appears twice
(a resumed cell measured again) the later write wins.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from itertools import count
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.records import CELL_COLUMNS, SCHEMA_VERSION, RequestRecord
from common.errors import ResultsError

REQUESTS_FILE = "requests.parquet"
CELLS_FILE = "cells.parquet"
PARTS_DIR = "parts"
SCHEMA_KEY = b"topo.schema_version"
REQUEST_KEY = ["topology", "concurrency", "run", "index"]
CELL_KEY = ["topology", "concurrency", "run"]

_ARROW_TYPES = {
    "str": pa.string(), "str | None": pa.string(),
    "int": pa.int64(), "int | None": pa.int64(),
    "float": pa.float64(), "float | None": pa.float64(),
    "list[float]": pa.list_(pa.float64()),
}


def _request_schema() -> pa.Schema:
    fields = []
    for f in dataclasses.fields(RequestRecord):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if annotation not in _ARROW_TYPES:
            raise TypeError(f"RequestRecord.{f.name}: no parquet type for {annotation!r}; extend _ARROW_TYPES")
        fields.append(pa.field(f.name, _ARROW_TYPES[annotation]))
    return pa.schema(fields, metadata={SCHEMA_KEY: str(SCHEMA_VERSION).encode()})


_CELL_INTS = {"concurrency", "run", "requests", "failed"}
REQUEST_SCHEMA = _request_schema()
CELL_SCHEMA = pa.schema(
    [pa.field(name, pa.string() if name == "topology" else pa.int64() if name in _CELL_INTS else pa.float64())
     for name in CELL_COLUMNS],
    metadata={SCHEMA_KEY: str(SCHEMA_VERSION).encode()},
)

# Columns newer than schema version 1's first files: an older folder reads them as nulls.
ADDED_LATER = frozenset({"scheduled_at"})

_sequence = count()


class ResultsStore:
    """One results folder. `append()` after every run; `compact()` when a cell (or the sweep) is done."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @property
    def parts(self) -> Path:
        return self.directory / PARTS_DIR

    def append(self, records: Sequence[RequestRecord], run_rows: Sequence[dict[str, Any]]) -> None:
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot create {self.parts}: {exc.strerror}") from exc
        stamp = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}"
        if records:
            table = pa.Table.from_pylist([r.to_row() for r in records], schema=REQUEST_SCHEMA)
            self._write(table, self.parts / f"requests-{stamp}.parquet")
        if run_rows:
            table = pa.Table.from_pylist([{c: row[c] for c in CELL_COLUMNS} for row in run_rows], schema=CELL_SCHEMA)
            self._write(table, self.parts / f"cells-{stamp}.parquet")

    def read_requests(self) -> pd.DataFrame:
        return self._read("requests", REQUESTS_FILE, REQUEST_SCHEMA, REQUEST_KEY)

    def read_cells(self) -> pd.DataFrame:
        return self._read("cells", CELLS_FILE, CELL_SCHEMA, CELL_KEY)

    def completed_cells(self, runs: int) -> set[tuple[str, int]]:
        """(topology, concurrency) pairs that already hold `runs` measured runs: what a resume can skip."""
        if not self.directory.is_dir():
            return set()
        cells = self.read_cells()
        counts = cells.groupby(["topology", "concurrency"])["run"].nunique()
        return {(str(t), int(c)) for (t, c), n in counts.items() if n >= runs}

    def read_records(self) -> list[RequestRecord]:
        """The request rows as RequestRecords again (for recomputing metrics)."""
        return records_from_frame(self.read_requests())

    def compact(self) -> None:
        """Merge every part into the main files; safe to call at any time, also after a crash."""
        for kind, main, schema, key in (("requests", REQUESTS_FILE, REQUEST_SCHEMA, REQUEST_KEY),
                                        ("cells", CELLS_FILE, CELL_SCHEMA, CELL_KEY)):
            part_files = self._part_files(kind)
            if not part_files:
                continue
            merged = self._merge(self._tables(self.directory / main, part_files, schema), schema, key)
            self._write(merged, self.directory / main)
            for part in part_files:  # only after the merged file is in place
                part.unlink(missing_ok=True)
        if self.parts.exists() and not any(self.parts.iterdir()):
            self.parts.rmdir()

    # -- internals ----------------------------------------------------------------------------------------

    def _part_files(self, kind: str) -> list[Path]:
        return sorted(self.parts.glob(f"{kind}-*.parquet")) if self.parts.exists() else []

    def _tables(self, main: Path, part_files: list[Path], schema: pa.Schema) -> list[pa.Table]:
        tables = []
        for path in ([main] if main.exists() else []) + part_files:
            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowInvalid) as exc:
                raise ResultsError(f"{path}: not a readable parquet file ({exc})") from exc
            version = (table.schema.metadata or {}).get(SCHEMA_KEY)
            if version != schema.metadata[SCHEMA_KEY]:
                raise ResultsError(f"{path}: schema version {version!r}, this topo reads "
                                   f"{schema.metadata[SCHEMA_KEY]!r}")
            for name in ADDED_LATER & (set(schema.names) - set(table.schema.names)):
                table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
            missing = set(schema.names) - set(table.schema.names)
            if missing:
                raise ResultsError(f"{path}: missing columns {sorted(missing)}")
            tables.append(table.select(schema.names).cast(schema))
        return tables

    @staticmethod
    def _merge(tables: list[pa.Table], schema: pa.Schema, key: list[str]) -> pa.Table:
        if not tables:
            return schema.empty_table()
        frame = pa.concat_tables(tables).to_pandas()
        frame = frame.drop_duplicates(subset=key, keep="last").sort_values(key, kind="stable")
        return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)

    def _read(self, kind: str, main: str, schema: pa.Schema, key: list[str]) -> pd.DataFrame:
        main_path = self.directory / main
        if not self.directory.is_dir():
            raise ResultsError(f"{self.directory}: no such results folder")
        tables = self._tables(main_path, self._part_files(kind), schema)
        frame = self._merge(tables, schema, key).to_pandas()
        return frame.reset_index(drop=True)

    @staticmethod
    def _write(table: pa.Table, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from exc


def records_from_frame(frame: pd.DataFrame) -> list[RequestRecord]:
    names = [f.name for f in dataclasses.fields(RequestRecord)]
    records = []
    for row in frame[names].to_dict("records"):
        row["token_times"] = [float(t) for t in row["token_times"]] if row["token_times"] is not None else []
        for name, value in row.items():
            if name != "token_times" and isinstance(value, float) and pd.isna(value) and name not in (
                    "batch_start", "start"):
                row[name] = None
        for name in ("prompt_tokens", "completion_tokens", "status_code"):
            if row[name] is not None:
                row[name] = int(row[name])
        records.append(RequestRecord(**row))
    return records
