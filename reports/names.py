"""How topologies are called on screen, in which order and colour they are shown: the registry's
(topology/registry.py) presentation, in the words reports use."""

from __future__ import annotations

from collections.abc import Iterable

from topology.registry import (
    BASELINE,
    colours,
    display_name,
    executor_pairs,
    executor_partner,
    layout_groups,
    ordered,
    topology_of,
)

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


def layouts(topologies: Iterable[str]) -> dict[str, list[str]]:
    """Layout -> its present topologies (executor variants), both in display order: the winner tables'
    columns. The executor is a choice within a layout, compared in its own table."""
    return layout_groups(topologies)


def layout_of(topology: str) -> str:
    """`tp2-mp` and `tp2-ray` -> `tp2`; a name that is not a topology is its own layout."""
    parsed = topology_of(topology)
    return parsed.layout.name if parsed else topology


def layout_display_name(topology: str) -> str:
    """How the layout a topology runs is called: `Cluster TP=2` for tp2-mp and tp2-ray."""
    parsed = topology_of(topology)
    return parsed.layout.display_name if parsed else display_name(topology)


__all__ = ["BASELINE_TOPOLOGY", "display_name", "executor_partner", "layout_display_name", "layout_of", "layouts",
           "ordered_topologies", "ray_pairs", "topology_colours"]
