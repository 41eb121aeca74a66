"""A local two-node twin cluster like the embedded default, on free ports and private workdirs.

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


def write_local_cluster(directory: Path, *, hardware: str = "fast", name: str = "test-twin") -> Path:
    """Copy configs/clusters/local-twin.yaml with fresh ports, workdirs under `directory`, `hardware`.

    Ray's socket paths must stay under 107 bytes, so the node workdirs go to a short folder under /tmp
    when `directory` (a pytest tmp_path, say) is long."""
    directory.mkdir(parents=True, exist_ok=True)
    if len(str(directory)) > 24:
        short = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
        (directory / "workdirs").symlink_to(short)
        directory = short
    data = yaml.safe_load((CONFIGS_DIR / "clusters" / "local-twin.yaml").read_text())
    engine_a, engine_b, ray_a, ray_b, master_a, master_b, proxy = free_ports(7)
    data["name"] = name
    for node, engine, ray, master in zip(data["nodes"], (engine_a, engine_b), (ray_a, ray_b), (master_a, master_b)):
        node["workdir"] = str(directory / node["name"])
        node["engine"]["port"] = engine
        node["engine"]["hardware"] = hardware
        node["ray"]["port"] = ray
        node["master_port"] = master
    data["proxy"]["port"] = proxy
    data["proxy"]["workdir"] = str(directory / "controller")
    data["timeouts"] = {"engine_ready_s": 120, "ray_ready_s": 120, "proxy_ready_s": 180, "stop_grace_s": 20}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
