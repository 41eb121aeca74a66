"""`topo plan`'s job: the launch plans of some topologies on a cluster for a recipe. Pure apart from reading
the cluster and recipe YAML; one set of fresh secrets for all of them (they print as ***)."""

from __future__ import annotations

from collections.abc import Sequence

from topology.inventory import load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.plan import LaunchPlan
from topology.recipe import load_recipe


def run_plan(cluster: str, model: str, topologies: Sequence[str]) -> list[LaunchPlan]:
    loaded_cluster = load_cluster(cluster)
    recipe = load_recipe(model)
    secrets = PlanSecrets.generate()
    return [plan(parse_topology(name), loaded_cluster, recipe, secrets=secrets) for name in topologies]
