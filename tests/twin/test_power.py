"""The twin's GPU telemetry: the power model's arithmetic, and its nvidia-smi stand-in read through the same
node probe (telemetry/node.py) a real node is sampled with."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cluster.connector import LocalConnector
from telemetry.node import node_probe_argv, parse_node_probe
from topology.inventory import TWIN_GPU_DIR_ENV, twin_gpu_dir
from twin.distributed import step_to_wire
from twin.engine import Engine, EngineConfig, GenerationRequest
from twin.power import NodeGpuTelemetry, PowerMeter, reading_for
from twin.profiles import load_hardware

POWER = load_hardware("gb10").power
assert POWER is not None


def test_the_profile_lands_in_the_published_range() -> None:
    # spark_pair.md: 40-75 W under load for one Spark serving gemma-4-26B-A4B, idle lower
    idle = reading_for(POWER, 0, 0, 0).power_w
    decode_c1 = reading_for(POWER, 1.0, 0.87, 0.01).power_w  # memory-bound decode step shares (cost model)
    long_prefill = reading_for(POWER, 1.0, 0.10, 0.96).power_w
    assert idle < 40 <= decode_c1 + 1 and decode_c1 < long_prefill <= 76


def test_meter_shares_count_only_the_window() -> None:
    meter = PowerMeter(POWER, window_s=1.0)
    # 10 steps of 50 ms, each streaming memory 40 ms and computing 5 ms, ending at t = 0.05 .. 0.5
    for i in range(1, 11):
        meter.record(end=i * 0.05, seconds=0.05, memory_seconds=0.04, compute_seconds=0.005)
    busy, memory, compute = meter.shares(now=1.0)
    assert (busy, memory, compute) == pytest.approx((0.5, 0.4, 0.05))
    reading = meter.reading(now=1.0)
    assert reading.power_w == pytest.approx(POWER.idle_w + POWER.memory_w * 0.4 + POWER.compute_w * 0.05)
    assert reading.utilization_pct == pytest.approx(50)
    # later, the window starts at 0.225: steps ending before it left, the one straddling it counts half
    busy, _, _ = meter.shares(now=1.225)
    assert busy == pytest.approx(5 * 0.05 + 0.025)
    assert meter.reading(now=10.0).power_w == POWER.idle_w  # long idle: idle power


def test_steps_carry_the_power_model_inputs_to_peer_ranks() -> None:
    async def one_step() -> list[dict]:
        seen: list[dict] = []

        async def hook(desc: object) -> None:
            seen.append(step_to_wire(desc))

        engine = Engine(EngineConfig.from_names("fast", "tiny"), step_hook=hook)
        await engine.start()
        try:
            async with engine.generate(GenerationRequest("r1", prompt_tokens=64, max_tokens=2)) as stream:
                async for _ in stream:
                    pass
        finally:
            await engine.stop()
        return seen

    wire = asyncio.run(one_step())
    assert wire and all(step["memory_seconds"] > 0 and step["compute_seconds"] > 0 for step in wire)
    assert all(step["memory_seconds"] <= step["modeled_seconds"] for step in wire)
    # an older sender without the new fields still goes over the wire
    old = {"step": 1, "prefill_tokens": 0, "decode_tokens": 1, "num_running": 1, "modeled_seconds": 0.01}
    assert step_to_wire(old)["memory_seconds"] == 0.0


async def test_the_twin_nvidia_smi_answers_the_node_probe(tmp_path: Path) -> None:
    workdir = str(tmp_path / "node1")
    now = [100.0]
    telemetry = NodeGpuTelemetry.from_env(POWER, {TWIN_GPU_DIR_ENV: twin_gpu_dir(workdir)})
    assert telemetry is not None and telemetry.failure is None
    telemetry.clock = lambda: now[0]
    connector = LocalConnector("node1")

    async def probe() -> dict[str, float]:
        done = await connector.run(node_probe_argv(workdir))
        assert done.ok, done.output_tail()
        return {r.metric: r.value for r in parse_node_probe(done.stdout)}

    idle = await probe()  # installed, nothing written yet: idle figures
    assert idle["gpu_power_w"] == pytest.approx(POWER.idle_w)
    assert idle["gpu_utilization_pct"] == 0
    assert idle["mem_total_bytes"] > 0 and idle["cpu_total_jiffies"] > 0 and "load_1m" in idle

    # a busy second of memory-bound steps (as a decode at c1)
    for _ in range(40):
        telemetry.on_step({"modeled_seconds": 0.025, "memory_seconds": 0.022, "compute_seconds": 0.0002})
        now[0] += 0.025
    telemetry.write_now()
    busy = await probe()
    assert busy["gpu_power_w"] == pytest.approx(POWER.idle_w + POWER.memory_w * 0.88 + POWER.compute_w * 0.008,
                                                abs=0.6)
    assert busy["gpu_utilization_pct"] == pytest.approx(100, abs=1)
    assert busy["gpu_clock_sm_mhz"] > idle["gpu_clock_sm_mhz"]
    assert busy["gpu_temperature_c"] > idle["gpu_temperature_c"]

    # state that nobody refreshed for a while reads as idle (the rank stopped or the node is unused)
    state = Path(twin_gpu_dir(workdir)) / "state.csv"
    stamp, rest = state.read_text().split(" ", 1)
    state.write_text(f"{int(time.time()) - 10} {rest}")
    assert (await probe())["gpu_power_w"] == pytest.approx(POWER.idle_w)
    telemetry.close()
    assert not state.exists()


async def test_a_node_without_nvidia_smi_still_reports_memory_and_cpu(tmp_path: Path) -> None:
    done = await LocalConnector("n").run(node_probe_argv(str(tmp_path / "no-twin-here")))
    found = {r.metric for r in parse_node_probe(done.stdout)}
    assert "gpu_power_w" not in found or Path("/usr/bin/nvidia-smi").exists()
    assert {"mem_total_bytes", "mem_available_bytes", "cpu_busy_jiffies", "cpu_total_jiffies", "load_1m"} <= found


def test_the_shim_refuses_queries_it_does_not_emulate(tmp_path: Path) -> None:
    import subprocess

    telemetry = NodeGpuTelemetry.from_env(POWER, {TWIN_GPU_DIR_ENV: str(tmp_path)})
    assert telemetry is not None
    done = subprocess.run([str(telemetry.file.shim), "-L"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "only --query-gpu" in done.stderr
    # fields in the order asked, unknown ones as [N/A]
    done = subprocess.run([str(telemetry.file.shim), "--query-gpu=utilization.gpu,power.draw,memory.used",
                           "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"0, {POWER.idle_w:.2f}, [N/A]"
