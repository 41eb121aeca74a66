"""Running `topo` as a real process in tests: to interrupt it, kill parts of its cluster, and prove that
nothing it started is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bench.results_folder import ResultsFolder

TOPO = [sys.executable, "-m", "topo"]


def topo(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOPO, *args], capture_output=True, text=True, timeout=timeout, check=False)


def assert_nothing_left(cluster_yaml: Path) -> None:
    """Every supervised process removes its pidfile only after its group was proven gone; and no live
    process still names the cluster's folder (workdirs, logs, configs) on its command line."""
    pidfiles = sorted(str(p) for p in cluster_yaml.parent.rglob("run/*.pid"))
    assert pidfiles == [], f"processes left behind: {pidfiles}"
    folder = str(cluster_yaml.parent.resolve())
    assert processes_mentioning(folder) == [], f"processes still running from {folder}"


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in argv and state != "Z":
            found.append(f"{entry.name}: {argv[:200]}")
    return found


def interrupt_sweep(args: list[str], out: Path, when: Callable[[pd.DataFrame], bool],
                    act: Callable[[subprocess.Popen[str]], None], *, timeout: float = 240,
                    preexec: Callable[[], None] | None = None) -> tuple[int, str]:
    """Start `topo ARGS` in its own session; once `when(stored cells)` holds, `act` on it (a signal, a kill
    of one of its nodes); return its exit code and output. The sweep must still be running by then."""
    process = subprocess.Popen([*TOPO, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, preexec_fn=preexec)
    store = ResultsFolder(out)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "meta.json").exists() and when(store.read_cells()):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the sweep ended before the test could act on it: " + \
            (process.stdout.read()[-3000:] if process.stdout else "")
        act(process)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, output
