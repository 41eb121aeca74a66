"""`twin serve` takes vLLM's serving flags (the argv topo renders for `vllm serve`) and names what it rejects."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from common.errors import ConfigError
from twin.cli import card_for_model, parse_serve_args
from twin.launch import engine_config_kwargs
from twin.engine import EngineConfig
from twin.profiles import load_card

STUDY_ARGV = [
    "google/gemma-4-26B-A4B-it", "-tp", "2", "--distributed-executor-backend", "mp", "--nnodes", "2",
    "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29501", "--headless",
    "--served-model-name", "gemma4-26b", "--quantization", "fp8", "--kv-cache-dtype", "fp8",
    "--gpu-memory-utilization", "0.70", "--max-model-len", "262144", "--max-num-batched-tokens", "8192",
    "--max-num-seqs", "128", "--enforce-eager", "--trust-remote-code", "--no-enable-prefix-caching",
    "--dtype", "auto", "--load-format", "dummy", "--seed", "7", "--port", "8001", "--host", "10.0.0.2",
]


def test_the_study_argv_parses_into_every_field() -> None:
    args = parse_serve_args(STUDY_ARGV)
    assert args.model == "google/gemma-4-26B-A4B-it"
    assert args.card == "gemma4-26b"  # the Hugging Face id maps to the card
    assert args.served_model_name == "gemma4-26b"
    assert (args.tensor_parallel_size, args.nnodes, args.node_rank, args.headless) == (2, 2, 1, True)
    assert (args.master_addr, args.master_port, args.host, args.port) == ("10.0.0.1", 29501, "10.0.0.2", 8001)
    assert args.executor == "mp"
    assert args.enable_prefix_caching is False and args.enforce_eager and args.trust_remote_code
    assert (args.max_model_len, args.max_num_batched_tokens, args.max_num_seqs) == (262144, 8192, 128)
    assert args.gpu_memory_utilization == 0.70 and args.seed == 7 and args.load_format == "dummy"
    kw = engine_config_kwargs(args, load_card(args.card).quantization_bytes)
    assert kw["weight_bytes_per_param"] == 1.0 and kw["kv_cache_bytes_per_element"] == 1.0
    assert kw["tensor_parallel"] == 2 and kw["executor"] == "mp" and kw["nnodes"] == 2
    config = EngineConfig.from_names("gb10", args.card, **kw)  # what the engine accepts
    assert config.effective_max_model_len == 262144


def test_model_positional_or_flag_and_defaults() -> None:
    by_flag = parse_serve_args(["--model", "tiny"])
    assert by_flag.model == "tiny" and by_flag.card == "tiny" and by_flag.served_model_names == ("tiny",)
    assert by_flag.executor == "uni" and by_flag.hardware == "gb10" and by_flag.port == 8000
    assert parse_serve_args(["tiny", "--model", "tiny"]).model == "tiny"
    many = parse_serve_args(["tiny", "--served-model-name", "a", "b"])
    assert many.served_model_names == ("a", "b") and many.served_model_name == "a"
    ray = parse_serve_args(["tiny", "-tp", "2", "--distributed-executor-backend", "ray"])
    assert ray.executor == "ray"
    assert parse_serve_args(["tiny", "-tp", "2"]).executor == "mp"  # vLLM's default on one node
    assert parse_serve_args(["/models/whatever", "--card", "tiny"]).card == "tiny"
    assert card_for_model("/srv/models/gemma-4-26B-A4B-it/") == "gemma4-26b"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["tiny", "--tensor-paralel-size", "2"], "--tensor-paralel-size"),  # a typo is an error, never a guess
        (["tiny", "--speculative-config", "{}"], "--speculative-config"),
        (["tiny", "-pp", "2"], "-pp/--pipeline-parallel-size 2"),
        (["tiny", "--distributed-executor-backend", "nccl"], "nccl"),
        (["tiny", "-tp", "2", "--nnodes", "2", "--node-rank", "1"], "--headless"),
        (["tiny", "--headless"], "--node-rank"),
        (["tiny", "--nnodes", "2", "--node-rank", "2", "-tp", "2", "--headless"], "--node-rank 2"),
        (["tiny", "--nnodes", "3", "-tp", "2"], "--nnodes 3"),
        (["tiny", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
        (["tiny", "--kv-cache-dtype", "int3"], "int3"),
        (["tiny", "--port", "70000"], "--port"),
        (["tiny", "-tp", "0"], "-tp/--tensor-parallel-size"),
        (["no-such-model"], "no-such-model"),
        ([], "no model"),
        (["tiny", "--model", "gemma4-26b"], "model given twice"),
        (["tiny", "-tp", "2", "--nnodes", "2", "--distributed-executor-backend", "ray"], "--nnodes"),
    ],
)
def test_bad_flags_are_config_errors_that_name_the_flag(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_serve_args(argv)
    assert named in str(info.value)


def test_unknown_quantization_names_the_choices() -> None:
    args = parse_serve_args(["gemma4-26b", "--quantization", "awq"])
    with pytest.raises(ConfigError, match=r"awq.*known: bf16, fp8, nvfp4"):
        engine_config_kwargs(args, load_card("gemma4-26b").quantization_bytes)
    nvfp4 = parse_serve_args(["gemma4-26b", "-q", "nvfp4"])
    assert engine_config_kwargs(nvfp4, load_card("gemma4-26b").quantization_bytes)["weight_bytes_per_param"] == 0.5625


def test_api_key_is_redacted_in_logs() -> None:
    args = parse_serve_args(["tiny", "--api-key", "hunter2"])
    assert args.api_key == "hunter2" and args.redacted()["api_key"] == "***"


def test_topo_twin_serve_passes_raw_vllm_flags_and_maps_errors_to_exit_2() -> None:
    from topo.cli import app

    result = CliRunner().invoke(app, ["twin", "serve", "tiny", "--hardware", "fast", "--bogus-flag", "1"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "--bogus-flag" in str(result.exception)
    # the real entry point: one red line, exit code 2
    proc = subprocess.run([sys.executable, "-m", "topo", "twin", "serve", "tiny", "-pp", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "pipeline" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "twin", "serve", "tiny", "--wat"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--wat" in proc.stderr


def test_help_lists_vllm_and_twin_flags() -> None:
    proc = subprocess.run([sys.executable, "-m", "twin", "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--tensor-parallel-size", "--headless", "--distributed-executor-backend", "--hardware", "--card"):
        assert flag in proc.stdout


def test_every_twin_argv_topo_plans_is_accepted() -> None:
    """The contract with topology/: whatever `topo plan` renders for the twin, the twin parses."""
    import json

    proc = subprocess.run(
        [sys.executable, "-m", "topo", "plan", "--model", "gemma4-26b", "-f", "json"],
        capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0:
        pytest.skip(f"topo plan is not available: {proc.stderr[-300:]}")

    def twin_argvs(node: object) -> list[list[str]]:
        found = []
        if isinstance(node, dict):
            argv = node.get("argv")
            if isinstance(argv, list) and "twin" in argv and "serve" in argv:
                found.append([str(a) for a in argv])
            for value in node.values():
                found.extend(twin_argvs(value))
        elif isinstance(node, list):
            for value in node:
                found.extend(twin_argvs(value))
        return found

    argvs = twin_argvs(json.loads(proc.stdout))
    assert len(argvs) >= 6  # solo 1, tp2-mp 2, tp2-ray 1, 2x-solo 2
    for argv in argvs:
        args = parse_serve_args(argv[argv.index("serve") + 1 :])
        assert args.card == "gemma4-26b"


def test_the_link_follows_the_env_the_plan_gives_the_engine() -> None:
    """Without --link the twin picks its transport as NCCL would, from its process env; --link overrides."""
    args = parse_serve_args(["tiny", "-tp", "2"])
    assert args.link is None
    kw = lambda env: engine_config_kwargs(args, None, env=env)["link"]  # noqa: E731
    assert kw({"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}) == "roce1"  # NCCL detects one twin
    assert kw({"NCCL_SOCKET_IFNAME": "lo", "NCCL_IB_DISABLE": "1"}) == "sockets"
    assert kw({"NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1"}) == "roce2"
    assert kw({"NCCL_IB_HCA": "rocep1s0f1"}) == "roce1"
    assert kw({"NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1", "NCCL_IB_DISABLE": "1"}) == "sockets"
    forced = parse_serve_args(["tiny", "-tp", "2", "--link", "roce1"])
    assert engine_config_kwargs(forced, None, env={"NCCL_IB_HCA": "a,b"})["link"] == "roce1"
    with pytest.raises(ConfigError, match="--link"):
        parse_serve_args(["tiny", "--link", "roce"])
