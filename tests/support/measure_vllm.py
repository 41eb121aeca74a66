"""Measure the real vLLM CPU build on this machine, for planning CI: not a test, prints figures.

    .venv/bin/python tests/support/measure_vllm.py [solo] [tp2]

For each layout (one at a time): seconds until ready, memory of its process groups (RSS, and PSS which
does not double-count shared pages), the latency of a few pp128/tg32 requests, seconds to stop, and the
load average at start (other work on a shared machine slows every figure here).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: the repo root (common, topology) and tests/ (support)
    here = Path(__file__).resolve()
    sys.path[:0] = [str(here.parents[2]), str(here.parents[1])]

from support.fixtures import tiny_vllm_recipe
from support.tiny_model import build_tiny_model
from support.vllm_server import VllmServer, start_solo, start_tp2_two_processes, vllm_executable


def time_requests(server: VllmServer, count: int = 3) -> list[float]:
    latencies = []
    with httpx.Client(timeout=600.0) as client:
        for i in range(count):
            body = {"model": server.served_model_name, "prompt": [7 + i] * 128, "max_tokens": 32,
                    "min_tokens": 32, "ignore_eos": True}  # fmt: skip
            started = time.perf_counter()
            response = client.post(f"{server.base_url}/v1/completions", json=body)
            response.raise_for_status()
            assert response.json()["usage"]["completion_tokens"] == 32
            latencies.append(time.perf_counter() - started)
    return latencies


def measure(layout: str, model_dir: Path, log_dir: Path) -> None:
    recipe = tiny_vllm_recipe(model_dir)
    load = os.getloadavg()[0]
    if layout == "solo":
        server = start_solo(model_dir, log_dir, model_flags=recipe.serve_flags(1), extra_env=recipe.env)
    else:
        server = start_tp2_two_processes(model_dir, log_dir, model_flags=recipe.serve_flags(2), extra_env=recipe.env)
    try:
        memory = server.memory_kib()
        latencies = time_requests(server)
    finally:
        stop_started = time.monotonic()
        server.stop()
        stopped_in = time.monotonic() - stop_started
    print(
        f"{layout:5s} ready {server.ready_after_s:6.1f} s | {memory['processes']} processes, "
        f"RSS {memory['rss_kib'] / 2**20:.2f} GiB, PSS {memory['pss_kib'] / 2**20:.2f} GiB | "
        f"pp128/tg32 requests {', '.join(f'{s:.2f}' for s in latencies)} s | stop {stopped_in:.1f} s | "
        f"load avg at start {load:.1f} (logs: {log_dir})",
        flush=True,
    )


def main(argv: list[str]) -> int:
    layouts = argv or ["solo", "tp2"]
    if any(layout not in ("solo", "tp2") for layout in layouts) or vllm_executable() is None:
        print(__doc__.strip().splitlines()[2].strip(), "(needs scripts/setup --vllm)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="topo-measure-vllm-"))
    model_dir = build_tiny_model(work / "tiny")
    for layout in layouts:
        measure(layout, model_dir, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
