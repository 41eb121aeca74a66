"""Regenerate tests/telemetry/data/vllm_cpu_metrics.txt: the /metrics page of the real vLLM CPU build.

    PYTHONPATH=$PWD:$PWD/tests .venv/bin/python tests/telemetry/capture_vllm_metrics.py

Starts the tiny model on loopback (as the vllm-marked tests do), sends a few streamed requests, two of them
sharing a long prefix so the prefix cache has hits, and saves the page. Needs scripts/setup-vllm (~1 min).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx

from support.fixtures import tiny_vllm_recipe
from support.tiny_model import build_tiny_model
from support.vllm_server import start_solo, vllm_executable

OUT = Path(__file__).parent / "data" / "vllm_cpu_metrics.txt"


def main() -> int:
    if vllm_executable() is None:
        print("no vLLM CPU build (.venv-vllm); run scripts/setup-vllm", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="topo-capture-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model")
        recipe = tiny_vllm_recipe(model_dir)
        with start_solo(model_dir, Path(tmp) / "logs", model_flags=recipe.serve_flags(1),
                        extra_env=recipe.env) as server:
            prefix = "The quick brown fox jumps over the lazy dog. " * 40
            with httpx.Client(base_url=server.base_url, timeout=120) as client:
                for suffix in ("first question?", "second question?", "third, unrelated."):
                    body = {"model": server.served_model_name, "prompt": prefix + suffix, "max_tokens": 8,
                            "stream": True, "ignore_eos": True}
                    with client.stream("POST", "/v1/completions", json=body) as response:
                        response.raise_for_status()
                        for _ in response.iter_bytes():
                            pass
                text = client.get("/metrics").text
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
