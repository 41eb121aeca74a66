"""The telemetry agent: telemetry/sampler.py's SampleLoop in a process of its own (`python -m telemetry.agent`).

Protocol over stdin/stdout, one line each:
    parent -> agent: the spec as JSON (topology, workload, interval_s, http, nodes, cluster, out)
    agent -> parent: `ready` once the first tick is done
    parent -> agent: `snapshot` (sample now) ... `stop`
    agent -> parent: {"out": path, "rows": n, "notes": [...], "ticks": n, "skipped": n} after writing the rows

The agent opens its own connectors to the nodes (an SSH connection is bound to the event loop that opened
it), and exits when stdin closes: a parent that dies takes its agent with it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.results_folder import TELEMETRY_SCHEMA
from cluster.bringup import open_cluster
from cluster.connector import Connector
from telemetry.sampler import HttpTarget, NodeTarget, SampleLoop
from topology.inventory import Cluster


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def run_agent() -> None:
    commands = await _stdin_lines()
    spec: dict[str, Any] = json.loads(await commands.readline())
    cluster = Cluster.model_validate(spec["cluster"]) if spec.get("cluster") else None
    nodes = open_cluster(cluster) if cluster is not None else None
    connectors: dict[str, Connector] = {name: nodes[name].connector for name in nodes} if nodes else {}
    sampler = SampleLoop(spec["topology"], [HttpTarget(**t) for t in spec["http"]],
                         [NodeTarget(**t) for t in spec["nodes"]], connectors,
                         interval_s=float(spec["interval_s"]), workload=spec["workload"])
    try:
        await sampler.start()
        _say("ready")
        while True:
            line = (await commands.readline()).strip()
            if line == b"snapshot":
                sampler.snapshot()
            elif line in (b"stop", b""):  # b"": the parent went away
                break
        await sampler.stop()
    finally:
        if nodes is not None:
            await nodes.close()
    table = pa.Table.from_pylist([{n: row.get(n) for n in TELEMETRY_SCHEMA.names} for row in sampler.rows],
                                 schema=TELEMETRY_SCHEMA)
    pq.write_table(table, spec["out"])
    _say(json.dumps({"out": spec["out"], "rows": len(sampler.rows), "notes": sampler.notes,
                     "ticks": sampler.ticks, "skipped": sampler.skipped}))


if __name__ == "__main__":
    asyncio.run(run_agent())
