"""`topo doctor`'s checks against in-memory nodes (FakeConnector): each check passes on a healthy pair of
Sparks and fails, with a sentence that says what and where, when its one thing is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.connector import Completed
from cluster.doctor import BLOCKING_CHECKS, DoctorReport, parse_meminfo, run_doctor
from cluster.fake import FakeBehaviour, FakeConnector
from common.errors import ConnectError
from topology.inventory import Cluster, cluster_from_data
from topology.recipe import load_recipe

NOW = 1_800_000_000.0
GIB_KB = 1 << 20
IMAGE_ID = "sha256:4b1d0000aaaa"


def spark(name: str, host: str, ip: str, launcher: str = "docker") -> dict:
    engine: dict = {"kind": "vllm", "launcher": launcher, "image": "vllm/vllm-openai:v0.19.1"}
    if launcher == "process":
        engine = {"kind": "vllm", "launcher": "process", "vllm": "/opt/vllm/bin/vllm"}
    return {
        "name": name,
        "connect": {"kind": "ssh", "host": host, "known_hosts": "/keys/known_hosts"},
        "fast_link": {"ip": ip, "interface": "enp1s0f1np1", "rdma": ["rocep1s0f1", "roceP2p1s0f1"], "mtu": 9000},
        "workdir": "/tmp/topo",
        "engine": engine,
    }


def two_sparks(launcher: str = "docker") -> Cluster:
    data = {"name": "pair", "nodes": [spark("spark1", "10.0.0.11", "192.168.100.1", launcher),
                                      spark("spark2", "10.0.0.12", "192.168.100.2", launcher)]}
    return cluster_from_data(data, source="inline", base_dir=Path("/"))


def healthy(fake: FakeConnector, ip: str, *, mtu: int = 9000, available_gib: int = 110) -> FakeConnector:
    """Scripts the answers of a ready Spark (first matching rule wins: tests add breakage BEFORE this)."""
    fake.script(["id", "-un"], Completed(0, "topo\n", ""))
    fake.script(["ip", "-o", "addr"], Completed(0, f"5: enp1s0f1np1    inet {ip}/24 brd x scope global\n", ""))
    fake.script(["cat", "/sys/class/net/enp1s0f1np1/mtu"], Completed(0, f"{mtu}\n", ""))
    fake.script(["ping"], Completed(0, "1 packets transmitted, 1 received\n", ""))
    fake.script(["docker", "info"], Completed(0, "28.2.2\n", ""))
    fake.script(["docker", "image", "inspect"], Completed(0, f"{IMAGE_ID}\n", ""))
    fake.script(["docker", "ps"], Completed(0, "", ""))
    fake.script(["/opt/vllm/bin/vllm", "--version"], Completed(0, "0.19.1\n", ""))
    fake.script(["cat", "/proc/meminfo"], Completed(
        0, f"MemTotal:       {128 * GIB_KB} kB\nMemFree:  1 kB\nMemAvailable:   {available_gib * GIB_KB} kB\n", ""))
    fake.script(["nvidia-smi"], Completed(0, "NVIDIA GB10, 580.95.05\n", ""))
    fake.script(["date"], Completed(0, f"{NOW + 0.004:.6f}\n", ""))
    fake.script(["df", "-Pk"], Completed(
        0, "Filesystem 1024-blocks Used Available Capacity Mounted\n/dev/nvme0n1p2 3800000000 1 3000000000 1% /\n", ""))
    return fake


async def doctor(cluster: Cluster, fakes: dict[str, FakeConnector], **kwargs) -> DoctorReport:
    return await run_doctor(cluster, load_recipe("gemma4-26b"), fakes, clock=lambda: NOW, **kwargs)


def verdicts(report: DoctorReport, check: str) -> dict[str, str]:
    return {f.node: f.verdict for f in report.findings if f.check == check}


def detail(report: DoctorReport, node: str, check: str) -> str:
    return next(f.detail for f in report.findings if f.node == node and f.check == check)


def pair() -> tuple[FakeConnector, FakeConnector]:
    return FakeConnector("spark1"), FakeConnector("spark2")


async def test_a_healthy_pair_is_ready_with_every_check_ok() -> None:
    one, two = pair()
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert report.exit_code == 0 and report.summary().startswith("READY"), report.text()
    assert {f.verdict for f in report.findings} == {"ok"}
    assert len(report.findings) == 2 * 12
    assert "8972 B unfragmented" in detail(report, "spark1", "link")  # 9000 - IP and ICMP headers
    assert ("ping", "-c", "1", "-W", "2", "-I", "enp1s0f1np1", "-M", "do", "-s", "8972", "192.168.100.2") in one.commands()
    assert detail(report, "spark2", "engine") == f"image vllm/vllm-openai:v0.19.1 {IMAGE_ID}"
    assert detail(report, "spark1", "gpu") == "NVIDIA GB10, 580.95.05"
    assert "vLLM claims 89.6 GiB" in detail(report, "spark1", "memory")  # 70 % of 128 GiB
    assert detail(report, "spark1", "clock").startswith("+4 ms")


async def test_missing_fast_link_address_blocks_and_names_what_is_there() -> None:
    one, two = pair()
    one.script(["ip", "-o", "addr"], Completed(0, "5: enp1s0f1np1    inet 192.168.7.1/24 scope global\n", ""))
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert report.exit_code == 2
    assert verdicts(report, "address") == {"spark1": "fail", "spark2": "ok"}
    assert detail(report, "spark1", "address") == "enp1s0f1np1 does not carry 192.168.100.1 (it has 192.168.7.1/24)"


async def test_mtu_mismatch_blocks_and_the_unfragmented_ping_shows_the_path() -> None:
    one, two = pair()
    two.script(["ping", "-c", "1", "-W", "2", "-I", "enp1s0f1np1", "-M", "do"], Completed(1, "", "message too long"))
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"),
                                         "spark2": healthy(two, "192.168.100.2", mtu=1500)})
    assert verdicts(report, "mtu") == {"spark1": "fail", "spark2": "fail"}
    assert detail(report, "spark2", "mtu") == "enp1s0f1np1 has MTU 1500, the cluster file says 9000"
    assert "differs between nodes (spark2 1500)" in detail(report, "spark1", "mtu")
    assert verdicts(report, "link") == {"spark1": "ok", "spark2": "fail"}
    assert "not a 1472-byte do-not-fragment ping" in detail(report, "spark2", "link")


async def test_unreachable_peer_on_the_fast_link_blocks() -> None:
    one, two = pair()
    one.script(["ping", "-c", "1", "-W", "2", "-I", "enp1s0f1np1", "192.168.100.2"], Completed(1, "", ""))
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert detail(report, "spark1", "link") == "cannot reach spark2 at 192.168.100.2 over enp1s0f1np1"


async def test_different_images_or_a_missing_image_block() -> None:
    one, two = pair()
    two.script(["docker", "image", "inspect"], Completed(0, "sha256:other\n", ""))
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert verdicts(report, "engine") == {"spark1": "fail", "spark2": "fail"}
    assert f"differs between nodes ({IMAGE_ID}, sha256:other)" in detail(report, "spark1", "engine")
    one, two = pair()
    two.script(["docker", "image", "inspect"], Completed(1, "", "Error: No such image: vllm/vllm-openai:v0.19.1"))
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert verdicts(report, "engine") == {"spark1": "ok", "spark2": "fail"}
    assert "(docker pull it on spark2)" in detail(report, "spark2", "engine")


async def test_vllm_versions_compared_for_the_process_launcher() -> None:
    one, two = pair()
    two.script(["/opt/vllm/bin/vllm", "--version"], Completed(0, "INFO some log line\n0.18.0\n", ""))
    report = await doctor(two_sparks("process"), {"spark1": healthy(one, "192.168.100.1"),
                                                  "spark2": healthy(two, "192.168.100.2")})
    assert detail(report, "spark2", "engine") == "vllm 0.18.0: differs between nodes (0.18.0, 0.19.1)"
    assert verdicts(report, "sudo-less") == {"spark1": "ok", "spark2": "ok"}  # no docker to check here
    assert not any(call[0] == "docker" for call in one.commands())


async def test_too_little_free_memory_for_vllms_share_blocks() -> None:
    one, two = pair()
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1", available_gib=60),
                                         "spark2": healthy(two, "192.168.100.2")})
    assert verdicts(report, "memory") == {"spark1": "fail", "spark2": "ok"}
    assert detail(report, "spark1", "memory") == (
        "60.0 GiB available of 128.0 GiB: vLLM will claim 70% = 89.6 GiB; free memory first")


async def test_gpu_missing_where_expected_blocks_and_is_not_asked_for_where_not() -> None:
    one, two = pair()
    one.script(["nvidia-smi"], Completed(127, "", "sh: nvidia-smi: not found"))
    cluster = two_sparks()
    no_gpu = cluster.nodes[1].engine.model_copy(update={"gpus": None})
    cluster = cluster.model_copy(update={"nodes": (cluster.nodes[0], cluster.nodes[1].model_copy(update={"engine": no_gpu}))})
    report = await doctor(cluster, {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert verdicts(report, "gpu") == {"spark1": "fail", "spark2": "skip"}
    assert ("nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader") not in two.commands()


async def test_busy_ports_and_leftovers_of_an_earlier_run_block() -> None:
    one, two = pair()
    one.other_listeners = {8000, 22}
    await two.start(["vllm", "serve"], log_path="/tmp/topo/logs/engine.log", pidfile="/tmp/topo/run/engine.pid")
    two.script(["docker", "ps"], Completed(0, "topo-solo-spark2\n", ""))
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert detail(report, "spark1", "ports") == "in use: 8000 (engine)"
    assert verdicts(report, "leftovers") == {"spark1": "ok", "spark2": "fail"}
    assert "engine (process group" in detail(report, "spark2", "leftovers")
    assert "container topo-solo-spark2" in detail(report, "spark2", "leftovers")
    assert ("docker", "ps", "-a", "--filter", "label=topo.cluster=pair", "--format", "{{.Names}}") in two.commands()


async def test_clock_offset_only_warns() -> None:
    one, two = pair()
    two.script(["date"], Completed(0, f"{NOW + 3.2:.6f}\n", ""))
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert verdicts(report, "clock") == {"spark1": "ok", "spark2": "warn"}
    assert report.exit_code == 0 and "1 warning" in report.summary()
    assert "clock" not in BLOCKING_CHECKS  # a sweep does not even look


async def test_an_unreachable_node_fails_ssh_and_its_other_checks_are_skipped() -> None:
    one, two = pair()
    two.script(["id"], ConnectError("node 'spark2': timed out connecting to root@10.0.0.12:22"))
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")})
    assert detail(report, "spark2", "ssh") == "node 'spark2': timed out connecting to root@10.0.0.12:22"
    assert {f.verdict for f in report.findings if f.node == "spark2" and f.check != "ssh"} == {"skip"}
    # spark1 still pings spark2 over the fast link: only SSH to spark2 failed
    assert report.node_verdict("spark2") == "fail" and report.node_verdict("spark1") == "ok"
    assert len(two.calls) == 1  # nothing else was attempted on it


async def test_a_sweep_runs_only_the_blocking_checks() -> None:
    one, two = pair()
    report = await doctor(two_sparks(), {"spark1": healthy(one, "192.168.100.1"), "spark2": healthy(two, "192.168.100.2")},
                          only=BLOCKING_CHECKS)
    assert {f.check for f in report.findings} == set(BLOCKING_CHECKS)
    assert not any(call[0] == "date" for call in one.commands())


def test_meminfo_parses_to_bytes() -> None:
    assert parse_meminfo("MemTotal:  2 kB\nHugePages_Total:  0\n") == {"MemTotal": 2048, "HugePages_Total": 0}
