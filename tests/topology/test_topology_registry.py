"""The topology registry: names derived from fields, layouts shared across executors, every topology that
`topo predict --nodes N` compares is plannable on a local twin cluster of N nodes, and the planner, the
twin's predictor and the reports all read the same entries."""

from __future__ import annotations

import pytest

from common.errors import ConfigError, PlanError
from reports.names import display_name, ordered_topologies, topology_colours
from topology.inventory import load_cluster
from topology.kinds import PlanSecrets, plan
from topology.recipe import load_recipe
from topology.registry import (
    COMPARED_ON_NODES,
    REGISTRY,
    Topology,
    executor_partner,
    layout_groups,
    parse_topology,
)
from twin.predict import topologies_for_nodes, topology_model


def test_each_registered_topology_round_trips_and_keeps_its_own_name_and_colour():
    for topology in REGISTRY:
        assert parse_topology(topology.name) is topology
        assert topology_model(topology.name) is topology  # the twin predicts the registry's entry
    assert len({t.name for t in REGISTRY}) == len({t.display_name for t in REGISTRY}) == len(REGISTRY)
    assert len({t.colour for t in REGISTRY}) == len(REGISTRY)
    assert [display_name(t.name) for t in REGISTRY] == [t.display_name for t in REGISTRY]
    assert ordered_topologies(reversed([t.name for t in REGISTRY])) == [t.name for t in REGISTRY]
    assert topology_colours(["tp2-ray"]) == {"tp2-ray": parse_topology("tp2-ray").colour}


def test_router_strategy_and_executor_are_fields_and_the_name_follows():
    two_tp2 = Topology(replicas=2, tensor_parallel=2, executor="mp", router="simple-shuffle")
    assert two_tp2.name == "2x-tp2-shuffle" and two_tp2.nodes == 4 and two_tp2.routed
    assert two_tp2 == parse_topology("2x-tp2-shuffle")  # display and colour do not take part in equality
    assert parse_topology("2x-solo-shuffle").router == "simple-shuffle"
    assert parse_topology("tp2-ray").router is None and parse_topology("tp2-ray").executor == "ray"
    for bad in (
        dict(tensor_parallel=2),  # TP>1 needs mp or ray
        dict(executor="mp"),  # TP=1 is uni
        dict(replicas=2),  # replicas need a router
        dict(router="simple-shuffle"),  # and one engine has none
        dict(replicas=2, tensor_parallel=2, executor="ray", router="simple-shuffle"),
    ):
        with pytest.raises(PlanError):
            Topology(**bad)


def test_one_layout_run_by_two_executors():
    mp, ray = parse_topology("tp2-mp"), parse_topology("tp2-ray")
    assert mp.layout == ray.layout and mp.layout.name == "tp2" and ray.layout.display_name == "Cluster TP=2"
    assert executor_partner("tp2-mp") == "tp2-ray" and executor_partner("tp8-ray") == "tp8-mp"
    assert executor_partner("2x-tp2-shuffle") is None and executor_partner("solo") is None
    assert layout_groups(["tp4-ray", "solo", "tp4-mp", "2x-tp2-shuffle"]) == {
        "solo": ["solo"], "tp4": ["tp4-mp", "tp4-ray"], "2x-tp2-shuffle": ["2x-tp2-shuffle"]}


@pytest.mark.parametrize("nodes, cluster_name", [(2, "local-twin"), (4, "local-twin-4")])
def test_every_topology_predicted_on_n_nodes_plans_on_the_local_twin_of_n_nodes(nodes, cluster_name):
    cluster = load_cluster(cluster_name)
    assert len(cluster.nodes) == nodes
    names = topologies_for_nodes(nodes)
    assert names == list(COMPARED_ON_NODES[nodes])
    for recipe in (load_recipe("gemma4-26b"), load_recipe("tiny")):
        for name in names:
            launch = plan(parse_topology(name), cluster, recipe, secrets=PlanSecrets.generate())
            used = {step.node for step in launch.steps() if step.role != "proxy"}
            assert used == {node.name for node in cluster.nodes[: parse_topology(name).nodes]}, name
    with pytest.raises(ConfigError, match="--nodes 3"):
        topologies_for_nodes(3)


def test_two_tp2_engines_each_get_their_own_pair_of_nodes_and_master():
    launch = plan(parse_topology("2x-tp2-shuffle"), load_cluster("local-twin-4"), load_recipe("tiny"),
                  secrets=PlanSecrets.generate())
    headless, rank0s, (proxy,) = (stage.steps for stage in launch.stages)
    assert [(s.name, s.node) for s in headless] == [("engine-node1-rank1", "node2"), ("engine-node3-rank1", "node4")]
    assert [(s.name, s.node) for s in rank0s] == [("engine-node1-rank0", "node1"), ("engine-node3-rank0", "node3")]

    def flag(step, name):
        return step.argv[step.argv.index(name) + 1]

    for head, rank1 in zip(rank0s, headless):
        assert flag(head, "--master-port") == flag(rank1, "--master-port") and flag(head, "-tp") == "2"
    assert flag(rank0s[0], "--master-port") != flag(rank0s[1], "--master-port")
    (router_yaml,) = proxy.files.values()
    assert "id: node1" in router_yaml and "id: node3" in router_yaml and "id: node2" not in router_yaml
