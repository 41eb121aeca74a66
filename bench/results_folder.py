"""A results folder: the one class that knows its layout, its typed meta.json and how older folders load.

    DIR/meta.json           FolderMeta: what wrote the folder (a sweep, a prediction, a bench), when, how
    DIR/requests.parquet    one row per request, raw timestamps (bench/records.py RequestRecord)
    DIR/cells.parquet       one row per (topology, workload, load) cell and run (bench/records.py CELL_COLUMNS)
    DIR/parts/              appended rows not merged yet (a sweep running, or one that died)
    DIR/telemetry.parquet   samples of every engine's /metrics and every node (telemetry/sampler.py)
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

Disk errors: every write is temporary file, fsync, rename, so a full disk leaves the previous file whole
and no temporary file behind, and raises StorageError (what, where, what to do). A part file that cannot be
read (0 bytes after a crash, say) is moved to `parts/damaged/` with the other half of its run and reported
in `notes`: the run is then missing, so a resume measures it again.

Older folders load through migrations, never by rewriting them:
- meta.json schema 1 (`"schema": 1`, topo before the typed meta) -> 2: the key is `schema_version`.
- Parquet schema 1 (before the load as a value) -> 2: `workload` is `default`, `load` is `c{concurrency}`.
- A column other than the row key that a file lacks (a metric added after it was written) is empty, so
  adding a metric to CELL_COLUMNS needs no new schema version.
- A file without a schema version (written by pandas: `topo predict --out` before schema 2) is read when
  it holds the columns a report needs; the other columns are empty.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from collections.abc import Callable, Sequence
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
from common.errors import ResultsError, StorageError
from topology.nccl import transport_from_env

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
META_SLACK_BYTES = 1024
FolderKind = Literal["sweep", "prediction", "bench"]
Status = Literal["running", "complete", "incomplete", "interrupted", "failed"]


class NightlyFacts(BaseModel):
    """What `topo nightly` adds to its sweep's meta: the baseline it compared with and the verdict."""

    model_config = ConfigDict(extra="forbid")

    baseline: str
    baseline_folder: str | None = None
    exit_code: int | None = None
    summary: str | None = None


class Incident(BaseModel):
    """A topology that stopped serving mid-sweep (the watchdog's finding) and what the sweep did about it."""

    model_config = ConfigDict(extra="forbid")

    topology: str
    load: str  # the cell in progress, e.g. "c16"
    runs_failed: list[int] = []  # the runs of that cell that did not finish with this bring-up
    reason: str
    at: str
    action: str


class NodeFacts(BaseModel):
    """What ran on one node for one topology (cluster/provenance.py); None: the node could not say."""

    model_config = ConfigDict(extra="forbid")

    engine: str | None = None  # vllm | twin
    launcher: str | None = None  # process | docker
    engine_version: str | None = None
    engine_commit: str | None = None
    image: str | None = None
    image_id: str | None = None
    image_digests: list[str] = []
    nccl: str | None = None
    driver: str | None = None
    kernel: str | None = None
    env: dict[str, dict[str, str]] = {}  # step -> the link variables its process got (secrets masked)


    def summary(self, *, with_link: bool = True) -> str:
        """One line for a report header: engine and version, image, NCCL (and over what, `with_link`: an
        engine on one node has no NCCL traffic to speak of), driver, kernel."""
        parts = [" ".join(p for p in (self.engine, self.engine_version) if p) or "engine ?"]
        if self.engine_commit:
            parts[0] += f" (commit {self.engine_commit})"
        if self.image:
            parts.append(f"image {self.image}" + (f" {self.image_id[:19]}" if self.image_id else ""))
        link = next(iter(self.env.values()), {})
        if transport_from_env(link) == "sockets":
            transport = f"over sockets {link.get('NCCL_SOCKET_IFNAME', '?')}"
        elif link.get("NCCL_IB_HCA", "").strip():
            transport = f"over RoCE {link['NCCL_IB_HCA']}"
        else:
            transport = f"over the RoCE device it detects (no NCCL_IB_HCA; else sockets {link.get('NCCL_SOCKET_IFNAME', '?')})"
        if with_link:
            parts.append(f"NCCL {self.nccl or '-'} {transport}")
        parts += [f"driver {self.driver}"] if self.driver else []
        parts += [f"kernel {self.kernel}"] if self.kernel else []
        return ", ".join(parts)


