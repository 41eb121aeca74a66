"""How close a cell came to the hardware's ceiling, and what the twin's model says holds it back.

The ceiling is physics, not calibration: the PUBLISHED peak of the hardware profile against the bytes and
FLOPs one step must move (twin/costmodel.py counts them from the model card):

- decode: a step of b sequences (b = c / replicas) at mid-generation context (pp + tg/2) reads its weights
  (the distinct experts b tokens route to) and its KV cache once; at peak memory bandwidth that takes
  bytes / bandwidth, so the engine can produce at most b / that tokens per second, times the replicas;
- prefill: a pp-token prompt needs FLOPs per rank; at peak matrix throughput an engine prefills at most
  pp / (FLOPs / peak) tokens per second, times the replicas.

The measured decode t/s and prefill t/s (total, docs/METRICS.md) are set against them as a share. The same
figures apply to a real engine on that hardware and to the twin. The one sentence per topology uses the
twin's calibrated cost model to say where a modeled step's time goes (memory at the kernels' effective
rate, compute, the link's all-reduces, fixed per-step overhead), and flags a cell measured far below the
twin's own prediction for it (the model does not explain that cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from twin.costmodel import CostModel, SeqWork
from topology.registry import Topology
from twin.predict import topology_model
from twin.profiles import HardwareProfile, ModelCard

ROOFLINE_COLUMNS = ("topology", "concurrency", "decode_ceiling_tps", "decode_share", "decode_predicted_share",
                    "prefill_ceiling_tps", "prefill_share")
# A measurement this far below what the twin predicts for the same cell (virtual time, twin/predict.py) is
# held back by something outside the model (the host's CPU under the twin, the client, the router's host).
BELOW_PREDICTION = 0.7


@dataclass(frozen=True)
class EngineShape:
    """What the ceiling depends on besides the topology: the hardware, the model and its number formats."""

    hardware: HardwareProfile
    card: ModelCard
    weight_bytes_per_param: float | None = None  # None: the card's default quantization
    kv_bytes_per_element: float | None = None  # None: 1 byte (fp8), the twin's default
    pp: int = 1024
    tg: int = 128

    def cost_model(self, topology: Topology) -> CostModel:
        return CostModel(self.hardware, self.card, tensor_parallel=topology.tensor_parallel,
                         executor=topology.executor, weight_bytes_per_param=self.weight_bytes_per_param,
                         kv_cache_bytes_per_element=self.kv_bytes_per_element)

    @property
    def peak_bandwidth(self) -> float:
        return self.hardware.memory_bandwidth_gbs * 1e9

    def peak_flops(self, model: CostModel) -> float:
        return self.hardware.effective_flops(model.bytes_per_param) / self.hardware.compute_efficiency


def _batch(concurrency: int, topology: Topology) -> int:
    return max(1, round(concurrency / topology.replicas))


def _decode_seqs(shape: EngineShape, batch: int) -> list[SeqWork]:
    return [SeqWork(1, shape.pp + shape.tg // 2)] * batch


def decode_ceiling_tps(shape: EngineShape, topology: Topology, concurrency: int) -> float:
    model = shape.cost_model(topology)
    batch = _batch(concurrency, topology)
    seqs = _decode_seqs(shape, batch)
    step_bytes = model.weight_bytes(batch, batch) + model.kv_bytes(seqs)  # per rank; ranks stream in parallel
    return topology.replicas * batch / (step_bytes / shape.peak_bandwidth)


def predicted_decode_tps(shape: EngineShape, topology: Topology, concurrency: int) -> float:
    """The twin's prediction of the cell's decode t/s (one batch in virtual time, a fraction of a second)."""
    from twin.engine import EngineConfig
    from twin.predict import predict_cells

    config = EngineConfig(hardware=shape.hardware, card=shape.card, weight_bytes_per_param=shape.weight_bytes_per_param,
                          kv_cache_bytes_per_element=shape.kv_bytes_per_element)
    row = predict_cells(topology, config, (concurrency,), prompt_tokens=shape.pp, max_tokens=shape.tg, runs=1,
                        warmup=False)[0]
    return float(row["decode_tps"])


def prefill_ceiling_tps(shape: EngineShape, topology: Topology) -> float:
    model = shape.cost_model(topology)
    flops = model.flops([SeqWork(shape.pp, 0)])  # per rank
    return topology.replicas * shape.pp / (flops / shape.peak_flops(model))


def roofline(cells: pd.DataFrame, shape: EngineShape) -> pd.DataFrame:
    """Per (topology, concurrency): both ceilings and the cell's mean measured share of them. Topologies the
    twin has no layout for are left out."""
    rows = []
    means = cells.groupby(["topology", "concurrency"], sort=False)[["decode_tps", "prefill_tps"]].mean()
    for (name, concurrency), measured in means.iterrows():
        try:
            topology = topology_model(str(name))
        except Exception:  # noqa: BLE001 - an unknown layout has no ceiling; ConfigError from the twin
            continue
        decode = decode_ceiling_tps(shape, topology, int(concurrency))
        prefill = prefill_ceiling_tps(shape, topology)
        rows.append({"topology": name, "concurrency": int(concurrency), "decode_ceiling_tps": decode,
                     "decode_share": measured["decode_tps"] / decode,
                     "decode_predicted_share": predicted_decode_tps(shape, topology, int(concurrency)) / decode,
                     "prefill_ceiling_tps": prefill,
                     "prefill_share": measured["prefill_tps"] / prefill})
    return pd.DataFrame(rows, columns=list(ROOFLINE_COLUMNS))


def step_breakdown(shape: EngineShape, topology: Topology, concurrency: int) -> dict[str, float]:
    """Where a modeled decode step's time goes (shares of the step): memory, compute, link, overhead."""
    model = shape.cost_model(topology)
    cost = model.step(_decode_seqs(shape, _batch(concurrency, topology)))
    busy = cost.seconds - cost.comm_seconds - cost.overhead_seconds
    # inside `busy`, memory and compute overlap: attribute it to whichever of the two is larger
    memory_bound = cost.memory_seconds >= cost.compute_seconds
    return {"memory": busy / cost.seconds if memory_bound else 0.0,
            "compute": 0.0 if memory_bound else busy / cost.seconds,
            "link": cost.comm_seconds / cost.seconds, "overhead": cost.overhead_seconds / cost.seconds}


