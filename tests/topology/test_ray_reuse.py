"""Which consecutive Ray topologies may keep one Ray cluster up, which may not and why; the run order that
puts them together; what the sweep's dry run says."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from topo.cli import app
from topo.sweep import SweepSpec, plan_sweep
from topology.inventory import Cluster, load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.plan import LaunchPlan
from topology.ray_reuse import plan_ray_reuse, ray_reuse_blocker, ray_run_order
from topology.recipe import Recipe, load_recipe
from topology.registry import STUDY_TOPOLOGIES


def plans(cluster: Cluster, recipe: Recipe, *names: str) -> list[LaunchPlan]:
    secrets = PlanSecrets.generate()
    return [plan(parse_topology(name), cluster, recipe, secrets=secrets) for name in names]


def test_tp4_ray_keeps_the_cluster_of_tp2_ray_and_adds_two_workers(data_dir: Path, gemma: Recipe) -> None:
    four = load_cluster(data_dir / "four-sparks.yaml")
    reuse = plan_ray_reuse(plans(four, gemma, "tp2-ray", "tp4-ray"))
    assert set(reuse) == {"tp4-ray"}
    kept = reuse["tp4-ray"]
    assert kept.source == "tp2-ray"
    assert kept.kept == ("ray-head", "ray-worker-spark2")
    assert kept.added == ("ray-worker-spark3", "ray-worker-spark4")
    assert kept.describe().startswith("Ray cluster kept up from tp2-ray")


def test_pairs_that_do_not_share_a_ray_cluster_say_why(data_dir: Path, gemma: Recipe) -> None:
    four = load_cluster(data_dir / "four-sparks.yaml")
    tp2_ray, tp4_ray, tp2_mp, tp4_mp = plans(four, gemma, "tp2-ray", "tp4-ray", "tp2-mp", "tp4-mp")
    # a cluster never shrinks: Ray would let the TP=2 engine place ranks on spark3 or spark4
    assert "spark3, spark4" in (ray_reuse_blocker(tp4_ray, tp2_ray) or "")
    assert ray_reuse_blocker(tp2_mp, tp2_ray) == "tp2-mp runs no Ray cluster"
    assert ray_reuse_blocker(tp2_ray, tp4_mp) == "tp4-mp runs no Ray cluster"
    # only consecutive topologies: an mp topology in between ends the Ray cluster
    assert plan_ray_reuse([tp2_ray, tp2_mp, tp4_ray]) == {}
    assert plan_ray_reuse([tp4_ray, tp2_ray]) == {}

    # another Ray process on a node both use (here: node env the later plan renders differently)
    spark2 = four.nodes[1]
    changed = four.model_copy(update={"nodes": (four.nodes[0], spark2.model_copy(update={"env": {"HF_HOME": "/x"}}),
                                                *four.nodes[2:])})
    (later,) = plans(changed, gemma, "tp4-ray")
    assert "node spark2 differs" in (ray_reuse_blocker(tp2_ray, later) or "")
    # the head on another node
    moved = four.model_copy(update={"nodes": (four.nodes[1], four.nodes[0], *four.nodes[2:])})
    (later,) = plans(moved, gemma, "tp4-ray")
    assert ray_reuse_blocker(tp2_ray, later) == "the Ray head moves from node spark1 to node spark2"


def test_containers_named_after_the_topology_are_still_the_same_ray_process(data_dir: Path, gemma: Recipe) -> None:
    four = load_cluster(data_dir / "four-sparks.yaml")
    docker = four.model_copy(update={"nodes": tuple(
        node.model_copy(update={"engine": node.engine.model_copy(update={"launcher": "docker", "image": "vllm:x"})})
        for node in four.nodes)})
    tp2_ray, tp4_ray = plans(docker, gemma, "tp2-ray", "tp4-ray")
    assert "topo-tp2-ray-spark1-ray" in tp2_ray.steps()[0].argv  # the name differs, the process does not
    assert ray_reuse_blocker(tp2_ray, tp4_ray) is None


def test_ray_topologies_run_next_to_each_other_smallest_first() -> None:
    assert ray_run_order(STUDY_TOPOLOGIES) == list(STUDY_TOPOLOGIES)  # the documented two-node order
    assert ray_run_order(["solo", "tp4-ray", "tp2-mp", "tp2-ray", "4x-solo-shuffle"]) == [
        "solo", "tp2-ray", "tp4-ray", "tp2-mp", "4x-solo-shuffle"]
    assert ray_run_order(["tp4-mp", "tp4-ray"]) == ["tp4-mp", "tp4-ray"]


def test_the_sweep_plan_and_its_dry_run_show_the_kept_cluster() -> None:
    sweep = plan_sweep(SweepSpec(cluster="local-twin-4", topologies=("tp4-ray", "solo", "tp2-ray"), runs=1))
    assert [t.topology for t in sweep.topologies] == ["tp2-ray", "tp4-ray", "solo"]
    assert set(sweep.ray_reuse) == {"tp4-ray"}
    assert [t.topology for t in plan_sweep(SweepSpec()).topologies] == list(STUDY_TOPOLOGIES)

    done = CliRunner().invoke(app, ["sweep", "--dry-run", "--cluster", "local-twin-4", "-t", "tp4-ray,tp2-ray",
                                    "--runs", "1"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "topologies tp2-ray, tp4-ray" in done.output
    assert "Ray cluster kept up from tp2-ray: ray-head, ray-worker-node2 not started again" in done.output
    assert "teardown leaves ray-head, ray-worker-node2 running for tp4-ray" in done.output


def test_topo_plan_says_what_a_sweep_of_its_topologies_would_keep_up() -> None:
    done = CliRunner().invoke(app, ["plan", "--cluster", "local-twin-4", "-t", "tp4-ray,tp2-ray"])
    assert done.exit_code == 0, done.output
    assert "in a sweep, ray: Ray cluster kept up from tp2-ray" in done.output
    default = CliRunner().invoke(app, ["plan"])
    assert default.exit_code == 0 and "ray:" not in default.output  # one Ray topology: nothing to keep
