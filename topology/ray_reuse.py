"""Keeping a Ray cluster up between consecutive Ray topologies of a sweep: what the plans allow. Pure.

A sweep of tp2-ray then tp4-ray would start `ray start --head` and a worker on node2 twice. When the second
plan would start exactly the Ray processes the first one left running, only the engine needs to change:

    tp2-ray   ray-head(node1)  ray-worker-node2                                       engine
    tp4-ray   ray-head(node1)  ray-worker-node2  ray-worker-node3  ray-worker-node4  engine
              `------------ kept up ----------'  `---- started in addition ------'

The plan allows it (`ray_reuse_blocker` returns None) when, for the topology run just before:
- both plans run a Ray cluster (a ray-head step), with the head on the same node;
- every node of the earlier Ray cluster is a node of the later one (the cluster may grow, never shrink:
  Ray places an engine's ranks on any alive node, so a larger cluster than the layout's would let a TP=2
  engine run on nodes outside its layout; a worker taken out is not gone from Ray at once either);
- on each of those nodes the later plan's Ray process is the very process that runs: the same role, command,
  environment (fast link, recipe and node env, Ray's memory-monitor switch), files and way to stop it, once
  the topology's own name (in container names and env-file paths) is set aside.
Readiness probes may differ (a worker waits for as many nodes as its plan's layout has): the kept processes
passed theirs, the added workers wait for the later plan's count.

`ray_run_order` puts Ray topologies next to each other, smaller clusters first, where a sweep's order is
free; `plan_ray_reuse` decides, for each topology in run order, whether it keeps its predecessor's cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from topology.plan import LaunchPlan, Step
from topology.registry import parse_topology

RAY_ROLES = ("ray-head", "ray-worker")


@dataclass(frozen=True)
class RayReuse:
    """`topology` keeps the Ray cluster `source` started: `kept` steps are not started again, `added` are."""

    topology: str
    source: str
    kept: tuple[str, ...]  # step names, in start order (ray-head first)
    added: tuple[str, ...]  # Ray workers the later plan starts on nodes the earlier cluster did not have

    def describe(self) -> str:
        added = f"; starts {', '.join(self.added)} in addition" if self.added else ""
        return f"Ray cluster kept up from {self.source}: {', '.join(self.kept)} not started again{added}"


def ray_steps(plan: LaunchPlan) -> dict[str, Step]:
    """The plan's Ray processes by node name (none: not a Ray topology)."""
    return {step.node: step for step in plan.steps() if step.role in RAY_ROLES}


def _process_identity(step: Step, topology: str) -> Any:
    """What makes two Ray steps the same running process: everything but the readiness probe, with the
    topology's name (part of container names and env-file paths) replaced by a placeholder."""
    dumped = step.model_dump(mode="json", exclude={"probe"})

    def neutral(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(topology, "{topology}")
        if isinstance(value, dict):
            return {neutral(key): neutral(item) for key, item in value.items()}
        if isinstance(value, list):
            return [neutral(item) for item in value]
        return value

    return neutral(dumped)


def ray_reuse_blocker(earlier: LaunchPlan, later: LaunchPlan) -> str | None:
    """Why `later` cannot keep the Ray cluster `earlier` leaves up, or None when it can (module docstring)."""
    before, after = ray_steps(earlier), ray_steps(later)
    if not before or not after:
        return f"{earlier.topology if not before else later.topology} runs no Ray cluster"
    if earlier.cluster != later.cluster:
        return f"different clusters ({earlier.cluster}, {later.cluster})"
    head_before = next(node for node, step in before.items() if step.role == "ray-head")
    head_after = next(node for node, step in after.items() if step.role == "ray-head")
    if head_before != head_after:
        return f"the Ray head moves from node {head_before} to node {head_after}"
    extra = [node for node in before if node not in after]
    if extra:
        return (f"{later.topology} uses fewer Ray nodes: node(s) {', '.join(extra)} would stay in its Ray cluster, "
                "where its engine could place ranks outside its layout")
    for node, step in before.items():
        if _process_identity(step, earlier.topology) != _process_identity(after[node], later.topology):
            return f"the Ray process on node {node} differs ({step.name}: command, env, files or stop)"
    return None


def plan_ray_reuse(plans: Sequence[LaunchPlan]) -> dict[str, RayReuse]:
    """For plans in run order: the topologies that keep the Ray cluster of the one run just before them."""
    reuse: dict[str, RayReuse] = {}
    for earlier, later in zip(plans, plans[1:]):
        if ray_reuse_blocker(earlier, later) is None:
            before = ray_steps(earlier)
            kept = tuple(step.name for step in later.steps() if step.role in RAY_ROLES and step.node in before)
            added = tuple(step.name for step in later.steps() if step.role in RAY_ROLES and step.node not in before)
            reuse[later.topology] = RayReuse(later.topology, earlier.topology, kept, added)
    return reuse


def kept_for_next(reuse: dict[str, RayReuse], topology: str) -> RayReuse | None:
    """The reuse of the topology that keeps `topology`'s Ray cluster, if one does."""
    return next((r for r in reuse.values() if r.source == topology), None)


def ray_run_order(names: Sequence[str]) -> list[str]:
    """`names` in their order, except that every Ray topology runs right after the first one, smaller
    clusters first (equal sizes in their given order), so consecutive Ray topologies can keep one cluster
    that grows. Without two Ray topologies (the default two-node sweep) the order is unchanged."""
    ray = [name for name in names if parse_topology(name).executor == "ray"]
    if len(ray) < 2:
        return list(names)
    grouped = sorted(ray, key=lambda name: parse_topology(name).nodes)
    order: list[str] = []
    for name in names:
        if name == ray[0]:
            order.extend(grouped)
        elif name not in ray:
            order.append(name)
    return order


def reuse_notes(plans: Sequence[LaunchPlan], reuse: dict[str, RayReuse]) -> dict[str, list[str]]:
    """The dry run's lines per topology: what it keeps from its predecessor, what it leaves up for its
    successor, and why two consecutive Ray topologies do not share a cluster."""
    notes: dict[str, list[str]] = {plan.topology: [] for plan in plans}
    for earlier, later in zip(plans, plans[1:]):
        kept = reuse.get(later.topology)
        if kept is not None:
            notes[later.topology].append(kept.describe())
            notes[earlier.topology].append(f"teardown leaves {', '.join(kept.kept)} running for {later.topology} "
                                           "(stopped with the rest if anything fails)")
        elif ray_steps(earlier) and ray_steps(later):
            notes[later.topology].append(f"Ray cluster of {earlier.topology} not kept: "
                                         f"{ray_reuse_blocker(earlier, later)}")
    return notes
