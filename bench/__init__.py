"""Load against one OpenAI-compatible endpoint, with llama-benchy's semantics (see docs/METRICS.md).

    records.py   RequestRecord (raw perf_counter timestamps per request), CELL_COLUMNS   (the contract)
    prompts.py   PromptFactory: prompts of exactly pp (+ depth) tokens; LocalTokenizer / ServerTokenizer
    client.py    Endpoint, BenchClient: preflight (fails fast), latency probes, run_batch (a closed batch)
    wire.py      WireTransport: connections opened and requests serialized before a batch, then written
                 in one loop without awaits, so send lag stays ~1-15 ms at c=64 (httpcore: 70-300 ms)
    metrics.py   pure functions: per request, run_metrics (one cells.parquet row), cell_summary
    runner.py    run_cell: warm-up + `runs` batches of exactly c, on_run per finished run
    session.py   BenchSession: what `topo bench` and the sweep share (one adaptation, one client)
    store.py     ResultsStore: requests.parquet / cells.parquet, crash-safe appends, compact()
"""
