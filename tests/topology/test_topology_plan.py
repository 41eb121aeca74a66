"""plan(): order, env, probes, stops per topology; docker launcher; local-twin; secrets; bad layouts."""

from __future__ import annotations

import builtins
import socket
import subprocess

import pytest
import yaml

from common.errors import PlanError
from topology.inventory import Cluster, TwinEngine
from topology.kinds import STUDY_TOPOLOGIES, PlanSecrets, parse_topology, plan
from topology.registry import Topology
from topology.plan import CommandProbe, HttpProbe, LaunchPlan, NoProbe, Secret, StopContainer, reveal
from topology.render import plan_json, plan_text


def with_nodes(cluster: Cluster, count: int) -> Cluster:
    return cluster.model_copy(update={"nodes": cluster.nodes[:count]})


def node_update(cluster: Cluster, index: int, **changes) -> Cluster:
    nodes = list(cluster.nodes)
    nodes[index] = nodes[index].model_copy(update=changes)
    return cluster.model_copy(update={"nodes": tuple(nodes)})


def dockerised(cluster: Cluster, image: str | None = None) -> Cluster:
    for index, node in enumerate(cluster.nodes):
        engine = node.engine.model_copy(update={"launcher": "docker", "vllm": None, "image": image})
        cluster = node_update(cluster, index, engine=engine)
    return cluster


# --- names ----------------------------------------------------------------------------------------------


def test_topology_names_round_trip_and_generalise():
    for name in STUDY_TOPOLOGIES:
        assert parse_topology(name).name == name
    assert parse_topology("tp4-mp") == Topology(tensor_parallel=4, executor="mp")
    assert parse_topology("tp4-ray") == Topology(tensor_parallel=4, executor="ray")
    assert parse_topology("4x-solo-shuffle") == Topology(replicas=4, router="simple-shuffle")
    assert parse_topology("2x-tp2-shuffle") == Topology(replicas=2, tensor_parallel=2, executor="mp",
                                                        router="simple-shuffle")
    assert parse_topology("tp8-mp").name == "tp8-mp" and parse_topology("3x-tp2-shuffle").nodes == 6
    for bad in ("tp1-mp", "1x-solo-shuffle", "2x-tp1-shuffle", "2x-solo-random", "tp2", "duo", ""):
        with pytest.raises(PlanError, match="unknown topology"):
            parse_topology(bad)


# --- layouts that cannot be planned ---------------------------------------------------------------------


@pytest.mark.parametrize("topology_name", ["tp2-mp", "tp2-ray", "2x-solo-shuffle"])
def test_two_node_topologies_on_one_node_are_plan_errors(topology_name, two_sparks, gemma, plan_secrets):
    one_node = with_nodes(two_sparks, 1).model_copy(update={"proxy": two_sparks.proxy})
    with pytest.raises(PlanError, match=r"needs 2 nodes but cluster 'two-sparks' has 1 \(spark1\)"):
        plan(parse_topology(topology_name), one_node, gemma, secrets=plan_secrets)
    assert plan(Topology(), one_node, gemma, secrets=plan_secrets).steps()[0].node == "spark1"


def test_node_env_may_not_override_the_fast_link(two_sparks, gemma, plan_secrets):
    cluster = node_update(two_sparks, 1, env={"GLOO_SOCKET_IFNAME": "lo"})
    with pytest.raises(PlanError, match="node 'spark2' sets GLOO_SOCKET_IFNAME.*fast_link"):
        plan(parse_topology("tp2-mp"), cluster, gemma, secrets=plan_secrets)


def test_ranks_of_one_engine_must_share_engine_and_launcher(two_sparks, gemma, plan_secrets):
    twin = TwinEngine(kind="twin", twin=("/opt/topo/bin/python", "-m", "twin"))
    mixed = node_update(two_sparks, 1, engine=twin)
    with pytest.raises(PlanError, match="same engine and launcher"):
        plan(parse_topology("tp2-ray"), mixed, gemma, secrets=plan_secrets)
    shuffle = plan(parse_topology("2x-solo-shuffle"), mixed, gemma, secrets=plan_secrets)  # fine behind a router
    assert shuffle.steps()[1].argv[:3] == ("/opt/topo/bin/python", "-m", "twin")


