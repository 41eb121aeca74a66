"""The namespace test bed for the test-bed tests of this folder (one bed per module, on a free slot)."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bed_support import LOCK, claim_free_bed_slot
from cluster.testbed import TestbedSpec, down, up


@pytest.fixture(scope="module")
def bed():  # type: ignore[no-untyped-def]
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
