"""How topologies are called on screen, in which order and colour they are shown: the registry's
(topology/registry.py) presentation, in the words reports use."""

from __future__ import annotations

from collections.abc import Iterable

from topology.registry import BASELINE, colours, display_name, executor_pairs, executor_partner, ordered

BASELINE_TOPOLOGY = BASELINE


def ordered_topologies(topologies: Iterable[str]) -> list[str]:
    """Registered topologies in the registry's order first, then the others alphabetically."""
    return ordered(topologies)


def topology_colours(topologies: Iterable[str]) -> dict[str, str]:
    """Registered topologies keep their colour in every report (Shuffle is orange even when tp2-ray failed)."""
    return colours(topologies)


def ray_pairs(topologies: Iterable[str]) -> list[tuple[str, str]]:
    """(ray, no-ray) pairs that run one layout with two executors: tp2-ray with tp2-mp, tp4-ray with tp4-mp."""
    return executor_pairs(topologies)


__all__ = ["BASELINE_TOPOLOGY", "display_name", "executor_partner", "ordered_topologies", "ray_pairs",
           "topology_colours"]
