"""Cluster inventory: validation errors name file and key; path rules; placeholders; the local-twin default."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from common.errors import ConfigError
from topology.inventory import LocalConnect, SshConnect, TwinEngine, VllmEngine, cluster_from_data, load_cluster


def write_cluster(tmp_path: Path, data: dict, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ssh_node(name: str, host: str, **overrides) -> dict:
    node = {
        "name": name,
        "connect": {"kind": "ssh", "host": host, "key": "/keys/id", "known_hosts": "/keys/known_hosts"},
        "fast_link": {"ip": "192.168.0.1", "interface": "eth1"},
        "engine": {"kind": "vllm", "vllm": "/opt/vllm/bin/vllm"},
    }
    node.update(overrides)
    return node


def test_typo_in_a_node_names_file_and_key(tmp_path):
    data = {"name": "c", "nodes": [ssh_node("a", "10.0.0.1"), ssh_node("b", "10.0.0.2")]}
    data["nodes"][1]["fast_lnk"] = data["nodes"][1].pop("fast_link")
    path = write_cluster(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    message = str(caught.value)
    assert str(path) in message
    assert "nodes.1.fast_lnk" in message and "unknown key" in message
    assert "nodes.1.fast_link" in message  # and the required key it misses


def test_wrong_type_names_key_and_value(tmp_path):
    data = {"name": "c", "nodes": [ssh_node("a", "10.0.0.1", master_port="twenty-nine")]}
    with pytest.raises(ConfigError, match=r"nodes\.0\.master_port.*twenty-nine"):
        load_cluster(write_cluster(tmp_path, data))


def test_unknown_engine_kind_is_a_config_error(tmp_path):
    node = ssh_node("a", "10.0.0.1")
    node["engine"] = {"kind": "sglang"}
    with pytest.raises(ConfigError, match=r"nodes\.0\.engine"):
        load_cluster(write_cluster(tmp_path, {"name": "c", "nodes": [node]}))


def test_process_launcher_needs_a_vllm_path(tmp_path):
    node = ssh_node("a", "10.0.0.1")
    node["engine"] = {"kind": "vllm", "launcher": "process"}
    with pytest.raises(ConfigError, match="absolute path of the vllm executable"):
        load_cluster(write_cluster(tmp_path, {"name": "c", "nodes": [node]}))


def test_duplicate_node_names_and_unknown_proxy_node(tmp_path):
    data = {"name": "c", "nodes": [ssh_node("a", "10.0.0.1"), ssh_node("a", "10.0.0.2")]}
    with pytest.raises(ConfigError, match="repeated: a"):
        load_cluster(write_cluster(tmp_path, data))
    data = {"name": "c", "nodes": [ssh_node("a", "10.0.0.1")], "proxy": {"node": "nowhere"}}
    with pytest.raises(ConfigError, match="proxy.node 'nowhere'"):
        load_cluster(write_cluster(tmp_path, data))


def test_host_key_checking_cannot_be_switched_off(tmp_path):
    node = ssh_node("a", "10.0.0.1")
    node["connect"]["known_hosts"] = None
    with pytest.raises(ConfigError, match="known_hosts"):
        load_cluster(write_cluster(tmp_path, {"name": "c", "nodes": [node]}))


def test_controller_paths_expand_home_and_resolve_against_the_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/home/tester")
    node = ssh_node("a", "10.0.0.1")
    node["connect"].update(key="keys/id_ed25519", known_hosts="~/.ssh/known_hosts")
    cluster = load_cluster(write_cluster(tmp_path, {"name": "c", "nodes": [node]}))
    connect = cluster.head.connect
    assert isinstance(connect, SshConnect)
    assert connect.key == str(tmp_path.resolve() / "keys" / "id_ed25519")
    assert connect.known_hosts == "/home/tester/.ssh/known_hosts"


@pytest.mark.parametrize(
    ("key", "value"),
    [("workdir", "~/topo"), ("workdir", "relative/dir"), ("engine", {"kind": "vllm", "vllm": "bin/vllm"})],
)
def test_paths_on_ssh_nodes_must_be_absolute(tmp_path, key, value):
    node = ssh_node("a", "10.0.0.1", **{key: value})
    with pytest.raises(ConfigError, match=r"nodes\.0\.(workdir|engine\.vllm).*must be absolute"):
        load_cluster(write_cluster(tmp_path, {"name": "c", "nodes": [node]}))


def test_commands_in_path_stay_bare_on_ssh_nodes(tmp_path):
    node = ssh_node("a", "10.0.0.1")
    node["engine"] = {"kind": "vllm", "launcher": "docker", "image": "img"}
    cluster = load_cluster(write_cluster(tmp_path, {"name": "c", "nodes": [node]}))
    assert cluster.head.ray.bin == "ray"
    assert isinstance(cluster.head.engine, VllmEngine) and cluster.head.engine.docker == "docker"


def test_python_placeholders_resolve_to_the_given_interpreter(tmp_path):
    data = {
        "name": "c",
        "nodes": [
            {
                "name": "a",
                "connect": {"kind": "local"},
                "fast_link": {"ip": "127.0.0.1", "interface": "lo"},
                "workdir": "work/a",
                "engine": {"kind": "twin", "twin": ["{python}", "-m", "twin"]},
                "ray": {"bin": "{python_bin}/ray"},
            }
        ],
        "proxy": {"litellm": "{python_bin}/litellm"},
    }
    cluster = cluster_from_data(data, source="inline", base_dir=tmp_path, python="/venvs/x/bin/python")
    engine = cluster.head.engine
    assert isinstance(engine, TwinEngine)
    assert engine.twin == ("/venvs/x/bin/python", "-m", "twin")
    assert cluster.head.ray.bin == "/venvs/x/bin/ray"
    assert cluster.proxy.litellm == "/venvs/x/bin/litellm"
    assert cluster.head.workdir == str(tmp_path / "work" / "a")  # local node: relative to the YAML


def test_local_twin_is_two_local_twin_nodes_without_collisions():
    cluster = load_cluster("local-twin")
    assert [node.name for node in cluster.nodes] == ["node1", "node2"]
    assert all(isinstance(node.connect, LocalConnect) for node in cluster.nodes)
    engines = [node.engine for node in cluster.nodes]
    assert all(isinstance(engine, TwinEngine) and engine.hardware == "gb10" for engine in engines)
    assert engines[0].twin[0] == sys.executable  # type: ignore[union-attr]
    assert len({engine.port for engine in engines}) == 2
    assert len({node.ray.port for node in cluster.nodes}) == 2
    assert len({node.ray_temp_dir for node in cluster.nodes}) == 2
    assert all(node.workdir.startswith("/tmp/topo-local/") for node in cluster.nodes)
    assert cluster.proxy.node == "controller"
    assert Path(cluster.proxy.litellm).parent == Path(sys.executable).parent


def test_unknown_cluster_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="local-twin"):
        load_cluster("no-such-cluster")


def test_a_duplicate_key_is_refused_with_file_and_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: c\nnodes:\n  - name: a\n    env:\n      HF_HOME: /a\n      HF_HOME: /b\n")
    with pytest.raises(ConfigError, match=rf"{path}:6:7: not valid YAML: duplicate key 'HF_HOME' \(first at line 5\)"):
        load_cluster(path)


@pytest.mark.parametrize("key", ["-Sfoo", "1ABC", "A B", "A=B", ""])
def test_an_env_key_that_is_not_a_posix_name_is_refused_naming_file_and_key_path(tmp_path, key):
    data = {"name": "c", "nodes": [ssh_node("a", "10.0.0.1", env={"GOOD": "1", key: "x"})]}
    path = write_cluster(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    message = str(caught.value)
    assert f"{path}: nodes.0.env: " in message and repr(key) in message
    assert "not a POSIX environment variable name" in message


def test_an_env_value_may_be_a_secret_reference_but_not_both_kinds(tmp_path):
    data = {"name": "c", "nodes": [ssh_node("a", "10.0.0.1", env={"HF_TOKEN": {"secret": "HF_TOKEN"},
                                                                    "KEY": {"secret_file": "/k"}})]}
    node = load_cluster(write_cluster(tmp_path, data)).nodes[0]
    assert str(node.env["HF_TOKEN"]) == "***" and node.env["KEY"].secret_file == "/k"
    data["nodes"][0]["env"] = {"X": {"secret": "A", "secret_file": "/k"}}
    with pytest.raises(ConfigError, match="exactly one of"):
        load_cluster(write_cluster(tmp_path, data))
