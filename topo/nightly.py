"""The nightly job: `run_nightly` (sweep, gate against the baseline, report with trends, exit code), and
its library: the results root as a history, baseline tags.

A results root (default ./results) holds one folder per sweep (docs/DESIGN.md, "The results folder");
nothing else keeps state but one small file:

    ROOT/baselines.json   {"schema": 1, "tags": {"NAME": {"folder": "gemma4-26b-20261123-021500",
                                                         "set_at": "2026-11-23T08:01:00+00:00"}}}

A tag names a folder relative to the root (so the root can be moved or copied as a whole; a folder outside
the root is stored as an absolute path). `topo baseline set DIR --tag NAME` writes it, `topo regress
--baseline NAME` and `topo nightly --baseline NAME` read it. Tags live outside meta.json on purpose: a
sweep's folder is what the sweep wrote and is never rewritten by marking it good.

History queries run in DuckDB over every folder's cells file (one row per cell and run; bench's
ResultsFolder names it) joined with the facts of each folder's meta (time, model, cluster, status, git
describe, tags): no server, no index to keep in sync.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from bench.results_folder import FolderMeta, NightlyFacts, ResultsFolder, fill_load_keys
from common.errors import RegressionInputError, ResultsError
from reports.regress import (
    RegressionPolicy,
    RegressionResult,
    check_comparable,
    compare_result_dirs,
    write_gate_outputs,
)
from reports.results import folder_report, write_report
from reports.tables import METRICS, MetricSpec
from topo.sweep import SweepOutcome, SweepPlan, SweepProgress, SweepSpec, default_out_dir, plan_sweep, run_sweep
from topo.exits import EXIT_FAILURES

DEFAULT_ROOT = Path("results")
BASELINES_FILE = "baselines.json"
NO_BASELINE_EXIT = 0  # a first night has nothing to compare with: not a failure (see require_baseline)


# ---- one folder ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepEntry:
    """What `topo history` lists about one results folder (from its meta.json; absent facts are None)."""

    name: str  # folder name
    path: Path
    kind: str  # "sweep" or "prediction"
    status: str | None
    started_at: str | None
    model: str | None
    cluster: str | None
    git_describe: str | None
    pp: int | None
    tg: int | None
    tags: tuple[str, ...] = ()

    @property
    def started(self) -> datetime | None:
        if not self.started_at:
            return None
        try:
            moment = datetime.fromisoformat(self.started_at)
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: not readable JSON ({exc})") from exc


def read_entry(directory: Path, tags: Sequence[str] = ()) -> SweepEntry:
    """A results folder's facts from its meta (a folder without meta.json is still a sweep, facts unknown)."""
    meta = ResultsFolder(directory).meta_or_none()
    if meta is None:
        return SweepEntry(directory.name, directory, "sweep", None, None, None, None, None, None, None, tuple(tags))
    return SweepEntry(
        name=directory.name, path=directory, kind=meta.kind, status=meta.status, started_at=meta.started_at,
        model=meta.model, cluster=meta.cluster_name, git_describe=meta.git_describe, pp=meta.pp, tg=meta.tg,
        tags=tuple(tags),
    )


def list_sweeps(root: Path) -> list[SweepEntry]:
    """Every results folder directly under `root` (those holding cells, merged or not), oldest first."""
    if not root.is_dir():
        return []
    tags_of: dict[Path, list[str]] = {}
    for tag, folder in read_tags(root).items():
        tags_of.setdefault(folder.resolve(), []).append(tag)
    entries = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and ResultsFolder(p).has_cells()):
        tags = sorted(tags_of.get(directory.resolve(), []))
        try:
            entries.append(read_entry(directory, tags))
        except ResultsError:
            # one damaged meta.json must not hide the whole history: listed, with its data, facts unknown
            entries.append(SweepEntry(directory.name, directory, "sweep", "meta.json unreadable", None, None, None,
                                      None, None, None, tuple(tags)))
    return sorted(entries, key=_entry_order)


def _entry_order(entry: SweepEntry) -> tuple[float, str]:
    started = entry.started
    return (started.timestamp() if started else float("inf"), entry.name)


# ---- baseline tags ---------------------------------------------------------------------------------------


def _tags_path(root: Path) -> Path:
    return root / BASELINES_FILE