class WhatRan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    executor: str  # mp | ray | uni
    nodes: dict[str, NodeFacts] = {}


# What `topo regress` compares between two sweeps' records of what ran (besides executor and link env).
COMPARED_FACTS = ("engine_version", "engine_commit", "image_id", "nccl", "driver", "kernel")


def ran_differences(baseline: dict[str, WhatRan], current: dict[str, WhatRan]) -> list[str]:
    """Per topology and node, what ran differently in two sweeps; a side without a record says nothing."""
    found = []
    for topology in sorted(set(baseline) & set(current)):
        base, cur = baseline[topology], current[topology]
        if base.executor != cur.executor:
            found.append(f"{topology}: executor {base.executor} -> {cur.executor}")
        for node in sorted(set(base.nodes) & set(cur.nodes)):
            was, now = base.nodes[node], cur.nodes[node]
            for fact in COMPARED_FACTS:
                before, after = getattr(was, fact), getattr(now, fact)
                if before is not None and after is not None and before != after:
                    found.append(f"{topology} on {node}: {fact} {before} -> {after}")
            if was.env and now.env and was.env != now.env:
                found.append(f"{topology} on {node}: the NCCL/GLOO environment changed")
    return found


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
    incidents: list[Incident] = []
    ran: dict[str, WhatRan] = {}  # topology -> what ran on each node
    nightly: NightlyFacts | None = None
    # why each cell stopped measuring ("topology/workload/load" -> "precise: ±3.1% after 3 runs", ...)
    cell_stops: dict[str, str] = {}
    # the time to a decision: wall_s (the sweep, bring-ups included), serving_s (batches of measured runs,
    # first send to last byte) and serving_share = serving_s / wall_s
    timing: dict[str, float] = {}
    # topology -> the topology whose Ray cluster it was brought up on (its start-up_s leaves that part out)
    ray_kept_from: dict[str, str] = {}
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

# telemetry.parquet: one row per (scrape, series), long format. Samples are never deduplicated (each is one
# moment of one source); the cell keys are those of the run window the sample fell in (null outside).
TELEMETRY_SCHEMA_KEY = b"topo.telemetry_schema"
TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("topology", pa.string()),
        pa.field("workload", pa.string()),
        pa.field("load", pa.string()),  # null: sampled outside any cell (start-up, between cells)
        pa.field("concurrency", pa.int64()),
        pa.field("run", pa.int64()),  # null: outside a measured run (warm-up, between runs)
        pa.field("source", pa.string()),  # engine:<node> | proxy | node:<node>
        pa.field("node", pa.string()),
        pa.field("t", pa.float64()),  # perf_counter of the sweep process: the clock of requests.parquet
        pa.field("unix", pa.float64()),
        pa.field("metric", pa.string()),
        pa.field("le", pa.float64()),  # histogram bucket bound; NaN otherwise
        pa.field("value", pa.float64()),
    ],
    metadata={TELEMETRY_SCHEMA_KEY: b"1"},
)


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
    telemetry: pd.DataFrame | None = None  # telemetry.parquet (and its parts), when the sweep sampled