def test_ports_on_a_shared_host_must_differ(gemma, plan_secrets):
    from topology.inventory import load_cluster

    local = load_cluster("local-twin")
    same_port = node_update(local, 1, engine=local.nodes[1].engine.model_copy(update={"port": 8000}))
    plan(Topology(), same_port, gemma, secrets=plan_secrets)  # one engine: no collision
    with pytest.raises(PlanError, match="engine-node1 .*engine-node2 .*port 8000"):
        plan(parse_topology("2x-solo-shuffle"), same_port, gemma, secrets=plan_secrets)


# --- per topology ----------------------------------------------------------------------------------------


def test_every_engine_process_gets_its_own_nodes_network_env(two_sparks, gemma, plan_secrets):
    interfaces = {"spark1": ("192.168.100.1", "enp1s0f0np0"), "spark2": ("192.168.100.2", "enP2p1s0f1np1")}
    for name in STUDY_TOPOLOGIES:
        for step in plan(parse_topology(name), two_sparks, gemma, secrets=plan_secrets).steps():
            if step.role == "proxy":
                continue
            ip, interface = interfaces[step.node]
            assert step.env["VLLM_HOST_IP"] == ip
            for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME"):
                assert step.env[variable] == interface, (name, step.name, variable)
            assert step.env["HF_HOME"] == "/data/hf"


def test_tp_mp_starts_headless_ranks_first_and_stops_them_on_their_own(two_sparks, gemma, plan_secrets):
    four = two_sparks.model_copy(
        update={
            "nodes": two_sparks.nodes
            + tuple(
                two_sparks.nodes[1].model_copy(update={"name": f"spark{n}"}) for n in (3, 4)
            )
        }
    )
    recipe = gemma.model_copy(update={"max_model_len": {**gemma.max_model_len, "tp4": 262144}})
    launch_plan = plan(parse_topology("tp4-mp"), four, recipe, secrets=plan_secrets)
    first, second = launch_plan.stages
    assert [step.name for step in first.steps] == ["engine-rank1", "engine-rank2", "engine-rank3"]
    assert all(isinstance(step.probe, NoProbe) and "--headless" in step.argv for step in first.steps)
    (rank0,) = second.steps
    assert "--headless" not in rank0.argv and rank0.argv[rank0.argv.index("--node-rank") + 1] == "0"
    assert isinstance(rank0.probe, HttpProbe)
    assert [step.name for step in launch_plan.teardown_order()][0] == "engine-rank0"
    # the headless ranks are stopped as steps of their own, after rank 0
    assert {step.name for step in launch_plan.teardown_order()[1:]} == {"engine-rank1", "engine-rank2", "engine-rank3"}


def test_tp_ray_waits_for_every_ray_node_before_the_engine(two_sparks, gemma, plan_secrets):
    launch_plan = plan(parse_topology("tp2-ray"), two_sparks, gemma, secrets=plan_secrets)
    head, worker, engine = (stage.steps[0] for stage in launch_plan.stages)
    assert head.argv[:4] == ("/opt/vllm/.venv/bin/ray", "start", "--block", "--head")
    assert "--include-dashboard=false" in head.argv and "--include-dashboard=false" not in worker.argv
    assert worker.argv[worker.argv.index("--address") + 1] == "192.168.100.1:6379"
    assert worker.argv[worker.argv.index("--temp-dir") + 1] == "/tmp/topo/ray"
    assert isinstance(worker.probe, CommandProbe) and worker.probe.expect_min_matches == 2
    assert engine.env["RAY_ADDRESS"] == "192.168.100.1:6379"
    # the probe reads `ray status` as Ray 2.60 prints it
    ray_status = (
        "======== Autoscaler status: 2026-11-23 19:40:00 ========\nNode status\n"
        "---------------------------------------------------------------\nActive:\n"
        " 1 node_2f9c5d1e8a\n 1 node_77ab01cd33\nPending:\n (no pending nodes)\n"
        "Recent failures:\n (no failures)\n"
    )
    assert worker.probe.satisfied_by(ray_status)
    assert not worker.probe.satisfied_by(ray_status.replace(" 1 node_77ab01cd33\n", ""))
    assert head.probe.satisfied_by(ray_status.replace(" 1 node_77ab01cd33\n", ""))  # type: ignore[union-attr]


