"""The twin's GPU telemetry: modeled power, clock, temperature and utilization, read through `nvidia-smi`.

A real node is sampled with `nvidia-smi --query-gpu=power.draw,temperature.gpu,clocks.sm,utilization.gpu
--format=csv,noheader,nounits` (telemetry/node.py). On a twin node the same command is answered by a small
shell script the twin installs as `<node workdir>/twin-gpu/bin/nvidia-smi` (the directory comes from the
plan's TOPO_TWIN_GPU_DIR, telemetry puts its bin/ first on PATH). Every rank process of a twin on that
node (the server, a headless mp rank, a Ray actor) feeds the steps it takes part in to a PowerMeter and
writes the node's current figures to `state.csv`; the script prints them, or the idle figures when no
rank wrote for STALE_AFTER_S (nothing runs there, or it stopped).

The model (HardwareProfile.power, every constant sourced in the profile YAML): over the last WINDOW_S,

    power = idle_w + memory_w x (share of time the memory streams at its effective rate)
                   + compute_w x (share of time the matrix units run at their effective rate)

from each step's modeled memory_seconds and compute_seconds (twin/costmodel.py, per rank: every rank of a
TP engine does the same work). utilization.gpu is the share of the window inside steps; clocks.sm moves
from idle to busy clock with it; temperature is ambient plus heating per watt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twin.profiles import PowerProfile

WINDOW_S = 1.0  # the sampler's default interval: one reading describes the last second
STALE_AFTER_S = 2  # whole seconds (the shim compares `date +%s`); older state means "idle"
WRITE_EVERY_S = 0.25
GPU_FIELDS = ("power.draw", "temperature.gpu", "clocks.sm", "utilization.gpu")
STATE_FILE = "state.csv"


@dataclass(frozen=True)
class GpuReading:
    power_w: float
    temperature_c: float
    sm_clock_mhz: float
    utilization_pct: float

    def csv(self) -> str:
        """nvidia-smi's noheader/nounits form, fields in GPU_FIELDS order."""
        return (f"{self.power_w:.2f}, {self.temperature_c:.0f}, {self.sm_clock_mhz:.0f}, "
                f"{self.utilization_pct:.0f}")


@dataclass(frozen=True)
class _Step:
    end: float
    seconds: float
    memory_seconds: float
    compute_seconds: float


class PowerMeter:
    """Modeled GPU figures of one node from the steps its rank took part in (times on one monotonic clock)."""

    def __init__(self, profile: PowerProfile, window_s: float = WINDOW_S) -> None:
        self.profile = profile
        self.window_s = window_s
        self._steps: deque[_Step] = deque()

    def record(self, end: float, seconds: float, memory_seconds: float, compute_seconds: float) -> None:
        """A step that ended at `end` after `seconds` (its modeled memory and compute time inside it)."""
        self._steps.append(_Step(end, max(seconds, 0.0), max(memory_seconds, 0.0), max(compute_seconds, 0.0)))
        self._forget(end)

    def _forget(self, now: float) -> None:
        while self._steps and self._steps[0].end < now - self.window_s:
            self._steps.popleft()

    def shares(self, now: float) -> tuple[float, float, float]:
        """(busy, memory, compute) shares of the last window, each within 0..1."""
        self._forget(now)
        start = now - self.window_s
        busy = memory = compute = 0.0
        for step in self._steps:
            if step.seconds <= 0:
                continue
            inside = max(0.0, min(step.end, now) - max(step.end - step.seconds, start)) / step.seconds
            busy += inside * step.seconds
            # a step's memory and compute time can exceed its length only through the cost model's overlap
            memory += inside * min(step.memory_seconds, step.seconds)
            compute += inside * min(step.compute_seconds, step.seconds)
        return tuple(min(1.0, value / self.window_s) for value in (busy, memory, compute))  # type: ignore[return-value]

    def reading(self, now: float) -> GpuReading:
        busy, memory, compute = self.shares(now)
        return reading_for(self.profile, busy, memory, compute)


def reading_for(profile: PowerProfile, busy: float, memory: float, compute: float) -> GpuReading:
    power = profile.idle_w + profile.memory_w * memory + profile.compute_w * compute
    clock = profile.idle_sm_clock_mhz + (profile.busy_sm_clock_mhz - profile.idle_sm_clock_mhz) * busy
    return GpuReading(power, profile.ambient_c + profile.heating_c_per_w * power, clock, 100.0 * busy)


# ------------------------------------------------------------------------------------- nvidia-smi shim