class ResultsFolder:
    """One results folder (see the module docstring). Nothing is read or created until asked."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.notes: list[str] = []  # damaged part files found and set aside while reading

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
        return self._part_files(_REQUESTS) + self._part_files(_CELLS) + self._telemetry_parts()

    def has_telemetry(self) -> bool:
        return self.telemetry_path.is_file() or bool(self._telemetry_parts())

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
        """Atomic: a crash while writing never leaves half a meta.json behind. When the disk is full, the
        status must still come true: the file is then rewritten in place, in the blocks it already has."""
        self._mkdir(self.directory)

        def encoded(value: FolderMeta) -> bytes:
            return (json.dumps(value.model_dump(mode="json"), indent=2) + "\n").encode()

        data = encoded(meta)
        try:
            # Trailing blanks (valid JSON) keep blocks in hand to record the final status on a full disk.
            _write_atomically(self.meta_path, lambda handle: handle.write(data + b" " * META_SLACK_BYTES))
        except StorageError:
            # The status matters most (a reader must not think the sweep still runs): if the whole meta does
            # not fit in the old file's blocks, the error texts are shortened (they are printed anyway).
            shorter = meta.model_copy(update={"errors": {key: text[:60] for key, text in meta.errors.items()}})
            terse = meta.model_copy(update={"errors": {key: "" for key in meta.errors}})
            if not any(self._rewrite_in_place(candidate) for candidate in (data, encoded(shorter), encoded(terse))):
                raise

    def _rewrite_in_place(self, data: bytes) -> bool:
        try:
            with open(self.meta_path, "r+b") as handle:
                if len(data) > os.fstat(handle.fileno()).st_blocks * 512:
                    return False  # would need new blocks: leave the old, complete file
                handle.write(data)
                handle.truncate()
                handle.flush()
                os.fsync(handle.fileno())
            return True
        except OSError:
            return False

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

    def append_telemetry(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store samples (telemetry/sampler.py rows) as one new part file."""
        if not rows:
            return
        self._mkdir(self.parts)
        stamp = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}"
        table = pa.Table.from_pylist([{name: row.get(name) for name in TELEMETRY_SCHEMA.names} for row in rows],
                                     schema=TELEMETRY_SCHEMA)
        self._write(table, self.parts / f"telemetry-{stamp}.parquet")

    def read_telemetry(self) -> pd.DataFrame:
        """Every sample (main file and parts); an empty frame of the schema when there is none."""
        paths = ([self.telemetry_path] if self.telemetry_path.is_file() else []) + self._telemetry_parts()
        if not paths:
            return TELEMETRY_SCHEMA.empty_table().to_pandas()
        return pa.concat_tables([self._telemetry_table(path) for path in paths]).to_pandas()

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

    def completed_cells(self, runs: int, max_failed_share: float = 0.0) -> set[tuple[str, str, str]]:
        """The cells that already hold `runs` measured (not failed) runs: what a resume can skip."""
        return {key for key, cell in self.cell_progress(max_failed_share).items() if cell.measured >= runs}

    def cell_progress(self, max_failed_share: float = 0.0) -> dict[tuple[str, str, str], CellProgress]:
        """Per cell: runs measured, runs stored as failed, and the number the next run gets."""
        if not self.directory.is_dir():
            return {}
        return cell_progress(self.read_cells(), max_failed_share)

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
        telemetry_parts = self._telemetry_parts()
        if telemetry_parts:
            paths = ([self.telemetry_path] if self.telemetry_path.is_file() else []) + telemetry_parts
            self._write(pa.concat_tables([self._telemetry_table(path) for path in paths]), self.telemetry_path)
            for part in telemetry_parts:
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
        telemetry = self.read_telemetry() if self.has_telemetry() else None
        return FolderContents(self.directory, cells, self.meta_or_none(), requests, len(self.unmerged_parts()),
                              telemetry)

    def write_report(self, markdown: str, html: str) -> tuple[Path, Path]:
        md_path, html_path = self.report_paths
        try:
            md_path.write_text(markdown, encoding="utf-8")
            html_path.write_text(html, encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"{self.directory}: cannot write the report ({exc})") from exc
        return md_path, html_path

    # -- internals ----------------------------------------------------------------------------------------

    @staticmethod
    def _mkdir(path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror}") from exc

    def _telemetry_parts(self) -> list[Path]:
        return sorted(self.parts.glob("telemetry-*.parquet")) if self.parts.is_dir() else []

    @staticmethod
    def _telemetry_table(path: Path) -> pa.Table:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ResultsError(f"{path}: not a readable parquet file ({exc})") from exc
        version = (table.schema.metadata or {}).get(TELEMETRY_SCHEMA_KEY)
        if version != TELEMETRY_SCHEMA.metadata[TELEMETRY_SCHEMA_KEY]:
            raise ResultsError(f"{path}: telemetry schema {version!r}, this topo reads "
                               f"{TELEMETRY_SCHEMA.metadata[TELEMETRY_SCHEMA_KEY]!r}")
        return table.select(TELEMETRY_SCHEMA.names).cast(TELEMETRY_SCHEMA)

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
        tables = []
        for path in paths:
            try:
                tables.append(self._migrated(kind, path, schema))
            except ResultsError as exc:
                if path.parent != self.parts or not path.exists():
                    raise  # a main file is never set aside: a person must look at it
                self._set_aside(path, exc)
        return tables

    def _set_aside(self, part: Path, problem: ResultsError) -> None:
        """Move a damaged part, and the other half of its run (same stamp), to parts/damaged/."""
        stamp = part.name.split("-", 1)[1]
        damaged = self.parts / "damaged"
        moved = []
        try:
            damaged.mkdir(exist_ok=True)
            for sibling in sorted(self.parts.glob(f"*-{stamp}")):
                sibling.replace(damaged / sibling.name)
                moved.append(sibling.name)
        except OSError as exc:
            raise StorageError(f"{part} is damaged ({problem}) and cannot be moved aside ({exc.strerror or exc}); "
                               f"move it out of {self.parts} by hand, then resume") from exc
        self.notes.append(f"{part} was damaged ({problem}); moved {', '.join(moved)} to {damaged}: the run it "
                          "held is missing now, so `topo sweep --resume` measures it again")

    @staticmethod
    def _migrated(kind: _Kind, path: Path, schema: pa.Schema) -> pa.Table:
        """One file as `schema` (the current one). The row key must be there (but for what a version before
        it lacked); any other column a file lacks is empty: a metric added later is unknown for older rows,
        so adding one needs no new schema version."""
        try:
            stored = pq.read_schema(path)
            version = (stored.metadata or {}).get(SCHEMA_KEY)
            present = set(stored.names)
            table = pq.read_table(path, columns=[n for n in schema.names if n in present])
        except (OSError, pa.ArrowInvalid) as exc:
            raise ResultsError(f"{path}: not a readable parquet file ({exc})") from exc
        known = {str(v).encode(): v for v in range(1, SCHEMA_VERSION + 1)}
        if version is None:
            missing = [c for c in kind.legacy_required if c not in present]
            if missing:
                raise ResultsError(f"{path}: no topo schema version, and missing column(s) {', '.join(missing)}")
        elif version in known:
            required = [c for c in kind.key if not (known[version] == 1 and c in _LOAD_COLUMNS)]
            missing = [c for c in required if c not in present]
            if missing:
                raise ResultsError(f"{path}: missing columns {missing}")
        else:
            raise ResultsError(f"{path}: schema version {version!r}, this topo reads 1 to {SCHEMA_VERSION}")
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
        _write_atomically(path, lambda handle: pq.write_table(table, handle))


