"""The fault matrix: each fault injected into a real `topo` process, each asserting what applies of
- finished runs are kept, failed runs are recorded and measured again by `--resume`,
- no process of the run is left, and the exit code is the documented one (topo/exits.py).

Server faults run `topo bench` against the hostile fake server (tests/bench/fake_server.py); cluster,
signal and disk faults run `topo sweep` on a local two-node twin cluster (`fast` hardware, tiny loads).
A test that needs a second sweep (the resume) is marked slow: each `topo` process costs a bring-up and
the imports (15-35 s on a busy 2-core machine). A headless rank killed mid-sweep is
tests/topo/test_sweep.py::test_a_node_lost_mid_sweep_costs_only_that_topology (slow); on real nodes (a
headless rank killed, SSH connections dropped, a node unreachable) test_fault_matrix_testbed.py (testbed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.results_folder import ResultsFolder, cell_progress
from tests.bench.fake_server import Behaviour, FakeServer
from tests.support.local_cluster import write_local_cluster
from tests.support.sweep_process import assert_nothing_left, interrupt_sweep, topo
from topo.cli import app

EXIT_OK, EXIT_USAGE, EXIT_FAILURES = 0, 2, 3
SOLO_CELLS = [("solo", "default", f"c{c}") for c in (1, 2)]


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    return write_local_cluster(tmp_path / "cluster")


def sweep_args(cluster: Path, out: Path, *, runs: int = 3, tg: int = 32, hardware: str = "fast") -> list[str]:
    return ["sweep", "--cluster", str(cluster), "-m", "tiny", "-t", "solo", "-c", "1,2", "--runs", str(runs),
            "--pp", "64", "--tg", str(tg), "--twin-hardware", hardware, "--out", str(out)]


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def pid_of(pidfile: Path) -> int:
    return int(pidfile.read_text().splitlines()[0])


def stray_temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def assert_resume_completes(out: Path, cluster: Path, before: pd.DataFrame) -> pd.DataFrame:
    """`--resume` measures exactly what is missing or failed; what was measured stays as it was."""
    done = topo("sweep", "--resume", str(out))
    assert done.returncode == EXIT_OK, done.stdout[-3000:] + done.stderr[-3000:]
    after = ResultsFolder(out).read_cells()
    progress = cell_progress(after)
    assert all(progress[key].measured == 3 for key in SOLO_CELLS), progress
    kept = before.merge(after, on=["topology", "load", "run"], suffixes=("_before", "_after"))
    assert len(kept) == len(before)  # nothing stored before was lost or overwritten
    assert (kept.failed_before == kept.failed_after).all()
    assert meta(out)["status"] == "complete"
    assert_nothing_left(cluster)
    return after


# --- faults of the server: one `topo bench` each ----------------------------------------------------------

SERVER_FAULTS = {
    # mode of the fake server: what the stored error of each request must say
    "http500": "HTTP 500 from POST",  # a 5xx storm: every request answered 500
    "choices_int": "`choices` is not a list of objects",  # mistyped SSE
    "usage_str": "`usage.prompt_tokens` is \"abc\", not a token count",  # mistyped SSE
    "endless_line": "is longer than 1048576 bytes",  # oversized SSE
    "huge_usage": "claims 5000000 tokens, more than the requested max_tokens=8",  # oversized claim
    "hang": "no generated token for 1 s (progress deadline) before the response headers",  # stalled stream
    "keepalive_only": "no generated token for 1 s (progress deadline) after 1 events",  # alive, no tokens
}


@pytest.mark.parametrize("mode", sorted(SERVER_FAULTS))
def test_a_hostile_server_costs_requests_not_the_benchmark(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "bench"
    with FakeServer(Behaviour(mode=mode)) as server:  # in-process: a `topo` process each costs ~7 s of imports
        done = CliRunner().invoke(app, ["bench", "--url", server.url, "-c", "2", "--runs", "1", "--pp", "64",
                                        "--tg", "8", "--latency-mode", "none", "--timeout", "1", "--out", str(out)])
    assert done.exit_code == EXIT_FAILURES, done.output[-3000:]
    assert done.exception is None or isinstance(done.exception, SystemExit), repr(done.exception)
    requests = ResultsFolder(out).read_requests()
    measured = requests[requests.run >= 0]
    assert len(measured) == 2 and measured.error.notna().all()
    assert all(SERVER_FAULTS[mode] in error for error in measured.error), measured.error.tolist()
    cells = ResultsFolder(out).read_cells()
    assert cells.failed.tolist() == [2]
    assert meta(out)["status"] == "complete"  # the benchmark itself finished; its requests failed


# --- faults of the cluster --------------------------------------------------------------------------------


@pytest.mark.slow  # ~25 s idle, ~70 s at load 11
def test_engine_killed_mid_cell_records_failed_runs_and_resume_measures_them(cluster: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    engine_pidfile = cluster.parent / "node1" / "run" / "engine.pid"
    # gb10 speed: a run of tg 48 takes about a second, so the kill lands inside the cell
    returncode, output = interrupt_sweep(
        sweep_args(cluster, out, tg=48, hardware="gb10"), out, lambda cells: len(cells) >= 1,  # c1 run 0 stored
        lambda _: os.killpg(pid_of(engine_pidfile), signal.SIGKILL))
    assert returncode == EXIT_FAILURES, output[-3000:]
    recorded = meta(out)
    assert recorded["status"] == "incomplete"
    assert "engine" in recorded["errors"]["solo"]  # the error names what died
    before = ResultsFolder(out).read_cells()
    assert (before[before.run == 0].failed == 0).any()  # the run finished before the kill is kept
    c1 = cell_progress(before)[("solo", "default", "c1")]
    assert c1.failed >= 1 and c1.measured < 3  # runs against the dead engine are stored, as failed
    assert f"solo c1: {c1.measured} of 3 runs measured, {c1.failed} failed" in output
    assert_nothing_left(cluster)
    after = assert_resume_completes(out, cluster, before)
    failed_runs = set(before[before.failed > 0].run)
    remeasured = after[(after.load == "c1") & ~after.run.isin(before.run)]
    assert len(remeasured) == 3 - c1.measured and not set(remeasured.run) & failed_runs  # none overwritten


@pytest.mark.slow  # ~55 s at load 11: LiteLLM is slow to start
def test_proxy_killed_mid_sweep_ends_the_topology(cluster: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = sweep_args(cluster, out)
    args[args.index("solo")] = "2x-solo-shuffle"

    def kill_the_proxy(_: subprocess.Popen[str]) -> None:
        (proxy_pidfile,) = cluster.parent.rglob("run/proxy.pid")
        os.killpg(pid_of(proxy_pidfile), signal.SIGKILL)

    returncode, output = interrupt_sweep(args, out, lambda cells: len(cells) >= 1, kill_the_proxy)
    assert returncode == EXIT_FAILURES, output[-3000:]
    recorded = meta(out)
    assert recorded["status"] == "incomplete" and "proxy" in recorded["errors"]["2x-solo-shuffle"]
    before = ResultsFolder(out).read_cells()
    assert len(before) >= 1
    assert_nothing_left(cluster)


# --- signals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),  # with the resume: ~20 s idle, ~55 s at load 11
    (signal.SIGTERM, 143),
])
def test_a_signal_tears_down_keeps_the_runs_and_resume_completes(cluster: Path, tmp_path: Path, signum: int,
                                                                 code: int) -> None:
    out = tmp_path / "results"
    returncode, output = interrupt_sweep(sweep_args(cluster, out), out, lambda cells: len(cells) >= 1,
                                         lambda process: os.killpg(process.pid, signum))
    assert returncode == code, output[-3000:]
    assert f"topo sweep --resume {out}" in output
    assert meta(out)["status"] == "interrupted"
    assert_nothing_left(cluster)
    before = ResultsFolder(out).read_cells()
    assert 1 <= len(before) < 6
    if signum == signal.SIGINT:  # slow: a second sweep
        assert_resume_completes(out, cluster, before)


# --- the disk -------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~20 s idle, ~60 s at load 11
def test_a_disk_that_fills_mid_sweep_stops_it_with_exit_2_and_a_true_status(cluster: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "results"
        filler = disk / "filler"

        def fill_the_disk(_: subprocess.Popen[str]) -> None:
            with open(filler, "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
                except OSError:
                    pass

        returncode, output = interrupt_sweep(sweep_args(cluster, out), out, lambda cells: len(cells) >= 1,
                                             fill_the_disk)
        assert returncode == EXIT_USAGE, output[-3000:]
        assert "No space left" in output and "Traceback" not in output
        recorded = meta(out)
        assert recorded["status"] == "failed", json.dumps(recorded)[-1500:] + output[-3000:]
        assert "No space left" in recorded["errors"]["results folder"]
        assert stray_temp_files(out) == []
        assert_nothing_left(cluster)
        before = ResultsFolder(out).read_cells()
        assert len(before) >= 1  # what was stored before the disk filled is kept
        filler.unlink()
        assert_resume_completes(out, cluster, before)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_error_at_sweep_start_is_exit_2_without_a_temp_file(cluster: Path, tmp_path: Path) -> None:
    import resource

    out = tmp_path / "results"

    def small_files() -> None:  # any file above 1 KiB fails to grow (EFBIG): meta.json is larger
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    done = subprocess.run([sys.executable, "-m", "topo", *sweep_args(cluster, out)], capture_output=True,
                          text=True, timeout=120, preexec_fn=small_files)
    assert done.returncode == EXIT_USAGE, done.stdout[-2000:] + done.stderr[-2000:]
    assert "cannot write" in done.stderr and "meta.json" in done.stderr and "Traceback" not in done.stderr
    assert stray_temp_files(out) == []
    assert_nothing_left(cluster)


@pytest.mark.slow  # ~25 s idle, ~70 s at load 11
def test_a_damaged_part_file_is_set_aside_and_resume_measures_its_run_again(cluster: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = topo(*sweep_args(cluster, out))
    assert done.returncode == EXIT_OK, done.stdout[-3000:] + done.stderr[-3000:]
    folder = ResultsFolder(out)
    # What a crash while writing the last run leaves: that run is not in the main file, and its part file
    # was cut to nothing (its requests part is whole).
    cells = folder.read_cells()
    last = (cells.load == "c2") & (cells.run == 2)
    folder.write_cells(cells[~last])
    (out / "parts").mkdir()
    stamp = "09999999999999999999-1-000000"
    (out / "parts" / f"cells-{stamp}.parquet").write_bytes(b"")
    (out / "parts" / f"requests-{stamp}.parquet").write_bytes(b"PAR1")
    before = folder.read_cells()  # reading sets the damaged part (and its run's other half) aside
    assert folder.notes and "measures it again" in folder.notes[0]
    assert sorted(p.name for p in (out / "parts" / "damaged").iterdir()) == \
        [f"cells-{stamp}.parquet", f"requests-{stamp}.parquet"]
    assert_resume_completes(out, cluster, before)
