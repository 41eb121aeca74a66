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
