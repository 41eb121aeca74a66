"""Server and node telemetry aligned to the sweep's cells: what the servers and the nodes saw while a cell
was measured (KV-cache use, running/waiting, preemptions, prefix-cache hits, server-side TTFT, power),
energy per token and the share of the hardware's roofline a cell reached.

    prometheus.py   Prometheus text -> samples; vLLM's metric names -> topo's; counter and histogram arithmetic
    node.py         the one shell command that reads a node (nvidia-smi, /proc/meminfo, /proc/stat) and its parser
    sampler.py      scrapes every engine, the proxy and every node at a steady interval during a topology's cells
    store.py        telemetry.parquet: raw samples with cell keys
    summary.py      per cell: server summaries, energy (J per output token, tokens/s per W), cost per topology
    roofline.py     per cell: the hardware's step-level ceiling and the measured share of it
"""
