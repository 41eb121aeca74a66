"""Load against one OpenAI-compatible endpoint, with llama-benchy's semantics (see METRICS.md).

    workload.py  the load as a value: ClosedLoad(c), labelled `c4`; what a cell is keyed on
    records.py   RequestRecord (raw perf_counter timestamps per request), CELL_COLUMNS   (the contract)
    prompts.py   PromptFactory: prompts of exactly pp (+ depth) tokens; LocalTokenizer / ServerTokenizer
    client.py    Endpoint, BenchClient: preflight (fails fast), latency probes, run_batch (a closed batch)
    wire.py      WireTransport: connections opened and requests serialized before a batch, then written
                 in one loop without awaits, so send lag stays ~1-15 ms at c=64 (httpcore: 70-300 ms)
    metrics.py   pure functions: per request, run_metrics (one cells.parquet row), cell_summary
    session.py   BenchSession(endpoint, model, BenchSettings).run(load, runs, on_run): the one bench API
    results_folder.py  ResultsFolder: the folder layout, typed meta.json, crash-safe appends, migrations
"""
