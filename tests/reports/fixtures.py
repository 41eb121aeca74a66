"""Hand-written cells with numbers whose means, stds and margins are checked by hand in the tests."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bench.records import CELL_COLUMNS


def cell_rows(topology: str, concurrency: int, decode: Sequence[float], prefill: Sequence[float] | None = None,
              ttft: Sequence[float] | None = None, failed: Sequence[int] | None = None,
              send_lag: Sequence[float] | None = None) -> list[dict]:
    """One row per run; unspecified metrics default to a constant so they do not interfere."""
    runs = len(decode)
    prefill = prefill or [1000.0] * runs
    ttft = ttft or [100.0] * runs
    failed = failed or [0] * runs
    send_lag = send_lag or [0.5] * runs
    return [
        {
            "topology": topology, "concurrency": concurrency, "run": run,
            "decode_tps": float(decode[run]), "prefill_tps": float(prefill[run]), "ttft_ms": float(ttft[run]),
            "peak_tps": float(decode[run]), "decode_tps_req": float(decode[run]) / concurrency,
            "prefill_tps_req": float(prefill[run]), "requests": concurrency, "failed": failed[run],
            "max_send_lag_ms": float(send_lag[run]),
        }
        for run in range(runs)
    ]


def frame(*groups: list[dict]) -> pd.DataFrame:
    rows = [row for group in groups for row in group]
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))


def study_cells() -> pd.DataFrame:
    """Four topologies, c1..c64, 3 runs: TP=2 wins low c, Shuffle wins high c, Ray trails no-Ray by 10%.

    decode at level c is base * c with runs base*c*(0.99, 1, 1.01), so mean = base*c, population std =
    0.816% of it, and the 95% interval over the 3 runs is ± t(2) * s / sqrt(3) = 4.303 * 1% / 1.732 = ±2.48%.
    """
    levels = [1, 2, 4, 8, 16, 32, 64]
    decode_base = {"solo": 40.0, "tp2-mp": 60.0, "tp2-ray": 54.0, "2x-solo-shuffle": 40.0}
    groups = []
    for topology, base in decode_base.items():
        for c in levels:
            value = base * c
            if topology == "2x-solo-shuffle" and c >= 8:
                value = 80.0 * c  # two engines: twice solo once the batch is big enough to split
            ttft = {"solo": 200.0, "tp2-mp": 150.0, "tp2-ray": 165.0, "2x-solo-shuffle": 210.0}[topology] * c
            if topology == "2x-solo-shuffle" and c >= 16:
                ttft = 100.0 * c  # half the queue per engine
            prefill = {"solo": 5000.0, "tp2-mp": 7000.0, "tp2-ray": 6300.0, "2x-solo-shuffle": 5000.0}[topology]
            groups.append(cell_rows(topology, c, [value * 0.99, value, value * 1.01],
                                    [prefill * 0.99, prefill, prefill * 1.01], [ttft * 0.99, ttft, ttft * 1.01]))
    return frame(*groups)
