"""A results folder: the one class that knows its layout, its typed meta.json and how older folders load.

    DIR/meta.json           FolderMeta: what wrote the folder (a sweep, a prediction, a bench), when, how
    DIR/requests.parquet    one row per request, raw timestamps (bench/records.py RequestRecord)
    DIR/cells.parquet       one row per (topology, workload, load) cell and run (bench/records.py CELL_COLUMNS)
    DIR/parts/              appended rows not merged yet (a sweep running, or one that died)
    DIR/telemetry.parquet   reserved for server-side telemetry
    DIR/report.md, DIR/report.html   rendered by reports/ from the data above

Every reader and writer goes through `ResultsFolder` (the sweep, `topo bench`, `topo predict`, the nightly
job, history, regress, reports); no other module spells a file name.

Appending is crash-safe by construction: `append()` never rewrites anything, it writes one new part file
per call under `parts/` (a temporary name, then renamed). `compact()` merges the parts into the two main
files (again temporary file + rename, then deletes the merged parts). Readers always see the main file plus
every part, so a sweep that dies between appends loses nothing, can resume, and `topo report` shows it.
Rows are keyed (bench/records.py RUN_KEY, REQUEST_KEY); when a key appears twice (a resumed cell measured
again) the later write wins. Only the writer of a folder compacts it: two concurrent compactions could
each delete parts the other merged.

Older folders load through migrations, never by rewriting them:
- meta.json schema 1 (`"schema": 1`, topo before the typed meta) -> 2: the key is `schema_version`.
- Parquet schema 1 (before the load as a value) -> 2: `workload` is `default`, `load` is `c{concurrency}`.
- A file without a schema version (written by pandas: `topo predict --out` before schema 2) is read when
  it holds the columns a report needs; the other columns are empty.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from bench.records import (
    CELL_COLUMNS,
    CELL_KEY,
    OPEN_COLUMNS,
    REQUEST_KEY,
    REQUIRED_CELL_COLUMNS,
    RUN_KEY,
    SCHEMA_VERSION,
    RequestRecord,
)
from bench.workload import DEFAULT_WORKLOAD
from common.config import describe_validation_error
from common.errors import ResultsError

META_FILE = "meta.json"
REQUESTS_FILE = "requests.parquet"
CELLS_FILE = "cells.parquet"
PARTS_DIR = "parts"
TELEMETRY_FILE = "telemetry.parquet"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

# ---------------------------------------------------------------------------------------------------------
# meta.json

META_SCHEMA_VERSION = 2
FolderKind = Literal["sweep", "prediction", "bench"]
Status = Literal["running", "complete", "incomplete", "interrupted", "failed"]


class NightlyFacts(BaseModel):
    """What `topo nightly` adds to its sweep's meta: the baseline it compared with and the verdict."""

    model_config = ConfigDict(extra="forbid")

    baseline: str
    baseline_folder: str | None = None
    exit_code: int | None = None
    summary: str | None = None


