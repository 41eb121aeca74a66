"""The session's test order around the shared vLLM server (no vLLM needed)."""

from __future__ import annotations

from types import SimpleNamespace

from support.fixtures import run_solo_server_tests_together


def item(name: str, *fixtures: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, fixturenames=list(fixtures))


def test_solo_server_tests_move_next_to_the_first_one_and_the_rest_keeps_its_order() -> None:
    items = [
        item("bench_other"),
        item("bench_solo", "vllm_solo"),
        item("bench_twin", "twin"),
        item("cluster_stops_it", "vllm_servers"),
        item("integration_solo_a", "vllm_solo", "vllm_servers"),
        item("integration_solo_b", "vllm_solo"),
        item("integration_tp2", "vllm_servers"),
    ]
    run_solo_server_tests_together(items)  # type: ignore[arg-type]
    assert [i.name for i in items] == [
        "bench_other",
        "bench_solo",
        "integration_solo_a",
        "integration_solo_b",
        "bench_twin",
        "cluster_stops_it",
        "integration_tp2",
    ]


def test_without_solo_server_tests_nothing_moves() -> None:
    items = [item("a", "twin"), item("b"), item("c", "vllm_servers")]
    before = list(items)
    run_solo_server_tests_together(items)  # type: ignore[arg-type]
    assert items == before

