"""The printed plan of each study topology on a fixed two-node cluster (and of the four-node ones on a fixed
four-node cluster), compared exactly.

Regenerate after an intended change with `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/topology`
and review the diff: these files are the commands topo runs on real nodes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from topology.inventory import load_cluster
from topology.kinds import STUDY_TOPOLOGIES, parse_topology, plan
from topology.render import plan_text

GOLDEN_DIR = Path(__file__).parent / "golden"
FOUR_NODE_GOLDENS = ("2x-tp2-shuffle",)


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN_DIR / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(actual)
        return
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    assert actual == expected, f"plan of {name} differs from {path} (UPDATE_GOLDEN=1 to accept an intended change)"


@pytest.mark.parametrize("topology_name", STUDY_TOPOLOGIES)
def test_plan_matches_golden(topology_name, two_sparks, gemma, plan_secrets, real_master_key):
    launch_plan = plan(parse_topology(topology_name), two_sparks, gemma, secrets=plan_secrets)
    text = plan_text(launch_plan).plain
    assert real_master_key not in text
    check_golden(topology_name, text)


@pytest.mark.parametrize("topology_name", STUDY_TOPOLOGIES)
def test_spark_pair_with_both_roce_twins_matches_golden(topology_name, data_dir, gemma, plan_secrets):
    """Two Sparks as their owners run them: vLLM's container, NCCL over both RoCE twins of the port."""
    cluster = load_cluster(data_dir / "two-sparks-rdma.yaml")
    launch_plan = plan(parse_topology(topology_name), cluster, gemma, secrets=plan_secrets)
    check_golden(f"rdma-{topology_name}", plan_text(launch_plan).plain)


@pytest.mark.parametrize("topology_name", FOUR_NODE_GOLDENS)
def test_four_node_plan_matches_golden(topology_name, data_dir, gemma, plan_secrets, real_master_key):
    four_sparks = load_cluster(data_dir / "four-sparks.yaml")
    launch_plan = plan(parse_topology(topology_name), four_sparks, gemma, secrets=plan_secrets)
    text = plan_text(launch_plan).plain
    assert real_master_key not in text
    check_golden(topology_name, text)


def test_goldens_carry_design_commands():
    """Guards the goldens themselves: regenerating cannot silently drop the study's exact command parts."""
    if os.environ.get("UPDATE_GOLDEN") == "1":
        pytest.skip("goldens being rewritten")
    texts = {name: (GOLDEN_DIR / f"{name}.txt").read_text() for name in (*STUDY_TOPOLOGIES, *FOUR_NODE_GOLDENS)}
    assert "/opt/vllm/.venv/bin/vllm serve google/gemma-4-26B-A4B-it \\\n        -tp 1" in texts["solo"]
    assert "--nnodes 2" in texts["tp2-mp"] and "--headless" in texts["tp2-mp"]
    assert texts["tp2-mp"].index("--node-rank 1") < texts["tp2-mp"].index("--node-rank 0")
    assert "--master-addr 192.168.100.1" in texts["tp2-mp"] and "--master-port 29501" in texts["tp2-mp"]
    assert "--address 192.168.100.1:6379" in texts["tp2-ray"]
    assert "status --address 192.168.100.1:6379" in texts["tp2-ray"]
    assert "--distributed-executor-backend ray" in texts["tp2-ray"]
    assert "routing_strategy: simple-shuffle" in texts["2x-solo-shuffle"]
    assert "LITELLM_MASTER_KEY=***" in texts["2x-solo-shuffle"]
    assert "one twin (~100 Gb/s), or its TCP sockets over enP2p1s0f1np1" in texts["tp2-mp"]
    assert "note:" not in texts["solo"]  # one engine on one node: no NCCL between nodes to speak of
    rdma = {name: (GOLDEN_DIR / f"rdma-{name}.txt").read_text() for name in STUDY_TOPOLOGIES}
    for name, text in rdma.items():
        assert "NCCL_IB_HCA=rocep1s0f1,roceP2p1s0f1" in text and "NCCL_IB_DISABLE=0" in text, name
        assert "UCX_NET_DEVICES=enp1s0f1np1" in text and "OMPI_MCA_btl_tcp_if_include=enp1s0f1np1" in text, name
        assert "note:" not in text, name
        assert "$ docker run" in text and "--network host" in text and "--gpus all" in text, name
        assert "--device /dev/infiniband" in text and "--env-file /tmp/topo/" in text, name
        assert ("RAY_memory_monitor_refresh_ms=0" in text) == (name == "tp2-ray"), name
    # two TP=2 engines, each on its own pair of nodes with its own master, behind one router
    two_tp2 = texts["2x-tp2-shuffle"]
    assert two_tp2.count("--nnodes 2") == 4 and two_tp2.count("--headless") == 2
    assert "--master-addr 192.168.100.1" in two_tp2 and "--master-addr 192.168.100.3" in two_tp2
    assert "api_base: http://192.168.100.1:8000/v1" in two_tp2 and "api_base: http://192.168.100.3:8000/v1" in two_tp2
    assert "api_base: http://192.168.100.2" not in two_tp2  # headless ranks serve no HTTP
