"""Helpers of the test-bed tests (imported by conftest.py and the test modules of this folder)."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.testbed import Testbed, TestbedNode, TestbedSpec, down, up

LOCK = Path("/tmp/topo-testbed-tests.lock")


def claim_free_bed_slot() -> tuple[str, str]:
    """A prefix and subnet no other bed on this machine uses (several test sessions may run at once);
    call with LOCK held, and build the bed before releasing it."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout
    for slot in range(1, 250):
        prefix, subnet = f"tc{slot}", f"10.89.{slot}"
        if f" {prefix}-br0" not in links and f"{subnet}.0/24" not in routes:
            return prefix, subnet
    raise RuntimeError("no free test bed slot")


def node_processes(node: TestbedNode) -> list[tuple[int, int, str]]:
    """(pid here, pid in the node's own PID namespace, command line) of each live process of the node."""
    found = []
    pids = subprocess.run(["ip", "netns", "pids", node.namespace], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except FileNotFoundError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["State"].split()[0] != "Z":
            found.append((int(pid), int(fields["NSpid"].split()[-1]), args))
    return found


def foreign_processes(bed: Testbed, exit_grace_s: float = 10.0) -> dict[str, list[str]]:
    """Every live process inside each node's namespaces except its sshd: what a teardown must not leave.

    A process already inside exit() has released its memory, so its command line reads empty while the
    kernel finishes it; it is waited for (up to `exit_grace_s`) rather than reported, and named by pid
    if it is still there after that.
    """
    deadline = time.monotonic() + exit_grace_s
    while True:
        found: dict[str, list[str]] = {}
        exiting = False
        for node in bed.nodes:
            for pid, _, args in node_processes(node):
                if args.startswith(("sshd", "unshare", "/usr/sbin/sshd")):
                    continue
                exiting = exiting or not args
                found.setdefault(node.name, []).append(args or f"<pid {pid} exiting, no command line>")
        if not exiting or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


@contextmanager
def bed_on_a_free_slot() -> Iterator[Testbed]:
    """A two-node bed for one test module, on a slot no other bed uses; removed (and proven gone) after."""
    # short: Ray's unix socket paths under a node's workdir must stay below 107 bytes
    directory = Path(tempfile.mkdtemp(prefix="tct-", dir="/tmp")) / "bed"
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prefix, subnet = claim_free_bed_slot()
        spec = TestbedSpec(nodes=2, directory=directory, prefix=prefix, subnet=subnet, python=sys.executable, stop_grace_s=10)
        built = up(spec)
    yield built
    down(directory)
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{prefix}-n" not in leftover and not directory.exists()
    shutil.rmtree(directory.parent, ignore_errors=True)
