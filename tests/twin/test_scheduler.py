"""Scheduler traces on small numbers: who runs in which step, chunking, waiting on a full KV cache."""

from __future__ import annotations

import pytest

from twin.scheduler import Scheduler, Sequence


def trace(plan):
    return [(s.seq.request_id, s.new_tokens, s.context_tokens) for s in plan.scheduled]


def make(capacity: int, budget: int, max_seqs: int = 8) -> Scheduler:
    return Scheduler(kv_capacity_blocks=capacity, max_num_batched_tokens=budget, max_num_seqs=max_seqs)


def test_chunked_prefill_then_decodes_first():
    sched = make(capacity=10, budget=32)
    sched.add(Sequence("A", prompt_tokens=40, max_tokens=3, arrival=0.0))
    sched.add(Sequence("B", prompt_tokens=20, max_tokens=2, arrival=0.0))
    sched.add(Sequence("C", prompt_tokens=30, max_tokens=2, arrival=0.0))

    # step 1: A's first 32-token chunk uses the whole budget
    plan = sched.schedule()
    assert trace(plan) == [("A", 32, 0)]
    assert sched.complete(plan, 1.0) == []  # a non-final chunk samples nothing
    assert sched.used_blocks == 2

    # step 2: A's last 8 tokens, then B whole (20), then C's first 4 tokens (what is left of 32)
    plan = sched.schedule()
    assert trace(plan) == [("A", 8, 32), ("B", 20, 0), ("C", 4, 0)]
    assert (plan.prefill_tokens, plan.decode_tokens) == (32, 0)
    tokens = sched.complete(plan, 2.0)
    assert [(t.request_id, t.index, t.finished) for t in tokens] == [("A", 0, False), ("B", 0, False)]
    assert sched.used_blocks == 3 + 2 + 1

    # step 3: running decodes first (1 token each), then C continues its prompt
    plan = sched.schedule()
    assert trace(plan) == [("A", 1, 40), ("B", 1, 20), ("C", 26, 4)]
    assert (plan.prefill_tokens, plan.decode_tokens) == (26, 2)
    tokens = sched.complete(plan, 3.0)
    assert [(t.request_id, t.index, t.finished) for t in tokens] == [("A", 1, False), ("B", 1, True), ("C", 0, False)]
    assert "B" not in sched.by_id  # finished: its blocks are free again
    assert sched.used_blocks == 3 + 2  # A: 41 tokens -> 3 blocks; C: 30 -> 2 blocks

    plan = sched.schedule()
    assert trace(plan) == [("A", 1, 41), ("C", 1, 30)]
    tokens = sched.complete(plan, 4.0)
    assert [(t.request_id, t.index, t.finished) for t in tokens] == [("A", 2, True), ("C", 1, True)]
    assert not sched.has_work and sched.used_blocks == 0
    assert sched.counters.prompt_tokens_total == 90
    assert sched.counters.generation_tokens_total == 7
    assert sched.counters.ttft_seconds == [2.0, 2.0, 3.0]


def test_requests_wait_while_the_kv_cache_is_full():
    sched = make(capacity=4, budget=64)
    sched.add(Sequence("A", prompt_tokens=40, max_tokens=2, arrival=0.0))  # 3 blocks
    sched.add(Sequence("B", prompt_tokens=20, max_tokens=1, arrival=0.0))  # 2 blocks: does not fit next to A
    sched.add(Sequence("C", prompt_tokens=8, max_tokens=1, arrival=0.0))  # would fit, but FCFS: no skipping

    plan = sched.schedule()
    assert trace(plan) == [("A", 40, 0)]
    sched.complete(plan, 1.0)
    plan = sched.schedule()
    assert trace(plan) == [("A", 1, 40)]  # B and C still wait
    assert [s.request_id for s in sched.waiting] == ["B", "C"]
    sched.complete(plan, 2.0)  # A finishes and frees its 3 blocks
    plan = sched.schedule()
    assert trace(plan) == [("B", 20, 0), ("C", 8, 0)]


def test_max_num_seqs_limits_the_batch():
    sched = make(capacity=100, budget=1000, max_seqs=2)
    for name in "ABC":
        sched.add(Sequence(name, prompt_tokens=10, max_tokens=5, arrival=0.0))
    plan = sched.schedule()
    assert [s[0] for s in trace(plan)] == ["A", "B"]
    assert [s.request_id for s in sched.waiting] == ["C"]


def test_preemption_frees_the_newest_and_recomputes_it():
    sched = make(capacity=5, budget=100)
    sched.add(Sequence("A", prompt_tokens=31, max_tokens=10, arrival=0.0))  # 2 blocks
    sched.add(Sequence("B", prompt_tokens=47, max_tokens=10, arrival=0.0))  # 3 blocks: cache now full
    sched.complete(sched.schedule(), 1.0)  # both prefilled, first tokens out: A has 32 tokens, B 48
    plan = sched.schedule()  # A's 32nd token fits its 2 blocks; B's 48th fits its 3 blocks
    assert trace(plan) == [("A", 1, 31), ("B", 1, 47)]
    sched.complete(plan, 2.0)
    # next step A needs a 3rd block (33 tokens): none free, so B (admitted last) is preempted
    plan = sched.schedule()
    assert trace(plan) == [("A", 1, 32)]
    assert plan.preempted == ("B",)
    assert sched.counters.preemptions_total == 1
    assert [s.request_id for s in sched.waiting] == ["B"]
    b = sched.by_id["B"]
    assert b.num_computed == 0 and b.blocks == 0 and b.generated == 2
    sched.complete(plan, 3.0)
    # A runs to the end alone; then B recomputes prompt + its 2 sampled tokens in one prefill
    while "A" in sched.by_id:
        plan = sched.schedule()
        assert [s[0] for s in trace(plan)] == ["A"]
        sched.complete(plan, 4.0)
    plan = sched.schedule()
    assert trace(plan) == [("B", 49, 0)]
    tokens = sched.complete(plan, 5.0)
    assert [(t.request_id, t.index) for t in tokens] == [("B", 2)]  # the stream continues where it stopped


def test_abort_frees_blocks_and_leaves_the_batch():
    sched = make(capacity=10, budget=100)
    sched.add(Sequence("A", prompt_tokens=20, max_tokens=5, arrival=0.0))
    sched.add(Sequence("B", prompt_tokens=20, max_tokens=5, arrival=0.0))
    plan = sched.schedule()
    assert sched.abort("B") is True
    assert sched.used_blocks == 2  # only A's
    tokens = sched.complete(plan, 1.0)  # the in-flight step ignores the aborted request
    assert [t.request_id for t in tokens] == ["A"]
    assert [s[0] for s in trace(sched.schedule())] == ["A"]
    assert sched.abort("B") is False


def test_duplicate_request_id_is_refused():
    sched = make(capacity=10, budget=100)
    sched.add(Sequence("A", prompt_tokens=5, max_tokens=1, arrival=0.0))
    with pytest.raises(ValueError):
        sched.add(Sequence("A", prompt_tokens=5, max_tokens=1, arrival=0.0))
