"""telemetry.parquet: the raw samples of a sweep (telemetry/sampler.py's rows), appended per topology.

Like requests.parquet (bench/store.py) it is crash-safe: each topology's samples go to one new part file
under parts/ the moment the topology is done (also when it failed: what was sampled is kept), and
`compact()` folds the parts into the main file. Samples are never rewritten or deduplicated: each is one
moment of one source.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from itertools import count
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import ResultsError

TELEMETRY_FILE = "telemetry.parquet"
PARTS_DIR = "parts"
SCHEMA_KEY = b"topo.telemetry_schema"
SCHEMA_VERSION = b"1"
TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("topology", pa.string()),
        pa.field("concurrency", pa.int64()),  # null: sampled outside any cell
        pa.field("run", pa.int64()),  # null: outside a measured run (warm-up, between runs, start-up)
        pa.field("source", pa.string()),  # engine:<node> | proxy | node:<node>
        pa.field("node", pa.string()),
        pa.field("t", pa.float64()),  # perf_counter of the sweep process: the clock of requests.parquet
        pa.field("unix", pa.float64()),
        pa.field("metric", pa.string()),
        pa.field("le", pa.float64()),  # histogram bucket bound; NaN otherwise
        pa.field("value", pa.float64()),
    ],
    metadata={SCHEMA_KEY: SCHEMA_VERSION},
)
_sequence = count()


class TelemetryStore:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        return self.directory / TELEMETRY_FILE

    def _parts(self) -> list[Path]:
        parts = self.directory / PARTS_DIR
        return sorted(parts.glob("telemetry-*.parquet")) if parts.exists() else []

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        parts = self.directory / PARTS_DIR
        try:
            parts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot create {parts}: {exc.strerror}") from exc
        table = pa.Table.from_pylist([{name: row.get(name) for name in TELEMETRY_SCHEMA.names} for row in rows],
                                     schema=TELEMETRY_SCHEMA)
        _write(table, parts / f"telemetry-{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}.parquet")

    def read(self) -> pd.DataFrame:
        """Every sample (main file and parts); an empty frame of the schema when there is none."""
        tables = [_read(path) for path in ([self.path] if self.path.exists() else []) + self._parts()]
        if not tables:
            return TELEMETRY_SCHEMA.empty_table().to_pandas()
        return pa.concat_tables(tables).to_pandas()

    def compact(self) -> None:
        parts = self._parts()
        if not parts:
            return
        tables = [_read(path) for path in ([self.path] if self.path.exists() else []) + parts]
        _write(pa.concat_tables(tables), self.path)
        for part in parts:
            part.unlink(missing_ok=True)
        folder = self.directory / PARTS_DIR
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()


def _read(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ResultsError(f"{path}: not a readable parquet file ({exc})") from exc
    version = (table.schema.metadata or {}).get(SCHEMA_KEY)
    if version != SCHEMA_VERSION:
        raise ResultsError(f"{path}: telemetry schema {version!r}, this topo reads {SCHEMA_VERSION!r}")
    return table.select(TELEMETRY_SCHEMA.names).cast(TELEMETRY_SCHEMA)


def _write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from exc
