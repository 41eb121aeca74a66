"""`topo bench`'s session against the real `vllm serve` (CPU build, tiny offline model).

The twin imitates vLLM; this pins that the bench client's assumptions hold for the real thing: the prompt
adapted once to exactly pp tokens by vLLM's count, exactly tg tokens under min_tokens/ignore_eos, one
timestamp per generated token, and a server-side /tokenize that counts like the built-in tokenizer.
"""

from __future__ import annotations

import pytest

from bench.client import Endpoint
from bench.metrics import cell_summary
from bench.session import BenchSession, BenchSettings
from bench.workload import ClosedLoad

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]


async def test_bench_session_against_real_vllm(vllm_solo):
    session = BenchSession(Endpoint.from_url(vllm_solo.base_url), None,
                           BenchSettings(pp=128, tg=16, latency_mode="generation", seed=3))
    try:
        assert await session.open() == "tiny"
        assert any("counting locally" in note for note in session.notes)
        assert session.latency is not None and session.latency > 0
        results = [await session.run(ClosedLoad(c), 2, topology="solo") for c in (1, 2)]
    finally:
        await session.close()
    for result in results:
        records = result.records
        assert all(r.ok for r in records), [r.error for r in records if r.error]
        assert {r.prompt_tokens for r in records} == {128}
        assert {r.completion_tokens for r in records} == {16}
        assert all(len(r.token_times) == 16 and r.token_times == sorted(r.token_times) for r in records)
        summary = cell_summary(result.run_rows, records)
        assert summary["failed"] == 0 and summary["decode_tps_mean"] > 0 and summary["ttft_p50_ms"] > 0
