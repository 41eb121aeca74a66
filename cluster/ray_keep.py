"""Holding a Ray cluster between two bring-ups of a sweep (the decision is topology/ray_reuse.py's).

    keeper = RayKeeper(cluster, plans_by_topology, plan_ray_reuse(plans_in_run_order), progress)
    try:
        for each topology in run order:
            handover = await keeper.handover(topology)   # adopts what the previous one kept, if allowed
            async with bring_up(plan, nodes, handover=handover): ...   # may keep some up for the next
    finally:
        await keeper.release_at_end()                     # nothing kept outlives the sweep

A kept cluster that lost a process meanwhile (one `ps` per node before adopting) is not adopted: the rest
is stopped and the bring-up starts a Ray cluster of its own. What is kept and not adopted by the very next
bring-up (it failed before starting, had nothing to measure on a resume, or is not allowed to) is stopped
by `handover` before that bring-up's pre-flight, and by `release` at the end, on every path out (failure,
SIGTERM, Ctrl-C): as `bring_up`'s own teardown, shielded from cancellation and proven gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager

from cluster.bringup import (
    BringUpProgress,
    BringUpSettings,
    Handover,
    KeptProcesses,
    NodeAccess,
    open_cluster,
    stop_kept,
)
from cluster.supervise import live_groups
from common.errors import TeardownError, TopoError
from topology.inventory import Cluster
from topology.plan import LaunchPlan
from topology.ray_reuse import RayReuse, kept_for_next


class RayKeeper:
    def __init__(self, cluster: Cluster, plans: Mapping[str, LaunchPlan], reuse: Mapping[str, RayReuse],
                 progress: BringUpProgress, settings: BringUpSettings | None = None,
                 open_nodes: Callable[[], AbstractAsyncContextManager[Mapping[str, NodeAccess]]] | None = None) -> None:
        self.cluster = cluster
        # how to reach the nodes to stop what is kept (the sweep's own connectors; in-memory ones in tests)
        self.open_nodes = open_nodes or (lambda: open_cluster(cluster))
        self.plans = dict(plans)
        self.reuse = dict(reuse)
        self.progress = progress
        self.settings = settings
        self.kept: KeptProcesses | None = None
        self._last: Handover | None = None  # the latest bring-up's: what it kept, once its block is over
        self.adopted: dict[str, str] = {}  # topology -> the topology whose Ray cluster it ran on

    async def handover(self, topology: str) -> Handover:
        """What `topology`'s bring-up adopts and keeps. A kept cluster it may not adopt is stopped first."""
        self._collect()
        adopt = None
        allowed = self.reuse.get(topology)
        lost = await self._lost(self.kept) if self.kept is not None else []
        if lost and self.kept is not None:  # the rest is stopped; the bring-up starts a Ray cluster of its own
            self.progress.event(None, f"the Ray cluster kept up from {self.kept.source} lost {', '.join(lost)}")
        if self.kept is not None and allowed is not None and allowed.source == self.kept.source and not lost:
            adopt, self.kept = self.kept, None
            self.adopted[topology] = adopt.source
            self.progress.event(None, allowed.describe())
        else:
            await self.release()
        following = kept_for_next(self.reuse, topology)
        self._last = Handover(adopt=adopt, keep=frozenset(following.kept) if following is not None else frozenset())
        return self._last

    async def _lost(self, kept: KeptProcesses) -> list[str]:
        """The kept processes that are no longer alive (one `ps` per node)."""
        lost = []
        async with self.open_nodes() as nodes:
            for node in sorted({process.node for process in kept.processes.values()}):
                alive = await live_groups(nodes[node].connector)
                lost += [name for name, p in kept.processes.items() if p.node == node and p.pgid not in alive]
        return lost

    def _collect(self) -> None:
        """What the latest bring-up kept up (nothing after a failure: it tore everything down)."""
        if self._last is not None and self._last.kept is not None:
            self.kept, self._last.kept = self._last.kept, None

    async def release(self) -> None:
        """Stop what is kept, if anything: TeardownError when it cannot be proven gone."""
        self._collect()
        kept, self.kept = self.kept, None
        if kept is None:
            return
        self.progress.event(None, f"stopping the Ray cluster kept up from {kept.source}")
        async with self.open_nodes() as nodes:
            problems = await stop_kept(kept, self.plans[kept.source], nodes, progress=self.progress,
                                       settings=self.settings)
        if problems:
            raise TeardownError("stopping the kept Ray cluster left something behind:\n"
                                + "\n".join(f"- {p}" for p in problems))

    async def release_at_end(self) -> tuple[str | None, bool]:
        """`release` for a `finally`: never raises. (what could not be proven stopped or None, whether a
        cancellation came while stopping: the stop itself is shielded and finished first)."""
        try:
            await self.release()
        except TopoError as exc:
            return str(exc), False
        except asyncio.CancelledError:
            return None, True
        return None, False