def test_shuffle_router_config_and_secret_wiring(two_sparks, gemma, plan_secrets, real_master_key):
    launch_plan = plan(parse_topology("2x-solo-shuffle"), two_sparks, gemma, secrets=plan_secrets)
    engines, (proxy,) = (stage.steps for stage in launch_plan.stages)
    assert [step.node for step in engines] == ["spark1", "spark2"]
    (path, content), = proxy.files.items()
    assert proxy.argv[proxy.argv.index("--config") + 1] == path
    router = yaml.safe_load(content)
    assert [entry["model_name"] for entry in router["model_list"]] == ["gemma4-26b", "gemma4-26b"]
    assert [entry["model_info"]["id"] for entry in router["model_list"]] == ["spark1", "spark2"]
    assert router["model_list"][1]["litellm_params"]["api_base"] == "http://192.168.100.2:8000/v1"
    assert router["router_settings"] == {"routing_strategy": "simple-shuffle", "num_retries": 0}
    assert real_master_key not in content
    assert reveal(proxy.env["LITELLM_MASTER_KEY"]) == real_master_key
    assert proxy.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert reveal(launch_plan.endpoint_headers["Authorization"]) == f"Bearer {real_master_key}"
    assert launch_plan.endpoint == "http://10.88.0.1:4000/v1"
    assert isinstance(proxy.probe, HttpProbe) and proxy.probe.urls == ("http://10.88.0.1:4000/health/liveliness",)


