"""Which NCCL transport a TP engine gets, read off the env its plan renders (the twin's link follows it).

The twin engine picks its link from its own process env (twin.profiles.transport_from_env), and a plan's
engine processes get the env the plan renders. `topo predict` and `topo calibrate` run no engine, so they
render the same plan (a TP=2 engine on the cluster) and apply the same rule to its rank-0 engine's env.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from topology.inventory import Cluster
from topology.plan import Step, reveal
from topology.nccl import Transport, transport_from_env


@dataclass(frozen=True)
class RenderedTransport:
    transport: Transport
    why: str  # what the decision was read from, for printing


def engine_env(step: Step) -> dict[str, str]:
    """The env an engine process of the plan starts with: its env, plus what a `docker run` passes in
    (`--env-file` written by the plan, `-e K=V`)."""
    env = {key: reveal(value) for key, value in step.env.items()}
    argv = [reveal(a) for a in step.argv]
    if "run" in argv[:3]:  # the docker launcher passes the env to the container
        for flag, value in zip(argv, argv[1:]):
            if flag == "--env-file" and value in step.files:
                for line in step.files[value].splitlines():
                    key, sep, val = line.partition("=")
                    if sep:
                        env[key] = val
            elif flag == "-e" and "=" in value:
                key, _, val = value.partition("=")
                env[key] = val
    return env


def _nccl_vars(env: dict[str, str]) -> str:
    shown = {k: v for k, v in env.items() if k in ("NCCL_IB_HCA", "NCCL_IB_DISABLE")}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "no NCCL_IB_HCA"


def planned_transport(model: str, cluster: str | Path | Cluster | None) -> RenderedTransport:
    """The transport of a TP=2 engine of recipe `model` as the plan renders it on `cluster`.

    Without a cluster, only the recipe's env is known (a node's fast link adds the socket interface
    variables, none that choose RoCE), so that is what decides. A model with no recipe renders no env.
    """
    from topology.kinds import PlanSecrets, parse_topology, plan
    from topology.recipe import load_recipe

    try:
        recipe = load_recipe(model)
    except ConfigError:
        if cluster is not None:
            raise
        return RenderedTransport(transport_from_env({}), f"model {model} has no recipe: no NCCL env, no NCCL_IB_HCA")
    if cluster is None:
        env = dict(recipe.env)
        return RenderedTransport(transport_from_env(env), f"recipe {recipe.name} env ({_nccl_vars(env)}; no cluster given)")
    from topology.inventory import load_cluster

    inventory = cluster if isinstance(cluster, Cluster) else load_cluster(cluster)
    launched = plan(parse_topology("tp2-mp"), inventory, recipe, secrets=PlanSecrets.generate())
    engine = next(step for step in launched.steps() if step.role == "engine")
    env = engine_env(engine)
    return RenderedTransport(transport_from_env(env), f"tp2-mp plan on {launched.cluster} ({_nccl_vars(env)})")


__all__ = ["RenderedTransport", "engine_env", "planned_transport"]
