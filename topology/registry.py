"""The topology registry: every layout topo knows, as plain data. The planner (topology/kinds.py), the
twin's predictor (twin/predict.py) and the reports (reports/names.py) all read their topologies here.

A topology is `replicas` independent engines, each tensor-parallel over `tensor_parallel` nodes with one
`executor`, behind a router with one `router` strategy when there is more than one replica:

    name              replicas  TP  executor  router          layout
    solo                     1   1  uni       -               solo
    tp2-mp                   1   2  mp        -               tp2
    tp2-ray                  1   2  ray       -               tp2
    2x-solo-shuffle          2   1  uni       simple-shuffle  2x-solo-shuffle
    2x-tp2-shuffle           2   2  mp        simple-shuffle  2x-tp2-shuffle

The name is derived from the fields, never the other way round except in `parse_topology`. The *layout*
is a topology without its executor: tp2-mp and tp2-ray are one layout run two ways, so reports compare
layouts and executors without taking names apart. Registered topologies carry a display name and a
colour; any other well-formed name (tp8-mp, 3x-solo-shuffle) still parses, and is shown as it is named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from common.errors import PlanError

Executor = Literal["uni", "mp", "ray"]  # uni: one process, TP=1; mp: PyTorch distributed; ray: a Ray cluster
RouterStrategy = Literal["simple-shuffle"]  # LiteLLM's routing_strategy values topo can plan

# How a router strategy is spelled at the end of a topology name (2x-solo-shuffle).
ROUTER_NAME_SUFFIX: dict[RouterStrategy, str] = {"simple-shuffle": "shuffle"}


@dataclass(frozen=True)
class Layout:
    """Engines, their size and the router: what stays the same when only the executor changes."""

    replicas: int
    tensor_parallel: int
    router: RouterStrategy | None

    @property
    def name(self) -> str:
        if self.replicas == 1:
            return "solo" if self.tensor_parallel == 1 else f"tp{self.tensor_parallel}"
        engine = "solo" if self.tensor_parallel == 1 else f"tp{self.tensor_parallel}"
        assert self.router is not None
        return f"{self.replicas}x-{engine}-{ROUTER_NAME_SUFFIX[self.router]}"

    @property
    def display_name(self) -> str:
        """The display name of the layout's plain run (Cluster TP=2 for tp2-mp and tp2-ray), else the name."""
        for known in REGISTRY:
            if known.layout == self and known.executor != "ray":
                return known.display_name
        return self.name


@dataclass(frozen=True)
class Topology:
    """One topology. `display` and `colour` are presentation only: they do not take part in equality."""

    replicas: int = 1
    tensor_parallel: int = 1
    executor: Executor = "uni"
    router: RouterStrategy | None = None
    display: str | None = field(default=None, compare=False)
    colour: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.tensor_parallel < 1:
            raise PlanError(f"a topology needs at least one replica of at least one node (got {self!r})")
        if (self.tensor_parallel == 1) != (self.executor == "uni"):
            raise PlanError(
                f"executor {self.executor!r} with tensor-parallel size {self.tensor_parallel}: TP=1 runs "
                "'uni', TP>1 runs 'mp' or 'ray'"
            )
        if (self.replicas > 1) != (self.router is not None):
            raise PlanError(f"{self.replicas} replica(s) with router {self.router!r}: a router exactly when replicas > 1")
        if self.replicas > 1 and self.executor == "ray":
            raise PlanError("replicas over Ray are not supported: each would need its own Ray cluster")
        if self.executor not in get_args(Executor):
            raise PlanError(f"unknown executor {self.executor!r}; known: {', '.join(get_args(Executor))}")
        if self.router is not None and self.router not in ROUTER_NAME_SUFFIX:
            raise PlanError(f"unknown router strategy {self.router!r}; known: {', '.join(ROUTER_NAME_SUFFIX)}")

    @property
    def layout(self) -> Layout:
        return Layout(self.replicas, self.tensor_parallel, self.router)

    @property
    def name(self) -> str:
        if self.replicas == 1 and self.tensor_parallel > 1:
            return f"tp{self.tensor_parallel}-{self.executor}"
        return self.layout.name  # routed replicas run mp (the only executor they support): not in the name

    @property
    def nodes(self) -> int:
        return self.replicas * self.tensor_parallel

    @property
    def routed(self) -> bool:
        return self.replicas > 1

    @property
    def display_name(self) -> str:
        return self.display or self.name


# The registered topologies, in the order reports show them and with the colour each keeps in every chart
# (Shuffle stays orange when tp2-ray failed). The first four are the published two-node study.
REGISTRY: tuple[Topology, ...] = (
    Topology(display="Solo", colour="#1f77b4"),
    Topology(tensor_parallel=2, executor="mp", display="Cluster TP=2", colour="#d62728"),
    Topology(tensor_parallel=2, executor="ray", display="Cluster TP=2 (Ray)", colour="#2ca02c"),
    Topology(replicas=2, router="simple-shuffle", display="Shuffle", colour="#ff7f0e"),
    Topology(tensor_parallel=4, executor="mp", display="Cluster TP=4", colour="#9467bd"),
    Topology(tensor_parallel=4, executor="ray", display="Cluster TP=4 (Ray)", colour="#8c564b"),
    Topology(replicas=2, tensor_parallel=2, executor="mp", router="simple-shuffle", display="2× TP=2 Shuffle",
             colour="#e377c2"),
    Topology(replicas=4, router="simple-shuffle", display="4× Shuffle", colour="#17becf"),
)
REGISTERED: dict[str, Topology] = {topology.name: topology for topology in REGISTRY}

