"""Helpers of the nightly tests: the CLI in this process, twin profiles made slower in decode."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.config import CONFIGS_DIR


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_topo(*args: str | Path) -> CliResult:
    """`topo ARGS` in this process through topo.cli.main (TopoError -> exit 2, as for a user)."""
    from topo.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_columns = sys.argv, os.environ.get("COLUMNS")
    sys.argv = ["topo", *map(str, args)]
    os.environ["COLUMNS"] = "200"  # rich would wrap the tables at 80 columns and split the words we look for
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        sys.argv = saved_argv
        if saved_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved_columns
    return CliResult(code, out.getvalue(), err.getvalue())


def slower_decode_profile(directory: Path, base: str = "fast", slowdown: float = 1.1) -> Path:
    """A copy of configs/hardware/BASE.yaml whose pure decode steps take `slowdown` x as long."""
    data = yaml.safe_load((CONFIGS_DIR / "hardware" / f"{base}.yaml").read_text())
    data["name"] = f"{base}-decode-x{slowdown:g}"
    data["decode_slowdown"] = slowdown
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