_LIMITS = {
    "memory": "memory bandwidth (weights and KV cache streamed every step)",
    "compute": "the matrix units",
    "link": "the all-reduces over the node-to-node link",
    "overhead": "fixed per-step overhead (scheduling, kernel launches, the executor's broadcast)",
}


def limit_sentences(table: pd.DataFrame, shape: EngineShape) -> dict[str, str]:
    """One sentence per topology: decode's share of the ceiling at the lowest and highest load, and the
    modeled step's largest part at the highest load."""
    sentences: dict[str, str] = {}
    for name, rows in table.groupby("topology", sort=False):
        rows = rows.sort_values("concurrency")
        low, high = rows.iloc[0], rows.iloc[-1]
        topology = topology_model(str(name))
        parts = step_breakdown(shape, topology, int(high["concurrency"]))
        main = max(parts, key=lambda key: parts[key])
        others = ", ".join(f"{parts[k]:.0%} {k}" for k in ("memory", "compute", "link", "overhead")
                           if parts[k] >= 0.05 and k != main)
        share = (f"decode at {_pct(low['decode_share'])} of the bandwidth ceiling at c{int(low['concurrency'])}"
                 + (f", {_pct(high['decode_share'])} at c{int(high['concurrency'])}" if len(rows) > 1 else ""))
        router = "; the router in front adds its own latency to every request" if topology.routed else ""
        below = ""
        expected = high["decode_predicted_share"]
        if high["decode_share"] < BELOW_PREDICTION * expected:
            below = (f"; measured well below the twin's prediction for c{int(high['concurrency'])} "
                     f"({_pct(expected)} of the ceiling): something outside the model held it back (the host's "
                     "CPU, the client, the router's host or the network)")
        sentences[str(name)] = (f"{name}: {share}; a modeled c{int(high['concurrency'])} decode step is "
                                f"{parts[main]:.0%} {main}" + (f" ({others})" if others else "")
                                + f", so {_LIMITS[main]} limits it{router}{below}.")
    return sentences


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.0%}"