class FolderMeta(BaseModel):
    """meta.json. `spec` is the writer's own settings (SweepSpec for a sweep, the options of `topo predict`
    or `topo bench`); the facts every kind shares are read from it by the properties below."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = META_SCHEMA_VERSION
    kind: FolderKind
    status: Status | None = None
    title: str | None = None
    who: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    resumed_at: list[str] = []
    command_line: list[str] = []
    git_describe: str | None = None
    versions: dict[str, str | None] = {}
    spec: dict[str, Any] = {}
    cluster: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    startup_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    warnings: list[str] = []
    nightly: NightlyFacts | None = None
    workloads: dict[str, Any] | None = None  # the workload suite measured (bench/suite.py Suite, as JSON)

    @property
    def model(self) -> str | None:
        value = self.spec.get("model") or (self.recipe or {}).get("name")
        return str(value) if value else None

    def _number(self, key: str) -> int | None:
        value = self.spec.get(key)
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def pp(self) -> int | None:
        return self._number("pp")

    @property
    def tg(self) -> int | None:
        return self._number("tg")

    @property
    def runs(self) -> int | None:
        return self._number("runs")

    @property
    def cluster_name(self) -> str | None:
        if self.cluster and self.cluster.get("name"):
            return str(self.cluster["name"])
        if self.kind == "prediction":
            return f"twin:{self.spec['hardware']}" if self.spec.get("hardware") else None
        return self.spec.get("cluster")


def migrate_meta(data: Any, source: str) -> FolderMeta:
    """A meta.json of any schema this topo knows, as the current FolderMeta."""
    if not isinstance(data, dict):
        raise ResultsError(f"{source}: expected a JSON object, got {type(data).__name__}")
    data = dict(data)
    version = data.pop("schema", None) if "schema_version" not in data else data["schema_version"]
    if version is None:
        version = 1  # hand-written or older: read as the first schema
    if not isinstance(version, int) or version > META_SCHEMA_VERSION:
        raise ResultsError(f"{source}: meta schema {version!r}; this topo reads up to {META_SCHEMA_VERSION} "
                           "(a newer topo wrote it?)")
    if version == 1:  # 1 -> 2: only the version key was renamed
        data["schema_version"] = 2
    try:
        return FolderMeta.model_validate(data)
    except ValidationError as exc:
        raise ResultsError(describe_validation_error(exc, source)) from exc


# ---------------------------------------------------------------------------------------------------------
# Parquet schemas

SCHEMA_KEY = b"topo.schema_version"
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


_CELL_STRINGS = {"topology", "workload", "load"}
_CELL_INTS = {"concurrency", "run", "requests", "failed"}
REQUEST_SCHEMA = _request_schema()
CELL_SCHEMA = pa.schema(
    [pa.field(name, pa.string() if name in _CELL_STRINGS else pa.int64() if name in _CELL_INTS else pa.float64())
     for name in CELL_COLUMNS],
    metadata={SCHEMA_KEY: str(SCHEMA_VERSION).encode()},
)
_LOAD_COLUMNS = {"workload", "load"}  # what schema 2 added
_OPEN_COLUMNS = {*OPEN_COLUMNS, "scheduled_at"}  # what schema 3 added


@dataclass(frozen=True)
class _Kind:
    """One of the two row tables: its main file, the prefix of its parts, its schema and row key."""

    name: str
    main: str
    schema: pa.Schema
    key: tuple[str, ...]
    legacy_required: tuple[str, ...]  # an unversioned file (written by pandas) is read when it holds these


_REQUESTS = _Kind("requests", REQUESTS_FILE, REQUEST_SCHEMA, REQUEST_KEY, ("topology", "concurrency", "run"))
_CELLS = _Kind("cells", CELLS_FILE, CELL_SCHEMA, RUN_KEY, REQUIRED_CELL_COLUMNS)


def fill_load_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows from before the load as a value: workload `default`, load `c{concurrency}` (closed batches)."""
    frame = frame.copy()
    if "workload" not in frame.columns:
        frame["workload"] = DEFAULT_WORKLOAD
    else:
        frame["workload"] = frame["workload"].where(frame["workload"].notna(), DEFAULT_WORKLOAD)
    labels = "c" + frame["concurrency"].astype("Int64").astype(str)
    if "load" not in frame.columns:
        frame["load"] = labels
    else:
        frame["load"] = frame["load"].where(frame["load"].notna(), labels)
    return frame


_sequence = count()


@dataclass(frozen=True)
class FolderContents:
    """A folder read for a report: cells (migrated), meta (None without meta.json), requests when stored."""

    directory: Path
    cells: pd.DataFrame
    meta: FolderMeta | None
    requests: pd.DataFrame | None
    unmerged_parts: int  # part files not merged into the main files yet (their rows are in the frames)


