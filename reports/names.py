"""How topologies are called on screen, and in which order they are shown."""

from __future__ import annotations

from collections.abc import Iterable

# The names of the published study; any other topology (tp4-*, 2x-tp2-*, ...) is shown as it is named.
DISPLAY_NAMES: dict[str, str] = {
    "solo": "Solo",
    "tp2-mp": "Cluster TP=2",
    "tp2-ray": "Cluster TP=2 (Ray)",
    "2x-solo-shuffle": "Shuffle",
}

BASELINE_TOPOLOGY = "solo"


def display_name(topology: str) -> str:
    return DISPLAY_NAMES.get(topology, topology)


def ordered_topologies(topologies: Iterable[str]) -> list[str]:
    """Known topologies in the study's order first, then the others alphabetically (stable across runs)."""
    unique = set(topologies)
    known = [name for name in DISPLAY_NAMES if name in unique]
    return known + sorted(unique - set(known))


def ray_pairs(topologies: Iterable[str]) -> list[tuple[str, str]]:
    """(ray, no-ray) pairs that differ only in the executor: `X-ray` with `X-mp` (tp2-ray / tp2-mp, ...)."""
    present = set(topologies)
    pairs = []
    for name in ordered_topologies(present):
        if name.endswith("-ray"):
            partner = name[: -len("-ray")] + "-mp"
            if partner in present:
                pairs.append((name, partner))
    return pairs


# The executor is a choice within a layout, not a layout: `X-mp` and `X-ray` run the same engines on the same
# nodes. (Derived from the names until the topology registry carries a layout identity.)
EXECUTOR_SUFFIXES = ("-mp", "-ray")


def layout_of(topology: str) -> str:
    """`tp2-mp` and `tp2-ray` -> `tp2`; a topology without an executor variant is its own layout."""
    for suffix in EXECUTOR_SUFFIXES:
        if topology.endswith(suffix):
            return topology[: -len(suffix)]
    return topology


def layout_name(layout: str) -> str:
    """A layout as the study names it: the no-Ray variant's name (`Cluster TP=2`), else the layout key."""
    for suffix in EXECUTOR_SUFFIXES:
        if layout + suffix in DISPLAY_NAMES:
            return DISPLAY_NAMES[layout + suffix]
    return display_name(layout)


def layouts(topologies: Iterable[str]) -> dict[str, list[str]]:
    """Layout -> its measured topologies (executor variants), both in display order."""
    grouped: dict[str, list[str]] = {}
    for topology in ordered_topologies(topologies):
        grouped.setdefault(layout_of(topology), []).append(topology)
    return grouped
