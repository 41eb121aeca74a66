"""Open-loop agreement with the real `vllm bench serve` (CPU build in .venv-vllm) against the same twin.

Same rate, burstiness, cap, lengths (Arena range ratio 0.9 = vLLM's --random-range-ratio 0.1) and seed.
The two clients draw their own gamma arrivals (different generators), so with our own schedule only the
output t/s and the achieved rate are compared. TTFT is compared on a replay of vLLM's own arrivals (its
start minus queue times) and lengths through our client: mean and P99 TTFT (from send, vLLM's definition)
and output t/s within 10% in both directions.

Why this load (measured with the twin's own per-request records, /twin/requests, against both clients):
neither client adds a term that matters. vLLM's timer starts before aiohttp writes the request, ours when
the headers go out: server arrival minus client start was 6-12 ms mean for vLLM, 3 ms for ours; the
server's first token reached either client in 1-2 ms (mean). No GC pass of vLLM's process (623k objects
after importing torch; a full pass costs 0.7 s) fell inside a run. What moved P99 is the twin on a loaded
2-core host: a pair of requests handed over together sometimes misses a prefill step (+~100 ms server-side
TTFT), for either client. With 80 requests P99 is the largest two TTFTs, so one such pair set it: on the
same replayed schedule our own client measured 542-555 ms in three runs and 656 ms in a fourth, vLLM
544-670 ms (the 552 vs 794 ms seen before). With 150 requests and short answers (rate 4/s, near the
twin's capacity, so queues form in bursts) P99 sits on the third-largest TTFT and several bursts reach
it: two replays of one schedule gave 630 and 640 ms.
Takes ~2.5-3 minutes (vLLM's CLI imports torch, ~50 s; then three runs of ~40 s): marked slow.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from twin_process import TwinProcess

from bench.client import BenchClient, Endpoint
from bench.openloop import run_open
from bench.points import workload_row
from bench.prompts import LocalTokenizer, PromptFactory
from bench.session import BenchSession, BenchSettings
from bench.shapes import vllm_range_ratio
from bench.suite import Suite
from common.config import validate_model
from support.vllm_server import VLLM_VENV, vllm_env, vllm_executable

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

RATE, BURSTINESS, CAP, N, PP, TG, RANGE = 4.0, 0.7, 8, 150, 1000, 16, 0.9


@pytest.fixture(scope="module")
def twin():
    with TwinProcess(hardware="gb10", card="gemma4-26b", model="gemma4-26b") as process:
        yield process


def vllm_bench_serve(twin: TwinProcess, tokenizer_dir: Path, out: Path) -> dict:
    exe = vllm_executable()
    if exe is None:
        pytest.skip(f"real vLLM CPU build not installed ({VLLM_VENV}/bin/vllm absent)")
    argv = [str(exe), "bench", "serve", "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", twin.url, "--model", "gemma4-26b", "--tokenizer", str(tokenizer_dir),
            "--dataset-name", "random", "--random-input-len", str(PP), "--random-output-len", str(TG),
            "--random-range-ratio", str(vllm_range_ratio(RANGE)), "--num-prompts", str(N),
            "--request-rate", str(RATE), "--burstiness", str(BURSTINESS), "--max-concurrency", str(CAP),
            "--seed", "42", "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,90,95,99", "--num-warmups", "0", "--disable-tqdm",
            "--save-result", "--save-detailed", "--result-dir", str(out), "--result-filename", "vllm.json"]
    done = subprocess.run(argv, env=vllm_env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "vllm.json").read_text())


def served_ttft_ms(twin: TwinProcess, since: float) -> dict[str, float]:
    """The twin's own TTFT (handler entry to first token out) of the requests that arrived after `since`
    (perf_counter, the same clock as both clients'): tells a server-side difference from a client's."""
    rows = httpx.get(f"{twin.url}/twin/requests", params={"token_times": "0"}, timeout=30).json()["requests"]
    ttfts = [1000 * (row["first_token"] - row["arrival"]) for row in rows
             if row["arrival"] >= since and row["first_token"] is not None]
    return {"mean": float(np.mean(ttfts)), "p99": float(np.percentile(ttfts, 99))}


async def test_open_loop_agrees_with_vllm_bench_serve(twin: TwinProcess, tiny_model_dir: Path, tmp_path: Path) -> None:
    theirs = vllm_bench_serve(twin, tiny_model_dir, tmp_path)
    arrivals = [start - queue for start, queue in zip(theirs["start_times"], theirs["queue_times"])]
    served_theirs = served_ttft_ms(twin, min(arrivals))
    suite = validate_model(Suite, {"name": "x", "tests": [{
        "id": "t", "shape": {"kind": "random", "prompt": PP, "output": TG, "range_ratio": RANGE},
        "load": {"mode": "open", "rate": RATE, "burstiness": BURSTINESS, "requests": N, "max_concurrency": CAP}}]},
        source="test")
    (point,) = suite.points()
    async with BenchSession(twin.url, None, BenchSettings(pp=PP, seed=1, latency_mode="none")) as session:
        (ours,) = (await session.run_point(point, 1, topology="twin")).run_rows
    assert ours["failed"] == 0 and theirs["completed"] == N
    # Our own gamma draws: the throughput is set by the rate and the lengths
    assert ours["output_tps"] == pytest.approx(theirs["output_throughput"], rel=0.10)
    assert ours["achieved_rate"] == pytest.approx(theirs["request_throughput"], rel=0.10)

    # vLLM's own arrivals and lengths, through our client
    first = min(arrivals)
    schedule = [a - first for a in arrivals]
    order = sorted(range(N), key=lambda i: schedule[i])
    factory = PromptFactory(LocalTokenizer.builtin(), pp=PP, seed=2)
    prompts = [factory.build(pp=int(theirs["input_lens"][i])) for i in order]
    async with BenchClient(Endpoint.from_url(twin.url)) as client:
        await client.preflight()
        records = await run_open(client, prompts, [int(theirs["output_lens"][i]) for i in order],
                                 [schedule[i] for i in order], max_concurrency=CAP)
    served_ours = served_ttft_ms(twin, min(r.start for r in records))
    replay = workload_row(point, records)
    figures = {"ours": {k: replay[k] for k in ("ttft_ms", "ttft_p99_ms", "output_tps")},
               "vllm": {k: theirs[k] for k in ("mean_ttft_ms", "p99_ttft_ms", "output_throughput")},
               "twin's own ttft under ours": served_ours, "under vllm's": served_theirs}
    print(json.dumps(figures))  # the figures behind the verdict, in the -s / failure output
    assert replay["failed"] == 0
    for mine, their in (("ttft_ms", "mean_ttft_ms"), ("ttft_p99_ms", "p99_ttft_ms"),
                        ("output_tps", "output_throughput")):
        assert replay[mine] == pytest.approx(theirs[their], rel=0.10), (mine, figures)
