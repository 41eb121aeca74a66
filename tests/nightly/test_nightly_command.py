"""`topo nightly`, `topo baseline`, `topo regress` as commands: tags, refusals before sweeping, the shipped
scheduler examples, and one real nightly sequence on a private local twin cluster (slow)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from common.config import CONFIGS_DIR
from tests.nightly.support import run_topo
from tests.support.local_cluster import write_local_cluster
from topo.nightly import read_tags, resolve_sweep

EXAMPLES = CONFIGS_DIR / "nightly"


def prediction(out: Path, *extra: str) -> Path:
    done = run_topo("predict", "--hardware", "fast", "-t", "solo", "-c", "1", "--runs", "2", "--out", out, *extra)
    assert done.returncode == 0, done.output
    return out


# ---- baseline tags ---------------------------------------------------------------------------------------


def test_a_tag_is_stored_relative_to_the_root_and_moves_when_set_again(tmp_path: Path) -> None:
    root = tmp_path / "results"
    first, second = prediction(root / "first"), prediction(root / "second")
    assert run_topo("baseline", "set", first, "--tag", "good", "--root", root).returncode == 0
    moved = run_topo("baseline", "set", second, "--tag", "good", "--root", root)
    assert moved.returncode == 0 and "(was first)" in moved.stdout
    stored = json.loads((root / "baselines.json").read_text())
    assert stored["tags"]["good"]["folder"] == "second"
    # the whole root can move: tags name folders relative to it
    moved_root = tmp_path / "elsewhere"
    root.rename(moved_root)
    assert resolve_sweep("good", moved_root) == moved_root / "second"
    listed = run_topo("baseline", "list", "--root", moved_root)
    assert "good" in listed.stdout and "second" in listed.stdout and "complete" in listed.stdout


def test_an_incomplete_sweep_needs_force_to_become_a_baseline(tmp_path: Path) -> None:
    folder = prediction(tmp_path / "results" / "partial")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "status": "incomplete"}))
    refused = run_topo("baseline", "set", folder, "--root", tmp_path / "results")
    assert refused.returncode == 2 and "not complete" in refused.stderr
    assert read_tags(tmp_path / "results") == {}
    assert run_topo("baseline", "set", folder, "--root", tmp_path / "results", "--force").returncode == 0
    assert read_tags(tmp_path / "results") == {"nightly": tmp_path / "results" / "partial"}


def test_a_damaged_meta_json_does_not_hide_the_history(tmp_path: Path) -> None:
    root = tmp_path / "results"
    prediction(root / "a")
    prediction(root / "b")
    (root / "a" / "meta.json").write_text("{not json")
    done = run_topo("history", "--root", root)
    assert done.returncode == 0, done.output
    assert "meta.json unreadable" in done.stdout and "complete" in done.stdout


def test_regress_names_the_known_tags_when_one_is_unknown(tmp_path: Path) -> None:
    root = tmp_path / "results"
    folder = prediction(root / "a")
    run_topo("baseline", "set", folder, "--tag", "good", "--root", root)
    done = run_topo("regress", "--baseline", "goood", "--current", folder, "--root", root)
    assert done.returncode == 2
    assert "'goood' is neither a results folder nor a tag" in done.stderr and "tags: good" in done.stderr


def test_regress_by_tag_names_the_tag_in_its_outputs(tmp_path: Path) -> None:
    root = tmp_path / "results"
    base, current = prediction(root / "base"), prediction(root / "current", "--seed", "3")
    run_topo("baseline", "set", base, "--tag", "good", "--root", root)
    done = run_topo("regress", "-b", "good", "--current", current, "--root", root, "--md", tmp_path / "v.md")
    assert done.returncode == 0, done.output
    assert "current vs good (base)" in (tmp_path / "v.md").read_text()


# ---- nightly: what it refuses before an hour of sweeping ------------------------------------------------


def test_nightly_without_the_required_baseline_stops_before_sweeping(tmp_path: Path) -> None:
    cluster = write_local_cluster(tmp_path / "cluster")
    root = tmp_path / "results"
    done = run_topo("nightly", "--cluster", cluster, "--model", "gemma4-26b", "--root", root, "--require-baseline")
    assert done.returncode == 2
    assert "no such tag" in done.stderr and "--require-baseline" in done.stderr
    assert not root.exists()


def test_nightly_refuses_a_baseline_of_another_load_before_sweeping(tmp_path: Path) -> None:
    cluster = write_local_cluster(tmp_path / "cluster")
    root = tmp_path / "results"
    baseline = prediction(root / "pp512", "--pp", "512")
    run_topo("baseline", "set", baseline, "--root", root)
    done = run_topo("nightly", "--cluster", cluster, "--model", "gemma4-26b", "--root", root)
    assert done.returncode == 2
    assert "pp is 512 in the baseline and 1024" in done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["baselines.json", "pp512"]


# ---- the shipped scheduler examples ----------------------------------------------------------------------


def github_expressions(text: str, env: dict[str, str]) -> str:
    """What the runner substitutes for `${{ ... }}` on a scheduled run (no inputs: the defaults apply)."""

    def value(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if expression.startswith("env."):
            return github_expressions(env[expression.removeprefix("env.")], env)
        if expression == "github.run_id":
            return "1234"
        fallback = re.fullmatch(r"inputs\.\w+ \|\| '([^']*)'", expression)
        assert fallback, f"unexpected expression {expression!r} in the workflow"
        return fallback.group(1)

    return re.sub(r"\$\{\{(.*?)\}\}", value, text)


def example_command_lines() -> dict[str, list[str]]:
    """The `topo nightly ...` argument list of each example, as its scheduler would run it."""
    service = (EXAMPLES / "topo-nightly.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", service, re.M)
    cron = next(line for line in (EXAMPLES / "crontab").read_text().splitlines()
                if line and not line.startswith("#") and "=" not in line.split()[0])
    workflow = yaml.safe_load((EXAMPLES / "github-actions-nightly.yml").read_text())
    steps = workflow["jobs"]["nightly"]["steps"]
    run = github_expressions(next(step["run"] for step in steps if step.get("name") == "Sweep and gate"),
                             workflow["env"])
    lines = {"systemd": exec_start.group(1) if exec_start else "", "cron": cron.split(" >> ")[0], "github": run}
    out = {}
    for name, line in lines.items():
        argv = shlex.split(line)
        out[name] = argv[next(i for i, a in enumerate(argv) if a.endswith("bin/topo")) + 1:]
    return out


def test_every_example_runs_topo_nightly_with_options_it_accepts(tmp_path: Path) -> None:
    commands = example_command_lines()
    assert set(commands) == {"systemd", "cron", "github"}
    for name, argv in commands.items():
        assert argv[0] == "nightly", name
        # the placeholders a user edits: their cluster file, their results root, the CI's expressions
        values = {"--cluster": str(CONFIGS_DIR / "clusters" / "two-sparks.yaml"), "--root": str(tmp_path / name),
                  "--out": str(tmp_path / name / "run"), "--junit": str(tmp_path / "j.xml"),
                  "--md": str(tmp_path / "v.md"), "--baseline": "nightly"}
        args = [values.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
        assert not any("${{" in a for a in args), args
        done = run_topo(*args, "--dry-run")
        assert done.returncode == 0, f"{name}: {done.output}"
        assert "none yet (tag 'nightly')" in done.stdout
        assert "tp2-ray" in done.stdout and not (tmp_path / name).exists()


def test_the_workflow_keeps_its_outputs_when_the_gate_fails() -> None:
    workflow = yaml.safe_load((EXAMPLES / "github-actions-nightly.yml").read_text())
    job = workflow["jobs"]["nightly"]
    assert "self-hosted" in job["runs-on"]
    upload = next(step for step in job["steps"] if "upload-artifact" in step.get("uses", ""))
    assert upload["if"] == "always()"  # exit 1 fails the job; the JUnit and the report still upload
    assert "regress.junit.xml" in upload["with"]["path"] and "report.html" in upload["with"]["path"]
    timer = (EXAMPLES / "topo-nightly.timer").read_text()
    assert re.search(r"^OnCalendar=\S", timer, re.M) and "WantedBy=timers.target" in timer


# ---- one real nightly sequence (wall clock) ----------------------------------------------------------------


def topo_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topo", *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "COLUMNS": "200"})


def failures(junit: Path) -> set[tuple[str, str]]:
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    return {(case.get("classname", "").removeprefix("topo.regress."), case.get("name", ""))
            for case in suite.iter("testcase") if case.find("failure") is not None}


@pytest.mark.slow
def test_first_night_then_a_clean_night_then_a_slower_decode(tmp_path: Path) -> None:
    """The command's whole path in wall-clock time on a private local twin cluster.

    gb10 at its own speed (x1): a modeled decode step is 15-25 ms, so the host's share of each step (HTTP,
    the TP=2 step exchange, scheduling on a busy 2-core machine: about 1.5 ms seen) stays a few percent of
    it. At x5 (3-5 ms steps) that share made a clean night on a loaded CI host read TP=2 c2 decode 27% below
    its baseline. The exact 10%-at-5% case is proven in virtual time (test_gate_on_predictions.py); here
    decode is made 25% slower and the threshold is 12%: above the drift, well below the change."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    normal, slower = profiles / "gb10-x1.yaml", profiles / "gb10-x1-slower-decode.yaml"
    normal.write_text("name: gb10-x1\nderived_from: gb10\nspeedup: 1\n")
    slower.write_text("name: gb10-x1-slower-decode\nderived_from: gb10\nspeedup: 1\ndecode_slowdown: 1.25\n")
    cluster = write_local_cluster(tmp_path / "cluster", hardware=str(normal))
    root = tmp_path / "results"
    nightly = ("nightly", "--cluster", cluster, "--model", "gemma4-26b", "-t", "solo,tp2-mp", "-c", "1,2",
               "--runs", "3", "--pp", "256", "--tg", "32", "--root", root, "--threshold", "12%")

    first = topo_process(*nightly, "--out", root / "1-first")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "no baseline yet" in first.stdout and "topo baseline set" in first.stdout
    assert not (root / "1-first" / "regress.junit.xml").exists()
    assert topo_process("baseline", "set", root / "1-first", "--root", root).returncode == 0

    clean = topo_process(*nightly, "--out", root / "2-clean")
    assert clean.returncode == 0, clean.stdout[-4000:]  # the same profile again: no alarm
    assert failures(root / "2-clean" / "regress.junit.xml") == set()

    slow = topo_process(*nightly, "--out", root / "3-slow", "--twin-hardware", slower)
    assert slow.returncode == 1, slow.stdout[-4000:]
    flagged = failures(root / "3-slow" / "regress.junit.xml")
    # c1 is pure decode after the first token (-20% by the model): both layouts must show it
    assert {("solo", "c1 decode_tps"), ("tp2-mp", "c1 decode_tps")} <= flagged
    assert {name.split()[1] for _, name in flagged} == {"decode_tps"}  # prefill and TTFT did not move
    meta = json.loads((root / "3-slow" / "meta.json").read_text())
    assert meta["nightly"]["exit_code"] == 1 and meta["nightly"]["baseline_folder"].endswith("1-first")
    # the report carries the verdict first and each cell's trend over the three nights
    report = (root / "3-slow" / "report.md").read_text()
    assert report.index("Regression gate") < report.index("Trend: Decode")
    trend = report.split("Trend: Decode")[1]
    assert all(name in trend for name in ("1-first", "2-clean", "3-slow"))
    assert "Trend: Decode" in (root / "3-slow" / "report.html").read_text()
    history = topo_process("history", "--root", root, "-t", "solo", "-c", "1")
    assert history.returncode == 0 and "nightly" in history.stdout  # the tag shows in the list