_SHIM = """#!/bin/sh
# nvidia-smi stand-in of a twin node, installed by the twin (twin/power.py). It answers only what topo
# asks: --query-gpu=<fields of {fields}> --format=csv,noheader,nounits, from the modeled figures a twin rank
# on this node wrote to {state}; the idle figures when none was written in the last {stale} s.
query=""
for arg in "$@"; do
  case "$arg" in --query-gpu=*) query="${{arg#--query-gpu=}}" ;; esac
done
if [ -z "$query" ]; then
  echo "twin nvidia-smi: only --query-gpu=... --format=csv,noheader,nounits is emulated" >&2
  exit 2
fi
line="{idle}"
if [ -r "{state}" ]; then
  IFS=' ' read -r stamp values <"{state}"
  now=$(date +%s)
  if [ -n "$stamp" ] && [ $((now - stamp)) -le {stale} ]; then line="$values"; fi
fi
echo "$line" | awk -F', ' -v query="$query" 'BEGIN {{ n = split("{fields}", names, ","); for (i = 1; i <= n; i++) column[names[i]] = i }}
  {{ m = split(query, wanted, ","); out = ""; for (i = 1; i <= m; i++) {{ value = (wanted[i] in column) ? $column[wanted[i]] : "[N/A]"; out = out (i > 1 ? ", " : "") value }}; print out }}'
"""


class GpuStateFile:
    """`<dir>/bin/nvidia-smi` and `<dir>/state.csv` of one node (`<unix seconds> <csv line>`)."""

    def __init__(self, directory: str | Path, profile: PowerProfile) -> None:
        self.directory = Path(directory)
        self.profile = profile
        self.state = self.directory / STATE_FILE

    @property
    def shim(self) -> Path:
        return self.directory / "bin" / "nvidia-smi"

    def install(self) -> None:
        idle = reading_for(self.profile, 0.0, 0.0, 0.0)
        text = _SHIM.format(fields=",".join(GPU_FIELDS), state=self.state, stale=STALE_AFTER_S, idle=idle.csv())
        self.shim.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.shim.with_name(f".nvidia-smi.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(self.shim)  # atomic: two ranks on one node may install at once

    def write(self, reading: GpuReading, unix_now: float) -> None:
        tmp = self.state.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(f"{int(unix_now)} {reading.csv()}\n")
        tmp.replace(self.state)

    def clear(self) -> None:
        self.state.unlink(missing_ok=True)


class NodeGpuTelemetry:
    """What a twin rank process runs: a meter fed by its steps, the state file written as they happen."""

    def __init__(self, directory: str | Path, profile: PowerProfile, *,
                 clock: Callable[[], float] = time.monotonic, unix: Callable[[], float] = time.time) -> None:
        self.meter = PowerMeter(profile)
        self.file = GpuStateFile(directory, profile)
        self.clock = clock
        self.unix = unix
        self._written = float("-inf")
        self.failure: str | None = None  # telemetry must never stop the engine: the first error is kept

    @classmethod
    def from_env(cls, profile: PowerProfile | None, env: dict[str, str] | None = None) -> NodeGpuTelemetry | None:
        """The node's telemetry when the plan named a directory (TOPO_TWIN_GPU_DIR) and the profile models
        power; None otherwise (a twin started by hand, a profile without `power:`)."""
        from topology.inventory import TWIN_GPU_DIR_ENV

        directory = (env if env is not None else os.environ).get(TWIN_GPU_DIR_ENV)
        if not directory or profile is None:
            return None
        telemetry = cls(directory, profile)
        telemetry._guard(telemetry.file.install)
        return telemetry

    def _guard(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except OSError as exc:
            if self.failure is None:
                self.failure = f"twin GPU telemetry in {self.file.directory}: {exc.strerror or exc}"

    def on_step(self, desc: Any) -> None:
        """A step this rank takes part in (a StepDescription or its wire dict), starting now."""
        get = desc.get if isinstance(desc, dict) else (lambda key, default=0.0: getattr(desc, key, default))
        seconds = float(get("modeled_seconds", 0.0))
        self.meter.record(self.clock() + seconds, seconds, float(get("memory_seconds", 0.0)),
                          float(get("compute_seconds", 0.0)))
        if self.clock() - self._written >= WRITE_EVERY_S:
            self.write_now()

    def write_now(self) -> None:
        self._written = self.clock()
        self._guard(lambda: self.file.write(self.meter.reading(self._written), self.unix()))

    async def keep_writing(self, every_s: float = WRITE_EVERY_S) -> None:
        """Rewrite the state while the process lives, so the figures fall back to idle within a window."""
        while True:
            await asyncio.sleep(every_s)
            self.write_now()

    def close(self) -> None:
        self._guard(self.file.clear)


@contextlib.asynccontextmanager
async def gpu_telemetry_running(profile: PowerProfile | None):  # type: ignore[no-untyped-def]
    """For the async rank processes: the node's telemetry (or None) with its writer task while inside."""
    telemetry = NodeGpuTelemetry.from_env(profile)
    task = asyncio.create_task(telemetry.keep_writing()) if telemetry is not None else None
    try:
        yield telemetry
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if telemetry is not None:
            telemetry.close()