def _read_tag_file(root: Path) -> dict[str, dict[str, Any]]:
    path = _tags_path(root)
    if not path.is_file():
        return {}
    data = _read_json(path)
    tags = data.get("tags") if isinstance(data, dict) else None
    if not isinstance(tags, dict) or not all(isinstance(v, dict) and "folder" in v for v in tags.values()):
        raise ResultsError(f"{path}: expected {{\"tags\": {{NAME: {{\"folder\": ...}}}}}}; fix or delete the file")
    return tags


def read_tags(root: Path) -> dict[str, Path]:
    """Tag -> folder (resolved against the root)."""
    return {tag: root / str(entry["folder"]) for tag, entry in _read_tag_file(root).items()}


def tag_details(root: Path) -> dict[str, dict[str, Any]]:
    """Tag -> the stored entry ({"folder", "set_at"}), for `topo baseline list`."""
    return _read_tag_file(root)


def _valid_tag(tag: str) -> str:
    tag = tag.strip()
    if not tag or "/" in tag or tag.startswith(".") or any(ch.isspace() for ch in tag):
        raise RegressionInputError(f"--tag {tag!r}: a tag is one word without '/' (e.g. nightly, good-0.11.1)")
    return tag


@dataclass(frozen=True)
class TagChange:
    tag: str
    folder: Path
    previous: Path | None


def set_tag(root: Path, directory: Path, tag: str, *, allow_incomplete: bool = False) -> TagChange:
    """Mark `directory` (a results folder) as `tag`; returns the folder the tag named before, if any."""
    tag = _valid_tag(tag)
    if not ResultsFolder(directory).has_cells():
        raise ResultsError(f"{directory}: has no cells; only a results folder can be a baseline")
    entry = read_entry(directory)
    if entry.status not in (None, "complete") and not allow_incomplete:
        # a baseline missing a topology would let the gate pass that topology forever (its cells are "new")
        raise ResultsError(f"{directory}: its sweep is {entry.status!r}, not complete; a baseline should hold every "
                           "cell (pass --force to mark it anyway)")
    tags = _read_tag_file(root)
    previous = root / str(tags[tag]["folder"]) if tag in tags else None
    try:
        folder = str(directory.resolve().relative_to(root.resolve()))
    except ValueError:
        folder = str(directory.resolve())  # outside the root: kept absolute
    tags[tag] = {"folder": folder, "set_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    root.mkdir(parents=True, exist_ok=True)
    path = _tags_path(root)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"schema": 1, "tags": dict(sorted(tags.items()))}, indent=2) + "\n",
                       encoding="utf-8")
        tmp.replace(path)  # atomic: a crash never leaves half a tags file
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc}") from exc
    return TagChange(tag, root / folder, previous)


def resolve_sweep(reference: str | Path, root: Path) -> Path:
    """A folder path, or a tag of ROOT/baselines.json, -> the results folder (RegressionInputError if neither)."""
    text = str(reference)
    path = Path(text)
    if ResultsFolder(path).has_cells():
        return path
    tags = read_tags(root)
    if text in tags:
        folder = tags[text]
        if not ResultsFolder(folder).has_cells():
            raise RegressionInputError(f"tag {text!r} names {folder}, which holds no cells any more "
                                       f"(moved or deleted?); set it again with `topo baseline set DIR --tag {text}`")
        return folder
    if path.is_dir():
        raise RegressionInputError(f"{path}: has no cells; not a results folder")
    known = ", ".join(sorted(tags)) or "none"
    raise RegressionInputError(f"{text!r} is neither a results folder nor a tag in {_tags_path(root)} "
                               f"(tags: {known})")


def sweep_label(reference: str | Path, folder: Path) -> str:
    """How the gate names a sweep: `nightly (gemma4-26b-20261123-021500)` for a tag, the folder name else."""
    text = str(reference)
    if Path(text) == folder or ResultsFolder(text).has_cells():
        return folder.name or str(folder)
    return f"{text} ({folder.name})"


def find_baseline(reference: str, root: Path) -> Path | None:
    """The nightly's lookup: the folder, or None when the tag is not set yet (a first night)."""
    path = Path(reference)
    if ResultsFolder(path).has_cells():
        return path
    if reference in read_tags(root):
        return resolve_sweep(reference, root)
    if path.is_dir() or os.sep in reference:
        raise RegressionInputError(f"--baseline {reference}: not a results folder (no cells)")
    return None


# ---- history in DuckDB -----------------------------------------------------------------------------------


def metric_spec(key: str) -> MetricSpec:
    for metric in METRICS:
        if metric.key == key:
            return metric
    raise RegressionInputError(f"--metric {key!r}: expected one of {', '.join(m.key for m in METRICS)}")