class ResultsFolder:
    """One results folder (see the module docstring). Nothing is read or created until asked."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"ResultsFolder({str(self.directory)!r})"

    # -- layout -------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def meta_path(self) -> Path:
        return self.directory / META_FILE

    @property
    def cells_path(self) -> Path:
        return self.directory / CELLS_FILE

    @property
    def requests_path(self) -> Path:
        return self.directory / REQUESTS_FILE

    @property
    def parts(self) -> Path:
        return self.directory / PARTS_DIR

    @property
    def telemetry_path(self) -> Path:
        return self.directory / TELEMETRY_FILE

    @property
    def report_paths(self) -> tuple[Path, Path]:
        return self.directory / REPORT_MD, self.directory / REPORT_HTML

    def has_cells(self) -> bool:
        """Holds measured (or predicted) cells: merged, or still in parts."""
        return self.cells_path.is_file() or bool(self._part_files(_CELLS))

    def unmerged_parts(self) -> list[Path]:
        return self._part_files(_REQUESTS) + self._part_files(_CELLS)

    # -- meta.json ----------------------------------------------------------------------------------------

    def has_meta(self) -> bool:
        return self.meta_path.is_file()

    def read_meta(self) -> FolderMeta:
        try:
            data = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ResultsError(f"{self.directory}: no {META_FILE}; not a folder `topo sweep` wrote") from exc
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{self.meta_path}: not readable JSON ({exc})") from exc
        return migrate_meta(data, str(self.meta_path))

    def meta_or_none(self) -> FolderMeta | None:
        """The meta, or None for a folder without meta.json (`topo bench --out` before schema 2 wrote none)."""
        return self.read_meta() if self.has_meta() else None

    def write_meta(self, meta: FolderMeta) -> None:
        """Atomic: a crash while writing never leaves half a meta.json behind."""
        self._mkdir(self.directory)
        text = json.dumps(meta.model_dump(mode="json"), indent=2) + "\n"
        tmp = self.meta_path.with_name(f".{META_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.meta_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ResultsError(f"cannot write {self.meta_path}: {exc.strerror or exc}") from exc

    # -- rows ---------------------------------------------------------------------------------------------

    def append(self, records: Sequence[RequestRecord], run_rows: Sequence[dict[str, Any]]) -> None:
        """Store measured runs at once, as new part files (see the module docstring)."""
        self._mkdir(self.parts)
        stamp = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}"
        if records:
            table = pa.Table.from_pylist([r.to_row() for r in records], schema=REQUEST_SCHEMA)
            self._write(table, self.parts / f"{_REQUESTS.name}-{stamp}.parquet")
        if run_rows:
            table = pa.Table.from_pylist([{c: row[c] for c in CELL_COLUMNS} for row in run_rows], schema=CELL_SCHEMA)
            self._write(table, self.parts / f"{_CELLS.name}-{stamp}.parquet")

    def write_cells(self, cells: pd.DataFrame) -> None:
        """Replace cells.parquet with these rows (a prediction's whole table at once)."""
        self._mkdir(self.directory)
        frame = fill_load_keys(cells)
        table = pa.Table.from_pandas(frame[list(CELL_COLUMNS)], schema=CELL_SCHEMA, preserve_index=False)
        self._write(table, self.cells_path)

    def read_requests(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Every request row (main file and parts); `columns` reads only those (plus the row key)."""
        return self._read(_REQUESTS, columns)

    def read_cells(self) -> pd.DataFrame:
        """Every run row (main file and parts), migrated to CELL_COLUMNS; empty when nothing is stored."""
        return self._read(_CELLS)

    def read_records(self) -> list[RequestRecord]:
        """The request rows as RequestRecords again (for recomputing metrics)."""
        return records_from_frame(self.read_requests())

    def runs_done(self) -> dict[tuple[str, str, str], int]:
        """(topology, workload, load) -> how many runs are stored (a resume continues the numbering)."""
        if not self.directory.is_dir():
            return {}
        return runs_per_cell(self.read_cells())

    def completed_cells(self, runs: int) -> set[tuple[str, str, str]]:
        """The cells that already hold `runs` measured runs: what a resume can skip."""
        return {key for key, n in self.runs_done().items() if n >= runs}

    def compact(self) -> None:
        """Merge every part into the main files; safe to call at any time, also after a crash."""
        for kind in (_REQUESTS, _CELLS):
            part_files = self._part_files(kind)
            if not part_files:
                continue
            main = self.directory / kind.main
            merged = self._merge(self._tables(kind, ([main] if main.exists() else []) + part_files), kind)
            self._write(merged, main)
            for part in part_files:  # only after the merged file is in place
                part.unlink(missing_ok=True)
        if self.parts.exists() and not any(self.parts.iterdir()):
            self.parts.rmdir()

    # -- for reports --------------------------------------------------------------------------------------

    def load(self, request_columns: Sequence[str] | None = None, *, with_requests: bool = True) -> FolderContents:
        """Cells (required), meta and requests (when present and wanted; `request_columns` reads only those)
        of the folder, unmerged parts included."""
        if not self.directory.is_dir():
            raise ResultsError(f"{self.directory}: no such results folder")
        if not self.has_cells():
            raise ResultsError(f"{self.directory}: has no {CELLS_FILE}; is it a results folder of `topo sweep`?")
        cells = self.read_cells()
        has_requests = with_requests and (self.requests_path.is_file() or bool(self._part_files(_REQUESTS)))
        requests = self.read_requests(request_columns) if has_requests else None
        return FolderContents(self.directory, cells, self.meta_or_none(), requests, len(self.unmerged_parts()))

    def write_report(self, markdown: str, html: str) -> tuple[Path, Path]:
        md_path, html_path = self.report_paths
        try:
            md_path.write_text(markdown, encoding="utf-8")
            html_path.write_text(html, encoding="utf-8")
        except OSError as exc:
            raise ResultsError(f"{self.directory}: cannot write the report ({exc})") from exc
        return md_path, html_path

    # -- internals ----------------------------------------------------------------------------------------

    @staticmethod
    def _mkdir(path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot create {path}: {exc.strerror}") from exc

    def _part_files(self, kind: _Kind) -> list[Path]:
        return sorted(self.parts.glob(f"{kind.name}-*.parquet")) if self.parts.is_dir() else []

    def _read(self, kind: _Kind, columns: Sequence[str] | None = None) -> pd.DataFrame:
        if not self.directory.is_dir():
            raise ResultsError(f"{self.directory}: no such results folder")
        main = self.directory / kind.main
        tables = self._tables(kind, ([main] if main.exists() else []) + self._part_files(kind), columns)
        return self._merge(tables, kind, columns).to_pandas().reset_index(drop=True)

    @staticmethod
    def _schema(kind: _Kind, columns: Sequence[str] | None) -> pa.Schema:
        if columns is None:
            return kind.schema
        wanted = set(columns) | set(kind.key) | {"concurrency"}
        return pa.schema([f for f in kind.schema if f.name in wanted], metadata=kind.schema.metadata)

    def _tables(self, kind: _Kind, paths: list[Path], columns: Sequence[str] | None = None) -> list[pa.Table]:
        schema = self._schema(kind, columns)
        return [self._migrated(kind, path, schema) for path in paths]

    @staticmethod
    def _migrated(kind: _Kind, path: Path, schema: pa.Schema) -> pa.Table:
        """One file as `schema` (schema 2); older files get the columns their version lacks as nulls."""
        try:
            stored = pq.read_schema(path)
            version = (stored.metadata or {}).get(SCHEMA_KEY)
            present = set(stored.names)
            table = pq.read_table(path, columns=[n for n in schema.names if n in present])
        except (OSError, pa.ArrowInvalid) as exc:
            raise ResultsError(f"{path}: not a readable parquet file ({exc})") from exc
        current = str(SCHEMA_VERSION).encode()
        if version is None:
            missing = [c for c in kind.legacy_required if c not in present]
            if missing:
                raise ResultsError(f"{path}: no topo schema version, and missing column(s) {', '.join(missing)}")
            may_lack = set(schema.names)
        elif version == b"1":
            may_lack = _LOAD_COLUMNS | _OPEN_COLUMNS
        elif version == b"2":
            may_lack = _OPEN_COLUMNS
        elif version == current:
            may_lack = set()
        else:
            raise ResultsError(f"{path}: schema version {version!r}, this topo reads 1 to {SCHEMA_VERSION}")
        missing = [n for n in schema.names if n not in present]
        if set(missing) - may_lack:
            raise ResultsError(f"{path}: missing columns {sorted(set(missing) - may_lack)}")
        arrays = [table.column(f.name) if f.name in present else pa.nulls(table.num_rows, f.type) for f in schema]
        try:
            return pa.Table.from_arrays(arrays, schema=schema.remove_metadata()).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ResultsError(f"{path}: a column has the wrong type ({exc})") from exc

    def _merge(self, tables: list[pa.Table], kind: _Kind, columns: Sequence[str] | None = None) -> pa.Table:
        schema = self._schema(kind, columns)
        if not tables:
            return schema.empty_table()
        frame = fill_load_keys(pa.concat_tables(tables).to_pandas())
        key = list(kind.key)
        if len(tables) > 1:  # one file holds no duplicate key unless another writer put it there: kept, shown
            frame = frame.drop_duplicates(subset=key, keep="last")
        frame = frame.sort_values(key, kind="stable")
        return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)

    @staticmethod
    def _write(table: pa.Table, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from exc


def runs_per_cell(cells: pd.DataFrame) -> dict[tuple[str, str, str], int]:
    """(topology, workload, load) -> how many distinct runs the rows hold."""
    if cells.empty:
        return {}
    counts = fill_load_keys(cells).groupby(list(CELL_KEY))["run"].nunique()
    return {(str(t), str(w), str(load)): int(n) for (t, w, load), n in counts.items()}


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
