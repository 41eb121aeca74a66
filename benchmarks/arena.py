"""The Arena suite twice: measured on the embedded default (fast twin, wall clock) and predicted for gb10.

    .venv/bin/python benchmarks/arena.py [--out DIR] [--cluster FILE] [--only 01-chat,10-monday-peak]

1. `topo sweep --workload arena --twin-hardware fast --rate-scale 50`: every topology really brought up
   (twin engines, Ray, the LiteLLM proxy, HTTP streaming), every Arena test measured. The fast profile is
   gb10 sped up 50x, so the open-loop rates are multiplied by 50 to load it as much as gb10 would be;
   the client, the proxy, the HTTP stack and the twin's own tokenizer are NOT 50x faster: at 0.3 req/s
   x 50 = 15 req/s of 4000-token prompts on a 2-core machine they, not the modeled engine, set the pace
   (seen: solo's TTFT 9.5 s where gb10/50 would give ~20 ms), and the report flags those cells
   client-bound. `--rate-scale 5` keeps the open-loop tests truer, at ~10x the wall-clock time.
2. `topo predict --workload arena --hardware gb10`: the same suite through the twin's scheduler and cost
   model in virtual time, at gb10's own speed and the Arena's own rates.

Prints both reports and the wall-clock time of each. Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAST_SPEEDUP = 50  # configs/hardware/fast.yaml: speedup


def topo(*args: str) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "topo", *args], cwd=REPO, env=env, check=False)
    return done.returncode, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results") / time.strftime("arena-%Y%m%d-%H%M%S"))
    parser.add_argument("--cluster", default="local-twin", help="cluster of the measured sweep (default: embedded)")
    parser.add_argument("--model", default="gemma4-26b")
    parser.add_argument("--only", default=None, help="tests of the suite, e.g. 01-chat,10-monday-peak")
    parser.add_argument("--rate-scale", type=float, default=FAST_SPEEDUP, help="open-loop rates x this in the sweep")
    parser.add_argument("--skip-sweep", action="store_true", help="only the prediction")
    args = parser.parse_args()
    only = ["--only", args.only] if args.only else []
    timings = {}
    if not args.skip_sweep:
        print(f"== measured: topo sweep --workload arena on {args.cluster}, twin hardware fast, rates x{args.rate_scale:g}",
              flush=True)
        code, seconds = topo("sweep", "--model", args.model, "--cluster", args.cluster, "--workload", "arena", *only,
                             "--twin-hardware", "fast", "--rate-scale", str(args.rate_scale), "--out",
                             str(args.out / "sweep"))
        timings["sweep (wall clock)"] = (code, seconds)
    print("\n== predicted: topo predict --workload arena --hardware gb10 (virtual time)", flush=True)
    code, seconds = topo("predict", "--model", args.model, "--hardware", "gb10", "--workload", "arena", *only,
                         "--out", str(args.out / "predict"))
    timings["predict (virtual time)"] = (code, seconds)
    print()
    for name, (code, seconds) in timings.items():
        print(f"{name}: {seconds / 60:.1f} min, exit {code}")
    print(f"reports: {args.out}/sweep/report.md, {args.out}/predict/report.md")
    return max(code for code, _ in timings.values())


if __name__ == "__main__":
    raise SystemExit(main())