def test_the_proxy_drops_idle_engine_connections_before_the_engines_do(two_sparks, gemma, plan_secrets):
    def pool_idle(cluster: Cluster, recipe=gemma) -> str:
        launch_plan = plan(parse_topology("2x-solo-shuffle"), cluster, recipe, secrets=plan_secrets)
        return launch_plan.steps()[-1].env["AIOHTTP_KEEPALIVE_TIMEOUT"]

    assert pool_idle(two_sparks) == "2"  # vLLM closes idle connections after 5 s; LiteLLM would keep them 120 s
    longer = gemma.model_copy(update={"env": {**gemma.env, "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "30"}})
    assert pool_idle(two_sparks, longer) == "15"
    # the node's own setting wins over the recipe's, and the shortest engine decides
    one_short = node_update(two_sparks, 1, env={"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "8"})
    assert pool_idle(one_short, longer) == "4"
    with pytest.raises(PlanError, match="VLLM_HTTP_TIMEOUT_KEEP_ALIVE=1 is too short"):
        pool_idle(node_update(two_sparks, 0, env={"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "1"}))
    with pytest.raises(PlanError, match="node 'spark1': VLLM_HTTP_TIMEOUT_KEEP_ALIVE='soon'"):
        pool_idle(node_update(two_sparks, 0, env={"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "soon"}))


def test_proxy_on_the_controller_reaches_engines_at_their_client_address(two_sparks, gemma, plan_secrets):
    cluster = two_sparks.model_copy(update={"proxy": two_sparks.proxy.model_copy(update={"node": "controller"})})
    launch_plan = plan(parse_topology("2x-solo-shuffle"), cluster, gemma, secrets=plan_secrets)
    proxy = launch_plan.steps()[-1]
    assert proxy.node == "controller" and launch_plan.endpoint == "http://127.0.0.1:4000/v1"
    router = yaml.safe_load(next(iter(proxy.files.values())))
    assert [entry["litellm_params"]["api_base"] for entry in router["model_list"]] == [
        "http://10.88.0.1:8000/v1",
        "http://10.88.0.2:8000/v1",
    ]


# --- secrets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology_name", STUDY_TOPOLOGIES)
def test_secrets_never_print(topology_name, two_sparks, gemma, plan_secrets, real_master_key):
    launch_plan = plan(parse_topology(topology_name), two_sparks, gemma, secrets=plan_secrets)
    for printed in (plan_text(launch_plan).plain, plan_json(launch_plan), repr(launch_plan), str(launch_plan)):
        assert real_master_key not in printed
    # the whole plan survives a dump/validate round trip (e.g. handed to another process) with the value
    assert LaunchPlan.model_validate(launch_plan.model_dump()) == launch_plan


def test_generated_secrets_are_fresh():
    first, second = PlanSecrets.generate(), PlanSecrets.generate()
    assert first.litellm_master_key.secret.startswith("sk-")
    assert first.litellm_master_key.secret != second.litellm_master_key.secret
    assert str(first.litellm_master_key) == "***"


# --- docker launcher -------------------------------------------------------------------------------------


def test_docker_launcher_renders_foreground_docker_run_with_env_file(two_sparks, gemma, plan_secrets):
    cluster = dockerised(two_sparks)
    step = plan(Topology(), cluster, gemma, secrets=plan_secrets).steps()[0]
    argv = list(step.argv)
    # foreground (no -d) and no --rm: the supervised `docker run` lives as long as the container
    assert argv[:11] == ["docker", "run", "--name", "topo-solo-spark1", "--label", "topo.cluster=two-sparks",
                         "--network", "host", "--ipc", "host", "--gpus"]
    assert "-d" not in argv and "--rm" not in argv and "-e" not in argv
    env_file = argv[argv.index("--env-file") + 1]
    assert env_file == "/tmp/topo/solo/topo-solo-spark1.env"
    assert step.files[env_file].splitlines()[:2] == ["VLLM_HOST_IP=192.168.100.1", "GLOO_SOCKET_IFNAME=enp1s0f0np0"]
    image_at = argv.index("vllm/vllm-openai:v0.19.1")  # the recipe's image
    assert argv[image_at - 2 : image_at + 3] == ["--entrypoint", "vllm", "vllm/vllm-openai:v0.19.1", "serve",
                                                  "google/gemma-4-26B-A4B-it"]
    assert step.env == {}  # the container gets its env from the env file
    assert isinstance(step.stop, StopContainer) and step.stop.container == "topo-solo-spark1"
    assert step.stop.stop_argv() == ("docker", "stop", "-t", "30", "topo-solo-spark1")
    assert step.stop.remove_argv() == ("docker", "rm", "-f", "topo-solo-spark1")


def test_docker_gpus_only_where_the_node_has_them(two_sparks, gemma, plan_secrets):
    cluster = dockerised(two_sparks)
    engine = cluster.head.engine.model_copy(update={"gpus": None, "docker_args": ("--pull", "never")})
    argv = plan(parse_topology("solo"), node_update(cluster, 0, engine=engine), gemma, secrets=plan_secrets).steps()[0].argv
    assert "--gpus" not in argv
    assert argv[argv.index("--pull") - 2 : argv.index("--pull") + 3] == (
        "--env-file", "/tmp/topo/solo/topo-solo-spark1.env", "--pull", "never", "--entrypoint")


def test_env_with_a_line_break_cannot_go_into_an_env_file(two_sparks, gemma, plan_secrets):
    cluster = node_update(dockerised(two_sparks), 0, env={"HF_HOME": "/data\nX=1"})
    with pytest.raises(PlanError, match="line break"):
        plan(parse_topology("solo"), cluster, gemma, secrets=plan_secrets)


def test_docker_node_image_wins_and_missing_image_is_a_plan_error(two_sparks, gemma, plan_secrets):
    own = plan(Topology(), dockerised(two_sparks, image="spark/vllm-node:20260405"), gemma, secrets=plan_secrets)
    assert "spark/vllm-node:20260405" in own.steps()[0].argv
    no_image = gemma.model_copy(update={"image": None})
    with pytest.raises(PlanError, match="neither its engine.image nor recipe 'gemma4-26b'"):
        plan(Topology(), dockerised(two_sparks), no_image, secrets=plan_secrets)


def test_docker_tp_topologies_use_one_container_per_process(two_sparks, gemma, plan_secrets):
    cluster = dockerised(two_sparks)
    names = []
    for topology_name in ("tp2-mp", "tp2-ray"):
        for step in plan(parse_topology(topology_name), cluster, gemma, secrets=plan_secrets).steps():
            names.append(step.argv[step.argv.index("--name") + 1])
            assert step.stop.container == names[-1]  # type: ignore[union-attr]
    assert len(names) == len(set(names)) == 5
    ray_head = plan(parse_topology("tp2-ray"), cluster, gemma, secrets=plan_secrets).steps()[0]
    assert ray_head.probe.argv[:4] == ("docker", "exec", "topo-tp2-ray-spark1-ray", "ray")  # type: ignore[union-attr]
    assert "/tmp/topo:/tmp/topo" in ray_head.argv  # Ray's --temp-dir lives in the workdir


# --- local-twin ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology_name", STUDY_TOPOLOGIES)
def test_local_twin_plans_run_the_twin_with_argv_it_accepts(topology_name, gemma, plan_secrets):
    from topology.inventory import load_cluster
    from twin.cli import parse_serve_args

    cluster = load_cluster("local-twin")
    launch_plan = plan(parse_topology(topology_name), cluster, gemma, secrets=plan_secrets)
    for step in launch_plan.steps():
        if not step.role.startswith("engine"):
            continue
        engine = cluster.node(step.node).engine
        assert isinstance(engine, TwinEngine)
        assert step.argv[: len(engine.twin) + 1] == (*engine.twin, "serve")
        args = parse_serve_args([reveal(arg) for arg in step.argv[len(engine.twin) + 1 :]])
        assert (args.card, args.hardware, args.port) == ("gemma4-26b", "gb10", engine.port)
        assert args.tensor_parallel_size == (1 if topology_name in ("solo", "2x-solo-shuffle") else 2)
    assert launch_plan.endpoint.startswith("http://127.0.0.1:")


# --- purity ----------------------------------------------------------------------------------------------


def test_plan_does_no_io(monkeypatch, two_sparks, gemma, plan_secrets):
    def refuse(*args, **kwargs):
        raise AssertionError("plan() must not do I/O")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    for name in STUDY_TOPOLOGIES:
        plan(parse_topology(name), two_sparks, gemma, secrets=plan_secrets)
        plan(parse_topology(name), dockerised(two_sparks), gemma, secrets=plan_secrets)


# --- the fast link's RoCE devices ------------------------------------------------------------------------


def with_rdma(cluster: Cluster, *devices: str) -> Cluster:
    for index, node in enumerate(cluster.nodes):
        cluster = node_update(cluster, index, fast_link=node.fast_link.model_copy(update={"rdma": devices}))
    return cluster


def test_rdma_devices_turn_nccl_to_roce_on_every_engine_process(two_sparks, gemma, plan_secrets):
    cluster = with_rdma(two_sparks, "rocep1s0f1", "roceP2p1s0f1")
    for name in STUDY_TOPOLOGIES:
        launch_plan = plan(parse_topology(name), cluster, gemma, secrets=plan_secrets)
        assert launch_plan.notes == ()
        for step in launch_plan.steps():
            if step.role == "proxy":
                assert "NCCL_IB_HCA" not in step.env
                continue
            interface = cluster.node(step.node).fast_link.interface
            assert step.env["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1" and step.env["NCCL_IB_DISABLE"] == "0"
            assert step.env["UCX_NET_DEVICES"] == step.env["OMPI_MCA_btl_tcp_if_include"] == interface
            under_ray = name == "tp2-ray"
            assert (step.env.get("RAY_memory_monitor_refresh_ms") == "0") == under_ray, (name, step.name)


def test_without_rdma_spanning_plans_note_the_detected_twin_and_one_twin_is_noted_too(two_sparks, gemma,
                                                                                       plan_secrets):
    for name in ("tp2-mp", "tp2-ray"):
        notes = plan(parse_topology(name), two_sparks, gemma, secrets=plan_secrets).notes
        assert len(notes) == 2 and all("NCCL picks the RoCE device it detects, one twin" in note for note in notes)
        assert all("TCP sockets over" in note and "/dev/infiniband" in note for note in notes)
        assert "NCCL_IB_HCA" not in plan(parse_topology(name), two_sparks, gemma, secrets=plan_secrets).steps()[0].env
    for name in ("solo", "2x-solo-shuffle"):  # no engine spans nodes: NCCL does not cross the link
        assert plan(parse_topology(name), two_sparks, gemma, secrets=plan_secrets).notes == ()
    one_twin = plan(parse_topology("tp2-mp"), with_rdma(two_sparks, "rocep1s0f1"), gemma, secrets=plan_secrets)
    assert len(one_twin.notes) == 2 and all("one RoCE device (rocep1s0f1)" in note for note in one_twin.notes)
    assert "note: node spark1: NCCL will use one RoCE device" in plan_text(one_twin).plain


def test_node_env_may_override_what_rdma_renders_but_not_the_fast_link_itself(two_sparks, gemma, plan_secrets):
    cluster = node_update(with_rdma(two_sparks, "rocep1s0f1", "roceP2p1s0f1"), 1, env={"NCCL_IB_HCA": "mlx5_0:1"})
    steps = plan(parse_topology("tp2-mp"), cluster, gemma, secrets=plan_secrets).steps()
    assert {step.node: step.env["NCCL_IB_HCA"] for step in steps} == {"spark2": "mlx5_0:1",
                                                                     "spark1": "rocep1s0f1,roceP2p1s0f1"}
    with pytest.raises(PlanError, match="node 'spark2' sets NCCL_SOCKET_IFNAME: these come from the node's fast_link"):
        plan(parse_topology("tp2-mp"), node_update(two_sparks, 1, env={"NCCL_SOCKET_IFNAME": "eth0"}), gemma,
             secrets=plan_secrets)
