"""A continuous-batching scheduler in the manner of vLLM's V1 scheduler, with no notion of time.

Requests wait in FCFS order; each step has a token budget (max_num_batched_tokens). Running requests are
served first, in the order they were admitted (a decode takes 1 token, an unfinished prompt takes a chunk
of what is left of the budget: chunked prefill), then waiting requests are admitted while budget, a
sequence slot (max_num_seqs) and KV blocks are available. The KV cache is counted in blocks of
`block_size` tokens; a request holds the blocks of every token it has computed. When a running request
needs a block and none is free, the most recently admitted running request is preempted (its blocks are
freed and it is recomputed later, as vLLM's recompute preemption does). Admission stops at the first
waiting request that does not fit (no skipping ahead), so requests wait while the KV cache is full.

The caller owns time: `schedule()` says what the next step computes, `complete()` applies it and returns
the tokens it produced. The engine's wall-clock loop and the virtual-time predictor both drive this.

In virtual time most steps are alike: every running request decodes one token and nothing else changes.
`decode_run_steps()` says how many such steps follow from the current state by the rules above (no
admission, no preemption, no request finishing before the last of them), and `complete_decode_run()`
applies a number of them at once, exactly as as many `schedule()`/`complete()` pairs would.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from twin.costmodel import SeqWork

BLOCK_SIZE = 16


def blocks_for(tokens: int, block_size: int = BLOCK_SIZE) -> int:
    return -(-tokens // block_size)


@dataclass(eq=False)
class Sequence:
    """A request inside the scheduler."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    arrival: float  # when it entered the engine (for TTFT)
    num_computed: int = 0  # tokens whose KV is in the cache
    generated: int = 0  # tokens sampled so far
    blocks: int = 0
    first_token_time: float | None = None
    preemptions: int = 0
    aborted: bool = False

    @property
    def num_tokens(self) -> int:
        """Prompt plus sampled tokens: what has to be computed before the next token is sampled."""
        return self.prompt_tokens + self.generated

    @property
    def finished(self) -> bool:
        return self.generated >= self.max_tokens


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    new_tokens: int
    context_tokens: int  # num_computed before this step

    @property
    def samples(self) -> bool:
        return self.context_tokens + self.new_tokens >= self.seq.num_tokens

    @property
    def is_prefill(self) -> bool:
        """Computing prompt tokens (or recomputing after a preemption), not decoding one token."""
        return self.new_tokens > 1 or self.context_tokens < self.seq.prompt_tokens

    def work(self) -> SeqWork:
        return SeqWork(self.new_tokens, self.context_tokens, self.samples)


@dataclass(frozen=True)
class StepPlan:
    """What one step computes."""

    scheduled: tuple[ScheduledSeq, ...]
    preempted: tuple[str, ...] = ()

    @property
    def prefill_tokens(self) -> int:
        return sum(s.new_tokens for s in self.scheduled if s.is_prefill)

    @property
    def decode_tokens(self) -> int:
        return sum(s.new_tokens for s in self.scheduled) - self.prefill_tokens

    @property
    def total_tokens(self) -> int:
        return sum(s.new_tokens for s in self.scheduled)

    def works(self) -> list[SeqWork]:
        return [s.work() for s in self.scheduled]

    @property
    def empty(self) -> bool:
        return not self.scheduled


@dataclass(frozen=True)
class EmittedToken:
    request_id: str
    index: int  # 0-based index of the generated token
    time: float
    finished: bool


@dataclass(frozen=True)
class DecodeRunTokens:
    """The tokens of consecutive pure-decode steps: every listed request sampled one token per step."""

    request_ids: tuple[str, ...]  # in the running order
    first_index: tuple[int, ...]  # 0-based index of each request's token in the first step
    times: tuple[float, ...]  # each step's end
    finished: tuple[bool, ...]  # the request's last token came in the last step


