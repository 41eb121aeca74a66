"""Env secrets (`{secret: VAR}`, `{secret_file: PATH}`): `***` in plan text and JSON, stored configs and
errors; real only where a node receives them, and then never in an argv."""

from __future__ import annotations

import pytest
import yaml

from cluster.connector import masked_command, run_checked
from cluster.fake import FakeConnector
from cluster.connector import Completed
from common.config import SecretRef
from common.errors import ConfigError, RemoteCommandError
from common.masking import mask_command_line, mask_url_credentials
from topology.inventory import Cluster, load_cluster
from topology.kinds import parse_topology, plan
from topology.plan import Secret, reveal
from topology.render import plan_json, plan_text

FROM_ENV = "hf_env_s3cret_value"
FROM_FILE = "file_s3cret_value"


@pytest.fixture
def secret_cluster(two_sparks: Cluster, tmp_path, monkeypatch) -> Cluster:
    monkeypatch.setenv("TOPO_TEST_HF_TOKEN", FROM_ENV)
    secret_file = tmp_path / "token"
    secret_file.write_text(FROM_FILE + "\n")
    nodes = []
    for node in two_sparks.nodes:
        engine = node.engine.model_copy(update={"launcher": "docker", "vllm": None, "image": "vllm/vllm:x"})
        env = {"HF_TOKEN": SecretRef(secret="TOPO_TEST_HF_TOKEN"), "OTHER": SecretRef(secret_file=str(secret_file)),
               "PLAIN": "visible"}
        nodes.append(node.model_copy(update={"engine": engine, "env": env}))
    return two_sparks.model_copy(update={"nodes": tuple(nodes)})


def test_secrets_render_as_stars_in_plan_text_and_json(secret_cluster, gemma, plan_secrets):
    launch = plan(parse_topology("tp2-mp"), secret_cluster, gemma, secrets=plan_secrets)
    text = plan_text(launch).plain
    data = plan_json(launch)
    for shown in (text, data):
        assert FROM_ENV not in shown and FROM_FILE not in shown
        assert "TOPO_TEST_HF_TOKEN" not in shown  # not even where it comes from
    assert "HF_TOKEN=***" in text and "PLAIN=visible" in text
    assert '"HF_TOKEN": "***"' in data


def test_docker_gets_secrets_by_name_from_its_cli_environment_not_in_argv(secret_cluster, gemma, plan_secrets):
    launch = plan(parse_topology("solo"), secret_cluster, gemma, secrets=plan_secrets)
    (engine,) = [step for step in launch.steps() if step.role != "proxy"][:1]
    argv = [reveal(arg) for arg in engine.argv]
    assert argv[argv.index("HF_TOKEN") - 1] == "-e" and "PLAIN=visible" in argv
    assert not any(FROM_ENV in arg or FROM_FILE in arg for arg in argv)
    assert set(engine.env) == {"HF_TOKEN", "OTHER"}  # the docker CLI's env: only the secrets
    assert reveal(engine.env["HF_TOKEN"]) == FROM_ENV and reveal(engine.env["OTHER"]) == FROM_FILE


async def test_a_failing_command_names_the_secret_as_stars(secret_cluster, gemma, plan_secrets):
    launch = plan(parse_topology("solo"), secret_cluster, gemma, secrets=plan_secrets)
    engine = launch.steps()[0]
    fake = FakeConnector("n1")
    fake.script(["docker"], Completed(125, "", "docker: error"))
    with pytest.raises(RemoteCommandError) as caught:
        await run_checked(fake, engine.argv, env=engine.env)
    assert FROM_ENV not in str(caught.value) and "HF_TOKEN=***" in str(caught.value)
    assert FROM_ENV not in masked_command(engine.argv, engine.env)


def test_stored_configs_keep_the_reference_never_the_value(secret_cluster):
    stored = secret_cluster.model_dump_json()  # what meta.json's `cluster` holds
    assert FROM_ENV not in stored and FROM_FILE not in stored and "TOPO_TEST_HF_TOKEN" in stored


def test_a_missing_secret_names_the_config_key_when_a_node_needs_it(two_sparks, gemma, plan_secrets, monkeypatch):
    monkeypatch.delenv("TOPO_NOT_SET", raising=False)
    node = two_sparks.nodes[0].model_copy(update={"env": {"HF_TOKEN": SecretRef(secret="TOPO_NOT_SET")}})
    cluster = two_sparks.model_copy(update={"nodes": (node, *two_sparks.nodes[1:])})
    launch = plan(parse_topology("solo"), cluster, gemma, secrets=plan_secrets)  # planning reads nothing
    with pytest.raises(ConfigError, match=rf"node '{node.name}' env.HF_TOKEN: .*TOPO_NOT_SET, which is not set"):
        reveal(launch.steps()[0].env["HF_TOKEN"])


def test_secret_references_load_from_yaml(tmp_path, two_sparks):
    data = yaml.safe_load(two_sparks.model_dump_json())
    data["nodes"][0]["env"] = {"HF_TOKEN": {"secret": "HF_TOKEN"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_cluster(path)
    assert isinstance(loaded.nodes[0].env["HF_TOKEN"], SecretRef)
    assert isinstance(Secret(ref=loaded.nodes[0].env["HF_TOKEN"]), Secret)


def test_url_credentials_and_secret_options_are_masked_for_storage():
    assert mask_url_credentials("GET http://user:pw@h:8000/v1 failed") == "GET http://***@h:8000/v1 failed"
    assert mask_command_line(["topo", "bench", "--url", "http://u:p@h/v1", "--api-key", "sk-1", "--api-key=sk-2"]) \
        == ["topo", "bench", "--url", "http://***@h/v1", "--api-key", "***", "--api-key=***"]