def _entries_frame(entries: Sequence[SweepEntry]) -> pd.DataFrame:
    return pd.DataFrame({
        "sweep": [e.name for e in entries],
        "folder": [str(e.path.resolve()) for e in entries],
        "started": [e.started_at for e in entries],
        "position": list(range(len(entries))),
    })


def query_history(entries: Sequence[SweepEntry], *, topology: str | None = None,
                  concurrency: int | None = None) -> pd.DataFrame:
    """Every run of the given folders' merged cells file, with `sweep` and `started`, read by DuckDB.

    One query over `read_parquet([...], filename=true)` joined with the folders' meta.json facts; the
    result is the frame reports/history.py draws trends from (cells columns + sweep + started). Rows of
    files written before the load keys get them (workload `default`, load `c{concurrency}`)."""
    import duckdb

    columns = ["sweep", "started"]
    entries = [e for e in entries if ResultsFolder(e.path).cells_path.is_file()]  # parts only: not merged yet
    if not entries:
        return pd.DataFrame(columns=columns)
    facts = _entries_frame(entries)
    files = [str(ResultsFolder(f).cells_path) for f in facts["folder"]]
    where, params = ["true"], []
    if topology is not None:
        where.append("c.topology = ?")
        params.append(topology)
    if concurrency is not None:
        where.append("c.concurrency = ?")
        params.append(int(concurrency))
    sql = f"""
        SELECT c.* EXCLUDE (filename), f.sweep, f.started
        FROM read_parquet(?, filename = true, union_by_name = true) AS c
        JOIN facts AS f ON parse_dirpath(c.filename) = f.folder
        WHERE {' AND '.join(where)}
        ORDER BY f.position, c.topology, c.concurrency, c.run
    """
    try:
        with duckdb.connect() as connection:
            connection.register("facts", facts)
            history = connection.execute(sql, [files, *params]).df()
        return fill_load_keys(history) if not history.empty else history
    except duckdb.Error as exc:
        raise ResultsError(f"cannot query the history under {entries[0].path.parent}: {exc}") from exc


def summarize_history(history: pd.DataFrame, metric: MetricSpec) -> pd.DataFrame:
    """Per (sweep, topology, concurrency): mean and population std of the metric, runs, failed requests."""
    import duckdb

    if history.empty:
        return pd.DataFrame(columns=["sweep", "topology", "concurrency", "mean", "std", "runs", "failed"])
    sql = f"""
        SELECT sweep, topology, concurrency, avg("{metric.key}") AS mean, stddev_pop("{metric.key}") AS std,
               count(*) AS runs, coalesce(sum(failed), 0) AS failed, min(position) AS position
        FROM (SELECT *, dense_rank() OVER (ORDER BY started NULLS LAST, sweep) AS position FROM history)
        GROUP BY sweep, topology, concurrency
        ORDER BY position, topology, concurrency
    """
    with duckdb.connect() as connection:
        connection.register("history", history)
        return connection.execute(sql).df().drop(columns="position")


def same_kind(entries: Sequence[SweepEntry], like: SweepEntry) -> list[SweepEntry]:
    """The folders a trend of `like` can include: same kind, model, pp and tg (a different load is not a trend)."""
    return [e for e in entries if e.kind == like.kind and e.model == like.model and e.pp == like.pp
            and e.tg == like.tg]


def history_for_gate(root: Path, current: Path, limit: int) -> pd.DataFrame | None:
    """The cells of up to `limit` sweeps under `root` before `current`, of the same kind, model, load and
    cluster: the run-to-run spread the gate judges `current`'s cells by (None when there are none)."""
    if limit < 1:
        return None
    like = read_entry(current)
    earlier = [e for e in same_kind(list_sweeps(root), like)
               if e.cluster == like.cluster and e.path.resolve() != current.resolve()
               and (like.started is None or e.started is None or e.started < like.started)]
    return query_history(earlier[-limit:]) if earlier else None


@dataclass
class NightlyPaths:
    """Where a nightly run writes: the sweep folder and the gate's files (CI uploads them)."""

    directory: Path
    junit: Path
    markdown: Path

    @classmethod
    def for_sweep(cls, directory: Path, junit: Path | None = None, markdown: Path | None = None) -> NightlyPaths:
        return cls(directory, junit or directory / "regress.junit.xml", markdown or directory / "regress.md")


# ---- the nightly run -------------------------------------------------------------------------------------


def known_tags(root: Path) -> str:
    tags = sorted(read_tags(root))
    return f"tags set: {', '.join(tags)}" if tags else "no tags set"


