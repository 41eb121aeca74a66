"""A Ray cluster kept up between tp2-ray and tp4-ray, on in-memory nodes: started once, adopted, and
stopped on every way out (a clean end, a failed next bring-up, a topology that never came, a failure of the
topology that was to keep it)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from collections.abc import AsyncIterator, Mapping

import httpx
import pytest

from cluster.bringup import BringUpSettings, NodeAccess, bring_up
from cluster.connector import Completed
from cluster.fake import FakeBehaviour, FakeConnector
from cluster.ray_keep import RayKeeper
from common.errors import BringUpError
from topology.inventory import CONTROLLER, load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.plan import CommandProbe, LaunchPlan
from topology.ray_reuse import plan_ray_reuse
from topology.recipe import load_recipe

FAST = BringUpSettings(poll_s=0.01, log_every_s=0.0, prove_s=0.1, stop_grace_s=0.05)


class FourNodes:
    """local-twin-4's plans on fake nodes: engines listen on their port, `ray status` shows four nodes."""

    def __init__(self) -> None:
        self.cluster = load_cluster("local-twin-4")
        recipe, secrets = load_recipe("tiny"), PlanSecrets.generate()
        recipe = recipe.model_copy(update={"max_model_len": {**recipe.max_model_len, "tp3": 2048}})  # tp3-ray too
        self.plans: dict[str, LaunchPlan] = {
            name: plan(parse_topology(name), self.cluster, recipe, secrets=secrets) for name in ("tp2-ray", "tp3-ray", "tp4-ray")
        }
        self.fakes = {node.name: FakeConnector(node.name) for node in self.cluster.nodes}
        self.fakes[CONTROLLER] = FakeConnector(CONTROLLER)
        for node in self.cluster.nodes:
            fake = self.fakes[node.name]
            fake.on_start(f"--port {node.engine.port}", FakeBehaviour(ports=(node.engine.port,)))
            fake.on_start("--head", FakeBehaviour(ports=(node.ray.port,)))
        probe = next(s.probe for s in self.plans["tp4-ray"].steps() if isinstance(s.probe, CommandProbe))
        for fake in self.fakes.values():
            fake.script(probe.argv[:2], Completed(0, "".join(f" 1 node_{i:02x}\n" for i in range(4)), ""))
        workdirs = {node.name: node.workdir for node in self.cluster.nodes}
        self.access = {name: NodeAccess(name, fake, workdirs.get(name, "/tmp/c")) for name, fake in self.fakes.items()}

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            if any(request.url.port in p.listening and p.alive for f in self.fakes.values() for p in f.processes.values()):
                return httpx.Response(200, json={})
            raise httpx.ConnectError("refused", request=request)

        return httpx.MockTransport(handler)

    def keeper(self, *names: str) -> RayKeeper:
        order = [self.plans[name] for name in names or ("tp2-ray", "tp4-ray")]
        @asynccontextmanager
        async def fake_nodes() -> AsyncIterator[Mapping[str, NodeAccess]]:
            yield self.access

        return RayKeeper(self.cluster, self.plans, plan_ray_reuse(order), progress=_Quiet(), settings=FAST,
                         open_nodes=fake_nodes)

    async def up(self, keeper: RayKeeper, topology: str) -> None:
        handover = await keeper.handover(topology)
        async with bring_up(self.plans[topology], self.access, settings=FAST, http_transport=self.transport(),
                            handover=handover):
            pass

    def started(self, match: str) -> int:
        return sum(1 for f in self.fakes.values() for c in f.calls if c.kind == "start" and match in " ".join(c.argv))

    def alive(self) -> list[str]:
        return [" ".join(p.argv) for f in self.fakes.values() for p in f.processes.values() if p.alive]

    def pidfiles(self) -> list[str]:
        return [path for f in self.fakes.values() for path in f.pidfiles()]


class _Quiet:
    def event(self, step: str | None, message: str, *, log_line: bool = False) -> None:
        return None


async def test_tp4_ray_adopts_the_cluster_tp2_ray_kept_up_and_nothing_is_left() -> None:
    nodes = FourNodes()
    keeper = nodes.keeper()
    await nodes.up(keeper, "tp2-ray")
    # the engine is gone, the Ray head and node2's worker still run
    alive = nodes.alive()
    assert len(alive) == 2 and sum("--head" in a for a in alive) == 1 and not any(" serve " in a for a in alive)
    await nodes.up(keeper, "tp4-ray")
    await keeper.release()
    assert nodes.started("--head") == 1  # `ray start --head` once for both topologies
    assert nodes.started("--address") == 3  # node2's worker once, node3's and node4's for tp4-ray
    assert nodes.started("serve") == 2  # one engine per topology
    assert nodes.alive() == [] and nodes.pidfiles() == []


async def test_a_failed_bring_up_on_the_kept_cluster_stops_the_adopted_processes_too() -> None:
    nodes = FourNodes()
    nodes.fakes["node1"].on_start("-tp 4", FakeBehaviour(exits_at_start=True, log="boom\n"))
    keeper = nodes.keeper()
    await nodes.up(keeper, "tp2-ray")
    with pytest.raises(BringUpError, match="boom"):
        await nodes.up(keeper, "tp4-ray")
    await keeper.release()  # nothing left to release: the failed bring-up stopped it all
    assert nodes.alive() == [] and nodes.pidfiles() == []


async def test_a_kept_cluster_nobody_adopts_is_stopped_by_release() -> None:
    nodes = FourNodes()
    keeper = nodes.keeper()
    await nodes.up(keeper, "tp2-ray")
    assert len(nodes.alive()) == 2
    await keeper.release()  # e.g. tp4-ray had nothing to measure on a resume, or a SIGTERM came
    assert nodes.alive() == [] and nodes.pidfiles() == []


async def test_a_topology_that_fails_while_up_keeps_nothing() -> None:
    nodes = FourNodes()
    keeper = nodes.keeper()
    handover = await keeper.handover("tp2-ray")
    with pytest.raises(KeyError):  # a hang the watchdog called, a dead rank: the body raises
        async with bring_up(nodes.plans["tp2-ray"], nodes.access, settings=FAST, http_transport=nodes.transport(),
                            handover=handover):
            raise KeyError("hung")
    assert nodes.alive() == []
    await nodes.up(keeper, "tp4-ray")  # starts its own Ray cluster
    assert nodes.started("--head") == 2 and nodes.alive() == [] and nodes.pidfiles() == []


async def test_a_chain_of_three_ray_topologies_starts_the_head_once() -> None:
    nodes = FourNodes()
    keeper = nodes.keeper("tp2-ray", "tp3-ray", "tp4-ray")
    for topology in ("tp2-ray", "tp3-ray", "tp4-ray"):
        await nodes.up(keeper, topology)
    await keeper.release()
    assert nodes.started("--head") == 1 and nodes.started("--address") == 3 and nodes.started("serve") == 3
    assert keeper.adopted == {"tp3-ray": "tp2-ray", "tp4-ray": "tp3-ray"}
    assert nodes.alive() == [] and nodes.pidfiles() == []


async def test_a_kept_cluster_that_lost_a_process_is_replaced_not_adopted() -> None:
    nodes = FourNodes()
    keeper = nodes.keeper()
    await nodes.up(keeper, "tp2-ray")
    nodes.fakes["node2"].exit_process("--address")  # node2's Ray worker dies between the topologies
    await nodes.up(keeper, "tp4-ray")
    await keeper.release()
    assert nodes.started("--head") == 2 and keeper.adopted == {}  # tp4-ray started a Ray cluster of its own
    assert nodes.alive() == [] and nodes.pidfiles() == []
