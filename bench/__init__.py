"""Load against one OpenAI-compatible endpoint, with llama-benchy's semantics (see docs/METRICS.md).

    workload.py  the load as a value: ClosedLoad(c) `c4`, OpenLoad(rate, burstiness, cap, n) `1.5rps`
    arrivals.py  seeded gamma arrival schedules (burstiness = shape; vllm bench serve's normalisation)
    shapes.py    request shapes: fixed, random within a range ratio, multi-turn, ShareGPT-like / a ShareGPT JSON
    suite.py     workload suites (configs/workloads/*.yaml): tests of a shape under a closed, open or
                 rate-sweep load, expanded into load points (one cell each)
    openloop.py  run_open: requests sent on a schedule under a max-concurrency cap
    points.py    workload_row: a point's records as one cells row (measurements and predictions alike)
    records.py   RequestRecord (raw perf_counter timestamps per request), CELL_COLUMNS   (the contract)
    prompts.py   PromptFactory: prompts of exactly pp (+ depth) tokens; LocalTokenizer / ServerTokenizer
    client.py    Endpoint, BenchClient: preflight (fails fast), latency probes, run_batch (a closed batch)
    wire.py      WireTransport: connections opened and requests serialized before a batch, then written
                 in one loop without awaits, so send lag stays ~1-15 ms at c=64 (httpcore: 70-300 ms)
    metrics.py   pure functions: per request, run_metrics (one cells.parquet row), cell_summary; open loop
                 (the user's TTFT from the due time, goodput, TPOT/ITL) and capacity over a rate sweep
    session.py   BenchSession(endpoint, model, BenchSettings).run(load, runs, on_run): the one bench API;
                 .run_point(point, runs, on_run) for a workload suite's point
    results_folder.py  ResultsFolder: the folder layout, typed meta.json, crash-safe appends, migrations
"""