@dataclass(frozen=True)
class NightlyPlan:
    """A nightly computed before anything runs: the sweep planned, the baseline found and checked."""

    sweep: SweepPlan
    root: Path
    baseline: str  # the tag or folder as given
    baseline_dir: Path | None  # None: the tag is not set yet (a first night)
    policy: RegressionPolicy
    paths: NightlyPaths
    history_sweeps: int  # how many sweeps (this one included) the report's trends cover
    gate_history: int = 20  # how many earlier sweeps' spread the gate judges a cell by (0: intervals only)

    @property
    def directory(self) -> Path:
        return self.paths.directory


def plan_nightly(spec: SweepSpec, root: Path, baseline: str, policy: RegressionPolicy, *, out: Path | None = None,
                 junit: Path | None = None, markdown: Path | None = None, history_sweeps: int = 30,
                 require_baseline: bool = False, gate_history: int = 20) -> NightlyPlan:
    """Everything that can be refused is refused here, before an hour of sweeping: an unknown baseline
    folder, a baseline of another model or load, a missing tag when one is required, a bad topology."""
    baseline_dir = find_baseline(baseline, root)
    if baseline_dir is not None:
        check_comparable(ResultsFolder(baseline_dir).meta_or_none(), FolderMeta(kind="sweep", spec=spec.to_json()))
    elif require_baseline:
        raise RegressionInputError(f"--baseline {baseline}: no such tag in {root / BASELINES_FILE} "
                                   f"({known_tags(root)}) and --require-baseline is set")
    sweep = plan_sweep(spec)
    paths = NightlyPaths.for_sweep(out or default_out_dir(spec, root), junit, markdown)
    return NightlyPlan(sweep, root, baseline, baseline_dir, policy, paths, history_sweeps, gate_history)


@dataclass
class NightlyOutcome:
    """What a night did: its sweep, the gate's verdict (None without a baseline), the report, the exit code."""

    sweep: SweepOutcome
    regression: RegressionResult | None
    exit_code: int
    report_paths: tuple[Path, Path]
    trend_sweeps: int  # sweeps the report's trends cover, this one included


async def run_nightly(plan: NightlyPlan, progress: SweepProgress, *, command_line: Sequence[str] = ()) -> NightlyOutcome:
    """Sweep into a new folder, gate it against the baseline, write the report with trends, decide the exit.

    Exit code: 1 on a regression (or a missing/failed cell), 0 when clean; with no baseline yet, 0 (or 3 when
    a topology failed). Raises ResultsError when nothing was measured and RegressionInputError (exit 2)
    when the two sweeps cannot be compared, the latter after the night's report is written."""
    directory = plan.directory
    swept = await run_sweep(plan.sweep, directory, progress, command_line=command_line)
    folder = ResultsFolder(directory)
    if not swept.measured_runs:
        raise ResultsError(f"the nightly sweep measured nothing ({'; '.join(swept.errors.values()) or 'no cell'});"
                           f" details in {folder.meta_path}")
    regression, unusable = None, None
    if plan.baseline_dir is not None:
        try:
            regression = compare_result_dirs(plan.baseline_dir, directory, plan.policy, current_label=directory.name,
                                             baseline_label=sweep_label(plan.baseline, plan.baseline_dir),
                                             history=history_for_gate(plan.root, directory, plan.gate_history))
        except RegressionInputError as exc:
            unusable = exc  # the night's report is still written before exit 2
    current = read_entry(directory)
    trend_of = [e for e in same_kind(list_sweeps(plan.root), current) if e.path.resolve() != directory.resolve()]
    trend_of = [*trend_of[-(plan.history_sweeps - 1):], current] if plan.history_sweeps > 1 else [current]
    report = folder_report(folder, history=query_history(trend_of), regression=regression)
    report_paths = write_report(folder, report)
    if unusable is not None:
        raise unusable

    meta = folder.read_meta()
    meta.nightly = NightlyFacts(baseline=plan.baseline,
                                baseline_folder=str(plan.baseline_dir) if plan.baseline_dir else None)
    if regression is None:
        code = EXIT_FAILURES if swept.errors or swept.short_cells else NO_BASELINE_EXIT
    else:
        code = write_gate_outputs(regression, junit=plan.paths.junit, markdown=plan.paths.markdown)
        meta.nightly.summary = regression.summary()
    meta.nightly.exit_code = code
    folder.write_meta(meta)
    return NightlyOutcome(swept, regression, code, report_paths, len(trend_of))
