"""Which NCCL transport an engine process ends up with, read off the environment a plan renders.

One rule for every reader: the twin picks its link model from its own env, `topo predict` from the env
the plan renders, and a results folder's header names the transport a node's recorded env implies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

# How TP ranks on different nodes talk. NCCL picks its transport from the engine's environment, so the twin
# does too (`transport_from_env`): both RoCE twins of a port, one of them, or TCP sockets.
Transport = Literal["roce2", "roce1", "sockets"]
TRANSPORTS: tuple[Transport, ...] = ("roce2", "roce1", "sockets")


def transport_from_env(env: Mapping[str, str]) -> Transport:
    """The transport NCCL ends up with for an engine process started with `env`.

    NCCL_IB_DISABLE=1 (or true) -> sockets; NCCL_IB_HCA naming two or more RoCE devices -> roce2 (both twins
    of the port), one -> roce1; NCCL_IB_HCA unset or empty -> roce1. The published facts
    (../shared/reference/spark_pair.md): NCCL reaches the full 200 Gb/s of a cable only when NCCL_IB_HCA lists
    BOTH RoCE twins, otherwise it uses one twin (~100 Gb/s); it falls back to TCP sockets only without RoCE.
    With no NCCL_IB_HCA and IB not disabled, NCCL auto-detects the RoCE devices it finds (NET/IB) and on a
    Spark ends up on one twin. A container without /dev/infiniband sees no device and falls back to sockets;
    the env cannot tell, so a recipe or node env states that case with NCCL_IB_DISABLE=1.
    NCCL's list syntax: `=` (exact names) and `^` (exclude) prefixes, `:port` suffixes. An exclude list names
    what NCCL must NOT use, so how many it does use depends on the node's devices: counted as one twin (the
    conservative reading; name both twins to get roce2).
    """
    if env.get("NCCL_IB_DISABLE", "").strip().lower() in ("1", "true"):
        return "sockets"
    raw = env.get("NCCL_IB_HCA", "").strip()
    if not raw or raw.startswith("^"):
        return "roce1"
    devices = {item.split(":", 1)[0].strip() for item in raw.lstrip("=").split(",")} - {""}
    return "roce2" if len(devices) >= 2 else "roce1"