@dataclass
class SchedulerCounters:
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    preemptions_total: int = 0
    steps_total: int = 0
    ttft_seconds: list[float] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        *,
        kv_capacity_blocks: int,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        self.capacity = kv_capacity_blocks
        self.free_blocks = kv_capacity_blocks
        self.budget = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.block_size = block_size
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.by_id: dict[str, Sequence] = {}
        self.counters = SchedulerCounters()

    # ------------------------------------------------------------------------------------- requests
    def add(self, seq: Sequence) -> None:
        if seq.request_id in self.by_id:
            raise ValueError(f"request id {seq.request_id!r} is already in the engine")
        self.by_id[seq.request_id] = seq
        self.waiting.append(seq)

    def abort(self, request_id: str) -> bool:
        """Drop a request (its client went away); frees its KV. True if it was still in the engine."""
        seq = self.by_id.pop(request_id, None)
        if seq is None:
            return False
        seq.aborted = True
        self._free(seq)
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        return True

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def used_blocks(self) -> int:
        return self.capacity - self.free_blocks

    # ------------------------------------------------------------------------------------- schedule
    def _free(self, seq: Sequence) -> None:
        self.free_blocks += seq.blocks
        seq.blocks = 0

    def _grow(self, seq: Sequence, tokens_after: int) -> bool:
        need = blocks_for(tokens_after, self.block_size) - seq.blocks
        if need > self.free_blocks:
            return False
        self.free_blocks -= max(need, 0)
        seq.blocks += max(need, 0)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self._free(seq)
        seq.num_computed = 0
        seq.preemptions += 1
        self.counters.preemptions_total += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def schedule(self) -> StepPlan:
        budget = self.budget
        scheduled: list[ScheduledSeq] = []
        preempted: list[str] = []
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            new = min(seq.num_tokens - seq.num_computed, budget)
            while not self._grow(seq, seq.num_computed + new):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is seq:
                    break
            if seq.request_id in preempted:
                break
            scheduled.append(ScheduledSeq(seq, new, seq.num_computed))
            budget -= new
            index += 1
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                seq = self.waiting[0]
                new = min(seq.num_tokens - seq.num_computed, budget)
                if not self._grow(seq, seq.num_computed + new):
                    break  # the KV cache is full: wait (FCFS, no skipping ahead)
                self.waiting.popleft()
                self.running.append(seq)
                scheduled.append(ScheduledSeq(seq, new, seq.num_computed))
                budget -= new
        return StepPlan(tuple(scheduled), tuple(preempted))

    def decode_run_steps(self) -> int:
        """How many of the next steps are pure decodes that change nothing but the running requests' lengths.

        Every running request is decoding and the budget takes them all; no waiting request can be admitted
        (none waits, the sequence slots are full, or the head does not fit the KV cache, which only fills
        up while decoding); every step's new KV blocks fit without preempting; no request finishes before
        the last step. 0 when the next step is not such a step. Time and new arrivals are the caller's.
        """
        running = self.running
        count = len(running)
        if count == 0 or count > self.budget:
            return 0
        steps = None
        for seq in running:
            if seq.aborted or seq.generated < 1 or seq.num_computed != seq.num_tokens - 1:
                return 0
            left = seq.max_tokens - seq.generated
            steps = left if steps is None else min(steps, left)
        if self.waiting and count < self.max_num_seqs and self.budget - count > 0:
            head = self.waiting[0]
            new = min(head.num_tokens - head.num_computed, self.budget - count)
            if blocks_for(head.num_computed + new, self.block_size) - head.blocks <= self.free_blocks:
                return 0  # the next step admits it
        assert steps is not None

        def new_blocks(after: int) -> int:  # blocks the running requests need for `after` more decodes
            return sum(max(blocks_for(seq.num_computed + after, self.block_size) - seq.blocks, 0) for seq in running)

        if new_blocks(steps) <= self.free_blocks:
            return steps
        low, high = 0, steps  # new_blocks(low) fits, new_blocks(high) does not
        while high - low > 1:
            middle = (low + high) // 2
            if new_blocks(middle) <= self.free_blocks:
                low = middle
            else:
                high = middle
        return low

    def complete_decode_run(self, times: tuple[float, ...]) -> DecodeRunTokens:
        """Apply `len(times)` pure-decode steps (at most `decode_run_steps()`), ending at `times`."""
        steps = len(times)
        running = tuple(self.running)
        tokens = DecodeRunTokens(
            request_ids=tuple(seq.request_id for seq in running),
            first_index=tuple(seq.generated for seq in running),
            times=times,
            finished=tuple(seq.generated + steps >= seq.max_tokens for seq in running),
        )
        for seq in running:
            seq.num_computed += steps
            seq.generated += steps
            grown = blocks_for(seq.num_computed, self.block_size)
            self.free_blocks -= max(grown - seq.blocks, 0)
            seq.blocks = max(grown, seq.blocks)
        self.counters.steps_total += steps
        self.counters.generation_tokens_total += steps * len(running)
        for seq, done in zip(running, tokens.finished):
            if done:
                self._free(seq)
                self.running.remove(seq)
                del self.by_id[seq.request_id]
        return tokens

    def complete(self, plan: StepPlan, time: float) -> list[EmittedToken]:
        """Apply a step that ended at `time`; return the tokens it sampled."""
        emitted: list[EmittedToken] = []
        self.counters.steps_total += 1
        for item in plan.scheduled:
            seq = item.seq
            if seq.aborted:
                continue
            seq.num_computed = item.context_tokens + item.new_tokens
            if seq.num_computed < seq.num_tokens:
                continue  # a prefill chunk that is not the prompt's last
            if seq.generated == 0 and seq.preemptions == 0:
                self.counters.prompt_tokens_total += seq.prompt_tokens
            seq.generated += 1
            self.counters.generation_tokens_total += 1
            if seq.first_token_time is None:
                seq.first_token_time = time
                self.counters.ttft_seconds.append(time - seq.arrival)
            done = seq.finished
            emitted.append(EmittedToken(seq.request_id, seq.generated - 1, time, done))
            if done:
                self._free(seq)
                self.running.remove(seq)
                del self.by_id[seq.request_id]
        return emitted