def _write_atomically(path: Path, write: Callable[[Any], object]) -> None:
    """Temporary file, fsync, rename: a reader (or a crash) sees the old file or the new one, never half,
    and a failed write leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        hint = " (free some space, then resume)" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}{hint}") from exc


def run_failed(failed: Any, requests: Any, max_failed_share: float = 0.0) -> bool:
    """A run counts as measured only when the share of its requests that failed is at most
    `max_failed_share` (default 0: every request succeeded); a run that sent nothing failed too."""
    sent = int(requests) if requests is not None and not pd.isna(requests) else 0
    lost = int(failed) if failed is not None and not pd.isna(failed) else 0
    return sent == 0 or lost / sent > max_failed_share


@dataclass(frozen=True)
class CellProgress:
    measured: int  # runs whose requests succeeded (within the failure threshold)
    failed: int  # runs stored as failed: kept and reported, measured again by a resume
    next_run: int  # the next run's number: numbering continues past failed runs, so nothing is overwritten


def cell_progress(cells: pd.DataFrame, max_failed_share: float = 0.0) -> dict[tuple[str, str, str], CellProgress]:
    if cells.empty:
        return {}
    progress = {}
    for (topology, workload, load), rows in fill_load_keys(cells).groupby(list(CELL_KEY)):
        rows = rows.drop_duplicates(subset=["run"], keep="last")
        failed = [run_failed(f, r, max_failed_share) for f, r in zip(rows["failed"], rows["requests"])]
        progress[(str(topology), str(workload), str(load))] = CellProgress(
            measured=failed.count(False), failed=failed.count(True), next_run=int(rows["run"].max()) + 1)
    return progress


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
