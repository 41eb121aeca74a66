"""The test bed's inputs and the cluster file it writes (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.testbed import Testbed, TestbedNode, TestbedSpec, _cluster_data, _sshd_config
from common.errors import ConfigError
from topology.inventory import SshConnect, TwinEngine, cluster_from_data


@pytest.mark.parametrize(
    "change, complaint",
    [
        ({"nodes": 0}, "--nodes must be between 1 and 8"),
        ({"prefix": "a-b"}, "--prefix must be 1-8 letters/digits"),
        ({"prefix": "waytoolongname"}, "--prefix"),
        ({"subnet": "10.88"}, "--subnet must be the first three octets"),
        ({"subnet": "10.88.300"}, "--subnet"),
        ({"proxy_on": "node3"}, "--proxy-on must be one of controller, node1, node2"),
        ({"directory": Path("/tmp/" + "x" * 40)}, "Ray's socket paths"),
    ],
)
def test_bad_options_are_config_errors(change: dict, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint.replace("(", r"\(").replace("'", "'")):
        TestbedSpec(**change).check()


def test_the_cluster_file_is_a_valid_inventory_over_ssh() -> None:
    spec = TestbedSpec(directory=Path("/tmp/tb"), python="/venv/bin/python", proxy_on="controller")
    bed = Testbed("/tmp/tb", "topo", "10.88.0", "topo-br0", "10.88.0.254", "/tmp/tb/cluster.yaml", "/tmp/tb/client_ed25519", "/tmp/tb/known_hosts")
    bed.nodes = [
        TestbedNode(f"node{i}", f"topo-n{i}", f"10.88.0.{i}", f"topo-h{i}", f"topo-e{i}", 100 + i, f"/tmp/tb/node{i}/work") for i in (1, 2)
    ]
    cluster = cluster_from_data(_cluster_data(spec, bed), source="testbed", base_dir=Path("/tmp/tb"))
    assert [node.name for node in cluster.nodes] == ["node1", "node2"]
    for node in cluster.nodes:
        assert isinstance(node.connect, SshConnect) and node.connect.known_hosts == "/tmp/tb/known_hosts"
        assert node.fast_link.ip == node.connect.host and node.fast_link.interface.startswith("topo-e")
        assert isinstance(node.engine, TwinEngine) and node.engine.twin == ("/venv/bin/python", "-m", "twin")
        assert node.ray.bin == "/venv/bin/ray" and node.ray.memory_bytes and node.ray.object_store_bytes
    assert cluster.proxy.node == "controller" and cluster.proxy.litellm == "/venv/bin/litellm"


def test_sshd_is_key_only_and_tells_the_node_its_name() -> None:
    config = _sshd_config("node2", "10.88.0.2", Path("/tmp/tb/node2"), Path("/tmp/tb/authorized_keys"))
    for line in (
        "ListenAddress 10.88.0.2",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "SetEnv TOPO_NODE=node2 HOME=/tmp/tb/node2/home",
    ):
        assert line in config.splitlines()
