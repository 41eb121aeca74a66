"""A results folder with hand-made telemetry: two topologies, two cells each, known power and queues."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.results_folder import ResultsFolder
from tests.reports.fixtures import cell_rows, frame

# (topology, nodes, watts per node while a run is on); idle 12 W between runs
TOPOLOGIES = (("solo", ("node1",), 40.0), ("tp2-mp", ("node1", "node2"), 30.0))
LEVELS = (1, 8)
RUN_S = 4.0
GAP_S = 2.0


def write_folder(directory: Path, *, preempt: bool = False) -> Path:
    """cells, requests, telemetry (1 s samples) and meta of a gb10 sweep; each run RUN_S long."""
    directory.mkdir(parents=True, exist_ok=True)
    cells, requests, samples = [], [], []
    t = 100.0
    for topology, nodes, watts in TOPOLOGIES:
        for concurrency in LEVELS:
            cells += cell_rows(topology, concurrency, [30.0 * concurrency])
            start, end = t + GAP_S, t + GAP_S + RUN_S
            requests += [{"topology": topology, "concurrency": concurrency, "run": 0, "index": i,
                          "batch_start": start, "start": start, "first_token": start + 0.1, "end": end,
                          "completion_tokens": 100, "error": None} for i in range(concurrency)]
            for second in range(int(GAP_S + RUN_S) + 1):
                at = t + second
                busy = start <= at <= end
                for node in nodes:
                    samples.append({"topology": topology, "source": f"node:{node}", "node": node, "t": at,
                                    "unix": 1e9 + at, "metric": "gpu_power_w", "value": watts if busy else 12.0})
                for metric, value in (("kv_cache_usage", 0.1 * concurrency if busy else 0.0),
                                      ("requests_running", concurrency if busy else 0),
                                      ("requests_waiting", 0),
                                      ("preemptions", 3.0 if preempt and at > start else 0.0)):
                    samples.append({"topology": topology, "source": f"engine:{nodes[0]}", "node": nodes[0], "t": at,
                                    "unix": 1e9 + at, "metric": metric, "value": float(value)})
            t = end + 1.0
    frame(cells).to_parquet(directory / "cells.parquet")
    pd.DataFrame(requests).to_parquet(directory / "requests.parquet")
    folder = ResultsFolder(directory)
    folder.append_telemetry([{**s, "workload": "default", "load": None, "concurrency": None, "run": None,
                              "le": float("nan")} for s in samples])
    folder.compact()
    meta = {"kind": "sweep", "status": "complete",
            "spec": {"model": "gemma4-26b", "pp": 1024, "tg": 128},
            "recipe": {"name": "gemma4-26b", "twin_card": "gemma4-26b", "quantization": "fp8", "kv_cache_dtype": "fp8"},
            "cluster": {"name": "local-twin", "nodes": [{"name": "node1", "engine": {"kind": "twin", "hardware": "gb10"}}],
                        "costs": {"currency": "USD", "box_price": 3999, "kwh_price": 0.3}}}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory
