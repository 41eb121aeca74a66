"""Bring-up and teardown on in-memory nodes: order, readiness, failures, cancellation, pre-flight."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cluster.bringup import BringUpSettings, NodeAccess, bring_up
from cluster.connector import Completed
from cluster.fake import FakeBehaviour, FakeConnector
from common.errors import BringUpError, ConnectError, ReadinessTimeout, TeardownError
from topology.plan import CommandProbe, HttpProbe, LaunchPlan, Secret, Stage, Step, StopByProcessGroup

FAST = BringUpSettings(poll_s=0.01, log_every_s=0.0, prove_s=0.1, stop_grace_s=0.05)
KEY = Secret(secret="sk-very-secret")


def http(port: int, timeout_s: float = 5.0) -> HttpProbe:
    return HttpProbe(urls=(f"http://n/{port}/health", f"http://n/{port}/v1/models"), timeout_s=timeout_s)


def two_stage_plan(rank0_timeout_s: float = 5.0) -> LaunchPlan:
    """tp2-mp shaped: the headless rank first, then rank 0 (probed), then a proxy with a secret."""
    return LaunchPlan(
        topology="tp2-mp",
        cluster="fake",
        model="tiny",
        served_model_name="tiny",
        endpoint="http://n/4000/v1",
        endpoint_headers={"Authorization": KEY},
        stages=(
            Stage(steps=(Step(name="engine-rank1", node="n2", role="engine-headless", argv=("twin", "rank1")),)),
            Stage(
                steps=(
                    Step(
                        name="engine-rank0",
                        node="n1",
                        role="engine",
                        argv=("twin", "rank0"),
                        env={"VLLM_HOST_IP": "10.0.0.1"},
                        probe=http(8000, rank0_timeout_s),
                        stop=StopByProcessGroup(ports=(8000,)),
                    ),
                )
            ),
            Stage(
                steps=(
                    Step(
                        name="proxy",
                        node="n1",
                        role="proxy",
                        argv=("litellm", "--config", "/w1/router.yaml"),
                        env={"LITELLM_MASTER_KEY": KEY},
                        files={"/w1/router.yaml": "model_list: []\n"},
                        probe=HttpProbe(urls=("http://n/4000/health/liveliness",), timeout_s=5),
                        stop=StopByProcessGroup(ports=(4000,)),
                    ),
                )
            ),
        ),
    )


class Nodes:
    def __init__(self) -> None:
        self.n1 = FakeConnector("n1")
        self.n2 = FakeConnector("n2")
        self.n1.on_start("rank0", FakeBehaviour(ports=(8000,), log="loading weights\nserving on :8000\n"))
        self.n1.on_start("litellm", FakeBehaviour(ports=(4000,), log="proxy up\n"))
        self.n2.on_start("rank1", FakeBehaviour(log="waiting for rank 0\n"))
        self.access = {"n1": NodeAccess("n1", self.n1, "/w1"), "n2": NodeAccess("n2", self.n2, "/w2")}
        self.requests: list[httpx.Request] = []

    def transport(self) -> httpx.MockTransport:
        """An HTTP port answers 200 while a live fake process listens on it."""

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            port = int(request.url.path.split("/")[1])
            if any(port in p.listening and p.alive for p in self.n1.processes.values()):
                return httpx.Response(200, json={})
            raise httpx.ConnectError("refused", request=request)

        return httpx.MockTransport(handler)

    def all_alive(self) -> list[str]:
        return [" ".join(p.argv) for fake in (self.n1, self.n2) for p in fake.processes.values() if p.alive]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str]] = []

    def event(self, step: str | None, message: str, *, log_line: bool = False) -> None:
        self.seen.append((step, message))


async def test_stages_start_in_order_and_everything_is_torn_down_in_reverse() -> None:
    nodes, events = Nodes(), Events()
    async with bring_up(two_stage_plan(), nodes.access, progress=events, settings=FAST, http_transport=nodes.transport()) as running:
        assert sorted(nodes.all_alive()) == ["litellm --config /w1/router.yaml", "twin rank0", "twin rank1"]
        assert set(running.processes) == {"engine-rank1", "engine-rank0", "proxy"}
        assert running.bring_up_s > 0 and set(running.ready_s) == {"engine-rank1", "engine-rank0", "proxy"}
        assert running.endpoint_headers() == {"Authorization": "sk-very-secret"}
        # the router file was written before the proxy started
        kinds = [call.kind for call in nodes.n1.calls if call.kind in ("write", "start")]
        assert kinds == ["start", "write", "start"]
        assert nodes.n1.files["/w1/router.yaml"] == "model_list: []\n"
    assert nodes.all_alive() == []
    assert [outcome.step for outcome in running.stopped] == ["proxy", "engine-rank0", "engine-rank1"]
    assert running.teardown_s is not None
    assert nodes.n1.pidfiles() == [] and nodes.n2.pidfiles() == []
    # probes ran in order: /health before /v1/models
    paths = [r.url.path for r in nodes.requests if r.url.path.startswith("/8000")]
    assert paths[:2] == ["/8000/health", "/8000/v1/models"]
    # the secret only ever reaches the node, never a shown command or progress line
    proxy_call = next(call for call in nodes.n1.calls if call.kind == "start" and call.argv[0] == "litellm")
    assert proxy_call.env["LITELLM_MASTER_KEY"] == "sk-very-secret"
    assert "sk-very-secret" not in proxy_call.shown and "LITELLM_MASTER_KEY=***" in proxy_call.shown
    assert all("sk-very-secret" not in message for _, message in events.seen)


async def test_a_process_that_dies_at_start_fails_with_its_log_tail_and_the_rest_is_torn_down() -> None:
    nodes = Nodes()
    nodes.n1.on_start("rank0", FakeBehaviour(exits_at_start=True, log="ValueError: bad flag --foo\n"))
    with pytest.raises(BringUpError, match=r"engine-rank0 on node 'n1' exited during bring-up") as caught:
        async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()):
            pytest.fail("must not get here")
    assert "ValueError: bad flag --foo" in str(caught.value)
    assert nodes.all_alive() == []  # rank 1 was started and is stopped again
    assert nodes.n2.process("rank1").signals == ["TERM"]
    assert not [c for c in nodes.n1.calls if c.kind == "start" and c.argv[0] == "litellm"]


async def test_a_headless_rank_dying_while_rank0_loads_is_reported_by_name() -> None:
    nodes = Nodes()
    nodes.n1.on_start("rank0", FakeBehaviour(ports=()))  # never listens: rank 0 keeps loading

    async def crash_rank1_soon() -> None:
        await asyncio.sleep(0.05)
        nodes.n2.exit_process("rank1", log="RuntimeError: lost rank 0\n")

    crash = asyncio.ensure_future(crash_rank1_soon())
    with pytest.raises(BringUpError, match="engine-rank1 on node 'n2' exited") as caught:
        async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()):
            pass
    await crash
    assert "lost rank 0" in str(caught.value)
    assert nodes.all_alive() == []


async def test_readiness_timeout_carries_the_log_tail_and_tears_down() -> None:
    nodes = Nodes()
    nodes.n1.on_start("rank0", FakeBehaviour(ports=(), log="still loading shard 3/9\n"))
    events = Events()
    with pytest.raises(ReadinessTimeout, match=r"did not pass its readiness probe .*within 0.2 s") as caught:
        async with bring_up(
            two_stage_plan(rank0_timeout_s=0.2), nodes.access, progress=events, settings=FAST, http_transport=nodes.transport()
        ):
            pass
    assert "still loading shard 3/9" in str(caught.value)
    assert ("engine-rank0", "still loading shard 3/9") in events.seen  # log lines are the progress while waiting
    assert nodes.all_alive() == []


async def test_an_error_in_the_body_still_tears_down_and_propagates() -> None:
    nodes = Nodes()
    with pytest.raises(KeyError, match="boom"):
        async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()):
            raise KeyError("boom")
    assert nodes.all_alive() == []


async def test_cancellation_while_waiting_tears_down_everything_started() -> None:
    nodes = Nodes()
    nodes.n1.on_start("rank0", FakeBehaviour(ports=()))  # waits forever for rank 0

    async def run() -> None:
        async with bring_up(two_stage_plan(rank0_timeout_s=60), nodes.access, settings=FAST, http_transport=nodes.transport()):
            pass

    task = asyncio.ensure_future(run())
    while len(nodes.all_alive()) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert nodes.all_alive() == []
    assert nodes.n1.pidfiles() == [] and nodes.n2.pidfiles() == []


async def test_a_teardown_failure_after_a_bring_up_failure_becomes_a_note() -> None:
    nodes = Nodes()
    nodes.n2.on_start("rank1", FakeBehaviour(ignores_term=True, survives_kill=True))
    nodes.n1.on_start("rank0", FakeBehaviour(exits_at_start=True, log="oom\n"))
    with pytest.raises(BringUpError) as caught:
        async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()):
            pass
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "teardown left something behind" in notes and "engine-rank1" in notes


async def test_a_teardown_failure_after_success_is_a_teardown_error() -> None:
    nodes = Nodes()
    nodes.n1.on_start("litellm", FakeBehaviour(ports=(4000,), leaves_port_open=True))
    with pytest.raises(TeardownError, match=r"proxy on node 'n1': port\(s\) 4000 still listening"):
        async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()):
            pass
    # the other steps were still stopped after the proxy's failure
    assert [p for p in nodes.all_alive()] == []


async def test_preflight_busy_port_starts_nothing() -> None:
    nodes = Nodes()
    nodes.n1.other_listeners.add(8000)
    with pytest.raises(BringUpError, match=r"node 'n1': port\(s\) 8000 the plan needs are already in use"):
        async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()):
            pass
    assert nodes.n1.commands("start") == [] and nodes.n2.commands("start") == []


async def test_preflight_refuses_live_processes_of_an_earlier_run_and_clears_dead_pidfiles() -> None:
    nodes = Nodes()
    earlier = await nodes.n2.start(["twin", "old"], log_path="/w2/logs/engine-old.log", pidfile="/w2/run/engine-old.pid")
    nodes.n1.files["/w1/run/dead.pid"] = "99999\n"
    with pytest.raises(BringUpError, match=rf"earlier topo run: engine-old \(process group {earlier}"):
        async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()):
            pass
    assert "/w1/run/dead.pid" not in nodes.n1.files
    assert nodes.n1.commands("start") == []


async def test_preflight_unreachable_node_is_a_connect_error_before_anything_starts() -> None:
    nodes = Nodes()
    nodes.n2.script(["true"], ConnectError("node 'n2': timed out connecting to root@10.88.0.2:22"))
    with pytest.raises(ConnectError, match="timed out"):
        async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()):
            pass
    assert nodes.n1.commands("start") == []


async def test_command_probe_waits_for_enough_matches() -> None:
    fake = FakeConnector("n1")
    fake.on_start("ray start", FakeBehaviour(ports=(6379,)))
    answers = iter(["Active:\n 1 node_aa\n", "Active:\n 1 node_aa\n", "Active:\n 1 node_aa\n 1 node_bb\n"])
    status_calls = []

    def ray_status(argv: tuple[str, ...]) -> Completed:
        status_calls.append(argv)
        return Completed(0, next(answers, "Active:\n 1 node_aa\n 1 node_bb\n"), "")

    fake.script(["ray", "status"], ray_status)
    probe = CommandProbe(argv=("ray", "status"), expect_pattern=r"^\s*1 node_[0-9a-f]+\s*$", expect_min_matches=2)
    plan = LaunchPlan(
        topology="tp2-ray", cluster="fake", model="tiny", served_model_name="tiny", endpoint="http://n/8000/v1",
        stages=(Stage(steps=(Step(name="ray-head", node="n1", role="ray-head", argv=("ray", "start", "--block"), probe=probe),)),),
    )
    async with bring_up(plan, {"n1": NodeAccess("n1", fake, "/w")}, settings=FAST) as running:
        assert len(status_calls) == 3
        assert "ray-head" in running.ready_s


async def test_plan_naming_an_unknown_node_is_a_config_error() -> None:
    from common.errors import ConfigError

    nodes = Nodes()
    with pytest.raises(ConfigError, match="n2"):
        async with bring_up(two_stage_plan(), {"n1": nodes.access["n1"]}, settings=FAST):
            pass


async def test_running_check_alive_reports_a_rank_that_died_after_bring_up() -> None:
    nodes = Nodes()
    async with bring_up(two_stage_plan(), nodes.access, settings=FAST, http_transport=nodes.transport()) as running:
        await running.check_alive()
        nodes.n2.exit_process("rank1", log="NCCL error: remote rank hung up\n")
        with pytest.raises(BringUpError, match="engine-rank1 on node 'n2' exited while the topology was up") as caught:
            await running.check_alive()
        assert "remote rank hung up" in str(caught.value)
    assert nodes.all_alive() == []
