from __future__ import annotations

from pathlib import Path

import pytest

from common.config import StrictModel, load_model, resolve_config
from common.errors import ConfigError


class Node(StrictModel):
    name: str
    port: int = 22


class Cluster(StrictModel):
    name: str
    nodes: list[Node]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def test_valid_file_loads(tmp_path: Path) -> None:
    cluster = load_model(Cluster, write(tmp_path, "name: a\nnodes:\n  - name: n1\n    port: 2222\n"))
    assert cluster.nodes[0].port == 2222


def test_typo_names_file_and_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nnodes:\n  - name: n1\n    prot: 2222\n")
    with pytest.raises(ConfigError) as err:
        load_model(Cluster, path)
    message = str(err.value)
    assert str(path) in message
    assert "nodes.0.prot" in message
    assert "unknown key" in message


def test_wrong_type_says_what_was_expected_and_what_came(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(Cluster, write(tmp_path, "name: a\nnodes:\n  - name: n1\n    port: twenty\n"))
    assert "nodes.0.port" in str(err.value)
    assert "'twenty'" in str(err.value)


def test_missing_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nodes: Field required"):
        load_model(Cluster, write(tmp_path, "name: a\n"))


def test_broken_yaml_points_at_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nnodes: [\n  - x\n")
    with pytest.raises(ConfigError) as err:
        load_model(Cluster, path)
    assert f"{path}:" in str(err.value) and "not valid YAML" in str(err.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_model(Cluster, write(tmp_path, ""))
    with pytest.raises(ConfigError, match="no such file"):
        load_model(Cluster, tmp_path / "absent.yaml")


def test_resolve_config_lists_known_names_when_unknown() -> None:
    with pytest.raises(ConfigError, match="no clusters config named 'nope'"):
        resolve_config("clusters", "nope")