# Colours for topologies outside the registry, taken in display order.
SPARE_COLOURS: tuple[str, ...] = ("#7f7f7f", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896")

BASELINE = "solo"  # every comparison is also shown against one engine on one node

# The four topologies of the published study, in the order a sweep runs them.
STUDY_TOPOLOGIES: tuple[str, ...] = ("solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle")

# The layouts worth comparing on a number of nodes (`topo predict --nodes N`); solo is always the baseline.
COMPARED_ON_NODES: dict[int, tuple[str, ...]] = {
    1: ("solo",),
    2: STUDY_TOPOLOGIES,
    4: ("solo", "tp2-mp", "tp4-mp", "tp4-ray", "2x-tp2-shuffle", "4x-solo-shuffle"),
}

_NAME_FORMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^tp(?P<tp>\d+)-(?P<executor>mp|ray)$"), "one engine over N >= 2 nodes: tpN-mp, tpN-ray"),
    (re.compile(r"^(?P<replicas>\d+)x-solo-(?P<router>[a-z-]+)$"), "N >= 2 single-node engines: Nx-solo-shuffle"),
    (re.compile(r"^(?P<replicas>\d+)x-tp(?P<tp>\d+)-(?P<router>[a-z-]+)$"),
     "N >= 2 engines of TP=K >= 2 (mp): Nx-tpK-shuffle"),
)
_ROUTER_BY_SUFFIX: dict[str, RouterStrategy] = {suffix: strategy for strategy, suffix in ROUTER_NAME_SUFFIX.items()}


def _unknown(name: str) -> PlanError:
    forms = "; ".join(description for _, description in _NAME_FORMS)
    return PlanError(f"unknown topology {name!r}: expected solo; {forms} (registered: {', '.join(REGISTERED)})")


def parse_topology(name: str) -> Topology:
    """A topology name -> its topology: the registered one (with display name and colour) or a new size."""
    if name in REGISTERED:
        return REGISTERED[name]
    for pattern, _ in _NAME_FORMS:
        match = pattern.match(name)
        if not match:
            continue
        parts = match.groupdict()
        tensor_parallel = int(parts.get("tp") or 1)
        replicas = int(parts.get("replicas") or 1)
        router = _ROUTER_BY_SUFFIX.get(parts["router"]) if "router" in parts else None
        if ("router" in parts and router is None) or tensor_parallel < 1 or replicas < 1:
            break
        if (parts.get("tp") and tensor_parallel < 2) or (parts.get("replicas") and replicas < 2):
            break
        executor: Executor = parts.get("executor") or ("uni" if tensor_parallel == 1 else "mp")  # type: ignore[assignment]
        return Topology(replicas=replicas, tensor_parallel=tensor_parallel, executor=executor, router=router)
    raise _unknown(name)


def topology_of(name: str) -> Topology | None:
    """The topology a stored name stands for, or None when it is not a topology name at all."""
    try:
        return parse_topology(name)
    except PlanError:
        return None


def display_name(name: str) -> str:
    known = REGISTERED.get(name)
    return known.display_name if known else name


def ordered(names: Iterable[str]) -> list[str]:
    """Registered topologies in registry order first, then the others alphabetically (stable across runs)."""
    unique = set(names)
    known = [name for name in REGISTERED if name in unique]
    return known + sorted(unique - set(known))


def colours(names: Iterable[str]) -> dict[str, str]:
    """Each topology's chart colour: registered ones keep theirs, others take the spare ones in order."""
    shown = ordered(names)
    others = [name for name in shown if name not in REGISTERED]
    found = {name: REGISTERED[name].colour for name in shown if name in REGISTERED}
    spare = {name: SPARE_COLOURS[index % len(SPARE_COLOURS)] for index, name in enumerate(others)}
    return {name: found.get(name) or spare[name] for name in shown}


def executor_partner(name: str) -> str | None:
    """The same layout run with the other executor (tp2-mp <-> tp2-ray), when that is a topology at all."""
    topology = topology_of(name)
    if topology is None or topology.executor == "uni":
        return None
    other: Executor = "ray" if topology.executor == "mp" else "mp"
    try:
        return replace(topology, executor=other, display=None, colour=None).name
    except PlanError:  # e.g. replicas over Ray
        return None


def executor_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """(ray, mp) pairs of present topologies that share a layout: tp2-ray with tp2-mp, tp4-ray with tp4-mp."""
    present = ordered(names)
    return [(name, partner) for name in present
            if (topology := topology_of(name)) is not None and topology.executor == "ray"
            and (partner := executor_partner(name)) in present]


def layout_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Layout name -> the present topologies that run it (in display order): {'tp2': ['tp2-mp', 'tp2-ray']}.
    Names that are not topologies form a group of their own."""
    groups: dict[str, list[str]] = {}
    for name in ordered(names):
        topology = topology_of(name)
        groups.setdefault(topology.layout.name if topology else name, []).append(name)
    return groups


def compared_on_nodes(nodes: int) -> list[str]:
    try:
        return list(COMPARED_ON_NODES[nodes])
    except KeyError:
        raise PlanError(
            f"--nodes {nodes}: topo compares layouts on {', '.join(map(str, COMPARED_ON_NODES))} nodes"
        ) from None
