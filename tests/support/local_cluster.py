"""A local twin cluster like the embedded default (two nodes, or local-twin-4's four), on free ports and
private workdirs.

Tests must not collide with a sweep someone runs on the default ports, nor with each other.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import yaml

from common.config import CONFIGS_DIR


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_local_cluster(
    directory: Path, *, hardware: str = "fast", name: str = "test-twin", source: str = "local-twin"
) -> Path:
    """Copy configs/clusters/<source>.yaml with fresh ports, workdirs under `directory`, `hardware`.

    Ray's socket paths must stay under 107 bytes, so the node workdirs go to a short folder under /tmp
    when `directory` (a pytest tmp_path, say) is long."""
    directory.mkdir(parents=True, exist_ok=True)
    if len(str(directory)) > 24:
        short = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
        (directory / "workdirs").symlink_to(short)
        directory = short
    data = yaml.safe_load((CONFIGS_DIR / "clusters" / f"{source}.yaml").read_text())
    *node_ports, proxy = free_ports(3 * len(data["nodes"]) + 1)
    data["name"] = name
    for index, node in enumerate(data["nodes"]):
        node["workdir"] = str(directory / node["name"])
        node["engine"]["port"], node["ray"]["port"], node["master_port"] = node_ports[3 * index : 3 * index + 3]
        node["engine"]["hardware"] = hardware
    data["proxy"]["port"] = proxy
    data["proxy"]["workdir"] = str(directory / "controller")
    data["timeouts"] = {"engine_ready_s": 120, "ray_ready_s": 120, "proxy_ready_s": 180, "stop_grace_s": 20}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
