from pathlib import Path

import pytest

from bench.suite import load_suite, load_suites
from common.errors import ConfigError

ARENA_IDS = ["01-chat", "02-rag-8k", "03-long-output", "04-multi-turn", "05-big-context", "06-concurrency-stress",
             "07-office-baseline", "08-sharegpt", "09-reasoning", "10-monday-peak", "11-rate-sweep"]


def test_arena_has_the_eleven_published_tests_with_their_loads() -> None:
    suite = load_suite("arena")
    assert [t.id for t in suite.tests] == ARENA_IDS
    labels = {(p.workload, p.label) for p in suite.points()}
    assert ("01-chat", "c10") in labels and ("02-rag-8k", "c20") in labels
    assert ("05-big-context", "pp25000-c10") in labels and ("06-concurrency-stress", "c20") in labels
    peak = [p for p in suite.points() if p.workload == "10-monday-peak"]
    assert len(peak) == 1 and peak[0].open is not None
    assert (peak[0].open.rate, peak[0].open.burstiness, peak[0].open.requests, peak[0].open.max_concurrency) == \
        (1.5, 1.0, 300, 25)
    sweep = [p for p in suite.points() if p.workload == "11-rate-sweep"]
    assert [p.label for p in sweep] == ["0.1rps", "0.2rps", "0.3rps", "0.5rps", "0.7rps", "1rps"]
    # each step: >= 100 requests AND >= 250 s of arrivals
    schedule = sweep[1].open.schedule()
    assert len(schedule) >= 100 and schedule[-1] >= 240
    big = [p for p in suite.points() if p.workload == "05-big-context"]
    assert sorted({p.shape.prompt for p in big}) == [4096, 8192, 16384, 25000]


def test_default_is_todays_sweep() -> None:
    (test,) = load_suite("default").tests
    assert (test.shape.prompt, test.shape.output) == (1024, 128)
    assert [p.concurrency for p in load_suite("default").points()] == [1, 2, 4, 8, 16, 32, 64]


def test_only_and_merge() -> None:
    suite = load_suites("arena,default", only=["01-chat", "default"])
    assert [t.id for t in suite.tests] == ["01-chat", "default"]
    with pytest.raises(ConfigError, match="no test '99-nope'"):
        load_suites("arena", only=["99-nope"])


def test_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ntests:\n  - id: a\n    shape: {kind: fixed, prompt: 10, output: 5, oops: 1}\n"
                    "    load: {mode: open, rate: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    text = str(info.value)
    assert "mine.yaml" in text and "tests.0.shape.fixed.oops" in text and "requests" in text
    with pytest.raises(ConfigError, match="no-such-suite"):
        load_suite("no-such-suite")


def test_merging_suites_with_the_same_test_twice_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="twice: 01-chat"):
        load_suites("arena,arena")


def test_open_load_labels_and_scaling() -> None:
    from bench.workload import ClosedLoad, OpenLoad, parse_load

    load = OpenLoad(1.5, 1.0, requests=300, max_concurrency=25)
    assert load.label == "1.5rps" and parse_load("1.5rps").rate == 1.5 and parse_load("c4") == ClosedLoad(4)
    fast = OpenLoad(0.3, 0.7, requests=10, duration_s=250).scaled(50)
    assert (fast.rate, fast.duration_s, fast.requests) == (15.0, 5.0, 10)
    # the same arrivals, 50x faster
    slow_times = OpenLoad(0.3, 0.7, requests=10, duration_s=250).schedule()
    assert [t * 50 for t in fast.schedule()] == pytest.approx(list(slow_times))
    with pytest.raises(ConfigError):
        OpenLoad(1.0)  # neither a number of requests nor a duration
    with pytest.raises(ConfigError, match="1.5rps"):
        parse_load("fast")
