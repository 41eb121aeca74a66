"""Exit codes of topo, and SIGTERM/SIGHUP handled like Ctrl-C.

    0    everything asked for was measured
    1    a regression (`topo nightly`, `topo regress` only)
    2    usage, configuration or disk error: nothing (more) could be measured
    3    some requests, runs or cells failed; what was measured is written
    130  interrupted by Ctrl-C (SIGINT); 143 by SIGTERM, 129 by SIGHUP (128 + the signal's number)

A polite kill (`timeout`, `kill`, `docker stop`, a CI cancellation, a closed terminal) must tear down what
topo started exactly as Ctrl-C does. So SIGTERM and SIGHUP are turned into a SIGINT for this process: inside
`asyncio.run` that cancels the main task (every `finally`, every teardown runs), outside it raises
KeyboardInterrupt. The signal that arrived is remembered for the exit code.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_FAILURES = 3

EXIT_CODES_HELP = (
    "Exit codes: 0 all measured; 3 some requests, runs or cells failed (what was measured is written); "
    "2 usage, configuration or disk error; 1 a regression (nightly only); 130 interrupted by Ctrl-C, "
    "143 by SIGTERM, 129 by SIGHUP (the teardown runs in each case)."
)

POLITE_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []


def _as_ctrl_c(signum: int, frame: object) -> None:
    _received.append(signum)
    # Whatever handles Ctrl-C right now: asyncio.run's (cancels the main task) or Python's (raises
    # KeyboardInterrupt). Called directly, not through raise(SIGINT), which a disposition could swallow.
    ctrl_c = signal.getsignal(signal.SIGINT)
    if callable(ctrl_c):
        ctrl_c(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def treat_polite_signals_as_ctrl_c() -> None:
    """Install once, in the main thread, before any command runs. A shell starts a background job with
    SIGINT ignored, and then asyncio.run installs no Ctrl-C handling at all: put Python's back first."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in POLITE_SIGNALS:
        signal.signal(signum, _as_ctrl_c)


def interrupted_exit_code() -> int:
    """128 + the signal that interrupted this process (SIGINT unless SIGTERM/SIGHUP came first)."""
    return 128 + (_received[0] if _received else signal.SIGINT)
