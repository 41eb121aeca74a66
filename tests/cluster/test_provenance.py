"""What ran, recorded: the facts per node from in-memory nodes and a mock engine, and their comparison."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from cluster.connector import Completed
from cluster.fake import FakeConnector
from bench.results_folder import NodeFacts, WhatRan, ran_differences
from cluster.provenance import executor, link_env, nccl_from_log, split_version, what_ran
from topology.inventory import load_cluster
from topology.kinds import PlanSecrets, parse_topology, plan
from topology.recipe import load_recipe

DATA = Path(__file__).parents[1] / "topology" / "data"
VERSION = "0.19.2.dev7+g1a2b3c4d5e.d20261130"


def spark_node(fake: FakeConnector) -> FakeConnector:
    fake.script(["uname", "-r"], Completed(0, "6.11.0-1016-nvidia\n", ""))
    fake.script(["nvidia-smi"], Completed(0, "580.95.05\n", ""))
    fake.script(["docker", "image", "inspect"], Completed(
        0, "sha256:feed0001 vllm/vllm-openai@sha256:abcd0002\n", ""))
    fake.script(["grep"], Completed(0, "nccl==2.27.3\n", ""))
    return fake


def engine(request: httpx.Request) -> httpx.Response:
    assert request.url.path == "/version"
    return httpx.Response(200, json={"version": VERSION})


async def test_facts_of_a_spark_pair_in_containers() -> None:
    cluster = load_cluster(DATA / "two-sparks-rdma.yaml")
    launch = plan(parse_topology("tp2-ray"), cluster, load_recipe("gemma4-26b"), secrets=PlanSecrets.generate())
    fakes = {"spark1": spark_node(FakeConnector("spark1")), "spark2": spark_node(FakeConnector("spark2"))}
    logs = {step.name: f"/tmp/topo/logs/{step.name}.log" for step in launch.steps()}
    ran = await what_ran(launch, cluster, load_recipe("gemma4-26b"), fakes, logs, transport=httpx.MockTransport(engine))
    assert ran["executor"] == "ray"
    spark2 = ran["nodes"]["spark2"]
    assert spark2["engine_version"] == VERSION and spark2["engine_commit"] == "1a2b3c4d5e"  # rank 0 answered
    assert (spark2["kernel"], spark2["driver"], spark2["nccl"]) == ("6.11.0-1016-nvidia", "580.95.05", "2.27.3")
    assert spark2["image"] == "vllm/vllm-openai:v0.19.1" and spark2["image_id"] == "sha256:feed0001"
    assert spark2["image_digests"] == ["vllm/vllm-openai@sha256:abcd0002"]
    env = ran["nodes"]["spark1"]["env"]["engine"]
    assert env["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1" and env["RAY_memory_monitor_refresh_ms"] == "0"
    assert "HF_HOME" not in env and "RAY_ADDRESS" not in env  # only the link variables
    grep = next(call for call in fakes["spark1"].commands() if call[0] == "grep")
    assert grep[-2:] == ("/tmp/topo/logs/ray-head.log", "/tmp/topo/logs/engine.log")
    json.dumps(ran)  # meta.json material


async def test_what_a_node_cannot_say_is_none_and_never_an_error() -> None:
    cluster = load_cluster("local-twin")
    launch = plan(parse_topology("2x-solo-shuffle"), cluster, load_recipe("tiny"), secrets=PlanSecrets.generate())
    quiet = {name: FakeConnector(name) for name in ("node1", "node2")}
    for fake in quiet.values():
        fake.script(["uname"], Completed(127, "", "uname: not found"))
        fake.script(["grep"], Completed(1, "", ""))
    down = httpx.MockTransport(lambda request: httpx.Response(404))
    ran = await what_ran(launch, cluster, load_recipe("tiny"), quiet, {}, transport=down)
    assert ran["executor"] == "uni"
    assert set(ran["nodes"]) == {"node1", "node2"}  # the proxy on the controller is not a node
    for facts in ran["nodes"].values():
        assert facts["kernel"] is None and facts["engine_version"] is None and facts["nccl"] is None
        assert facts["driver"] is None and "image" not in facts  # a twin: no GPU asked for, no container
        assert not any(call[0] == "nvidia-smi" for fake in quiet.values() for call in fake.commands())


def test_versions_logs_and_masking() -> None:
    assert split_version("0.19.1") == ("0.19.1", None)
    assert split_version(None) == (None, None)
    assert nccl_from_log("INFO 11-30 pynccl.py:70] vLLM is using nccl==2.21.5") == "2.21.5"
    assert nccl_from_log("spark1:123:456 [0] NCCL INFO NCCL version 2.27.3+cuda13.0") == "2.27.3"
    assert nccl_from_log("no such line") is None
    launch = plan(parse_topology("tp2-mp"), load_cluster("local-twin"), load_recipe("tiny"),
                  secrets=PlanSecrets.generate())
    assert executor(launch) == "mp"
    step = launch.steps()[0].model_copy(update={"env": {"NCCL_IB_HCA": "x", "NCCL_SECRET_TOKEN": "s3cr3t"}})
    assert link_env(step) == {"NCCL_IB_HCA": "x", "NCCL_SECRET_TOKEN": "***"}


def test_differences_name_topology_node_and_fact() -> None:
    node = {"engine_version": "0.19.1", "engine_commit": None, "image_id": "sha256:a", "nccl": "2.27.3",
            "driver": "580.95.05", "kernel": "6.11", "env": {"engine": {"NCCL_IB_HCA": "a,b"}}}
    baseline = {"tp2-mp": WhatRan(executor="mp", nodes={"spark1": NodeFacts(**node)})}
    assert ran_differences(baseline, {k: v.model_copy(deep=True) for k, v in baseline.items()}) == []
    changed = {"tp2-mp": WhatRan(executor="mp", nodes={"spark1": NodeFacts(**{
        **node, "engine_version": "0.19.2", "driver": "580.99", "engine_commit": "abc", "env": {}})})}
    assert ran_differences(baseline, changed) == [
        "tp2-mp on spark1: engine_version 0.19.1 -> 0.19.2",
        "tp2-mp on spark1: driver 580.95.05 -> 580.99",
    ]  # a commit only one side knows, and an env one side lacks, say nothing
    changed["tp2-mp"].nodes["spark1"].env = {"engine": {"NCCL_IB_HCA": "a"}}
    changed["tp2-mp"].executor = "ray"
    assert ran_differences(baseline, changed)[0] == "tp2-mp: executor mp -> ray"
    assert ran_differences(baseline, changed)[-1] == "tp2-mp on spark1: the NCCL/GLOO environment changed"
    assert ran_differences(baseline, {}) == []  # nothing in common: nothing to say


def test_header_summary_of_a_node() -> None:
    facts = NodeFacts(engine="vllm", engine_version="0.19.2.dev7+g1a2b3c4", engine_commit="1a2b3c4",
                      image="vllm/vllm-openai:v0.19.1", image_id="sha256:feed0001feed0001feed", nccl="2.27.3",
                      driver="580.95.05", kernel="6.11.0", env={"engine": {"NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1"}})
    assert facts.summary() == ("vllm 0.19.2.dev7+g1a2b3c4 (commit 1a2b3c4), image vllm/vllm-openai:v0.19.1 "
                               "sha256:feed0001feed, NCCL 2.27.3 over RoCE rocep1s0f1,roceP2p1s0f1, "
                               "driver 580.95.05, kernel 6.11.0")
    assert NodeFacts(engine="twin", env={"e": {"NCCL_SOCKET_IFNAME": "lo"}}).summary() == (
        "twin, NCCL - over the RoCE device it detects (no NCCL_IB_HCA; else sockets lo)")
    assert NodeFacts(engine="twin", env={"e": {"NCCL_SOCKET_IFNAME": "lo", "NCCL_IB_DISABLE": "1"}}).summary() == (
        "twin, NCCL - over sockets lo")
