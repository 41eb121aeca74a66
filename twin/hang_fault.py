"""A fault knob: the twin's engine stops stepping N seconds into serving, like a TP engine whose NCCL
all-reduce never returns (vLLM issue 41725). Tokens stop, metrics freeze, the HTTP server and /health stay
up; only a watchdog notices. Set on the engine process (a node's `env` reaches it):

    TWIN_FAULT_HANG_AFTER_S=N     hang N seconds after the engine's first step
    TWIN_FAULT_HANG_ONCE=PATH     ...unless PATH exists; the hang creates it, so a restarted twin serves
                                  normally (a test sees one hang, then the recovery)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from common.errors import ConfigError
from twin.engine import StepDescription, StepHook

HANG_AFTER_ENV = "TWIN_FAULT_HANG_AFTER_S"
HANG_ONCE_ENV = "TWIN_FAULT_HANG_ONCE"


class HangFault:
    """A step hook that passes steps on to `inner` until the hang is due, then blocks forever."""

    def __init__(self, after_s: float, inner: StepHook | None = None, once_file: Path | None = None,
                 clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.after_s = after_s
        self.inner = inner
        self.once_file = once_file
        self.clock = clock
        self.first_step: float | None = None
        self.armed = once_file is None or not once_file.exists()
        self.hung = False

    async def __call__(self, step: StepDescription) -> None:
        now = self.clock()
        if self.first_step is None:
            self.first_step = now
        if self.armed and now - self.first_step >= self.after_s:
            self.hung = True
            if self.once_file is not None:
                self.once_file.parent.mkdir(parents=True, exist_ok=True)
                self.once_file.write_text(f"hung after {now - self.first_step:.1f} s\n")
            print(f"twin: fault: the engine hangs now ({HANG_AFTER_ENV}={self.after_s:g})", file=sys.stderr, flush=True)
            await asyncio.Event().wait()  # never set: only cancellation (shutdown) ends it
        if self.inner is not None:
            await self.inner(step)


def hang_fault_from_env(inner: StepHook | None, environ: dict[str, str] | None = None) -> StepHook | None:
    """`inner` wrapped in a HangFault when TWIN_FAULT_HANG_AFTER_S is set, else `inner` unchanged."""
    env = os.environ if environ is None else environ
    raw = env.get(HANG_AFTER_ENV, "").strip()
    if not raw:
        return inner
    try:
        after_s = float(raw)
    except ValueError:
        after_s = -1.0
    if after_s < 0:
        raise ConfigError(f"{HANG_AFTER_ENV}={raw!r}: expected seconds (a number >= 0)")
    once = env.get(HANG_ONCE_ENV, "").strip()
    return HangFault(after_s, inner, Path(once) if once else None)
