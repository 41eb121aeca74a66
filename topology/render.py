"""Printable forms of a LaunchPlan: the dry run. Secrets always print as `***`.

`plan_text(plan)` is a rich Text (styled in a terminal, `.plain` for files and golden tests);
`plan_json(plan)` is the whole plan as JSON, secrets masked.
"""

from __future__ import annotations

import json
import shlex

from rich.text import Text

from topology.plan import (
    ArgOrSecret,
    CommandProbe,
    HttpProbe,
    LaunchPlan,
    NoProbe,
    Secret,
    Step,
    StopByCommand,
    StopByProcessGroup,
    StopContainer,
    render,
)

_INDENT = "    "


def _quoted(value: ArgOrSecret) -> str:
    # A secret is shown as *** unquoted: quoting it would suggest it is the literal value.
    return "***" if isinstance(value, Secret) else shlex.quote(value)


def command_lines(argv: tuple[ArgOrSecret, ...]) -> list[str]:
    """A shell command as lines with `\\` continuations: program and positionals, then one option a line."""
    lines: list[list[str]] = [[]]
    for index, arg in enumerate(argv):
        text = _quoted(arg)
        starts_option = isinstance(arg, str) and arg.startswith("-") and index > 0
        if starts_option and lines[-1]:
            lines.append([])
        lines[-1].append(text)
    joined = [" ".join(parts) for parts in lines]
    return [line + " \\" if position < len(joined) - 1 else line for position, line in enumerate(joined)]


def describe_probe(step: Step) -> str:
    probe = step.probe
    if isinstance(probe, HttpProbe):
        urls = " then ".join(probe.urls)
        headers = "".join(f" [{key}: {render(value)}]" for key, value in probe.headers.items())
        return f"HTTP 2xx from {urls}{headers} (timeout {probe.timeout_s:g} s)"
    if isinstance(probe, CommandProbe):
        expectations = []
        if probe.expect_in_output is not None:
            expectations.append(f"output contains {probe.expect_in_output!r}")
        if probe.expect_pattern is not None:
            expectations.append(f">= {probe.expect_min_matches} lines matching /{probe.expect_pattern}/")
        expectation = f" and {' and '.join(expectations)}" if expectations else ""
        return f"`{shlex.join(probe.argv)}` exits 0{expectation} (timeout {probe.timeout_s:g} s)"
    assert isinstance(probe, NoProbe)
    return "nothing to wait for (checked through the serving rank's readiness)"


def describe_stop(step: Step) -> str:
    stop = step.stop
    ports = f"; then ports {', '.join(str(port) for port in stop.ports)} closed" if stop.ports else ""
    if isinstance(stop, StopByProcessGroup):
        return f"TERM to its process group, KILL after {stop.grace_s:g} s, group proven empty{ports}"
    if isinstance(stop, StopContainer):
        return (
            f"`{shlex.join(stop.stop_argv())}` then `{shlex.join(stop.remove_argv())}`, "
            f"no container {stop.container} left{ports}"
        )
    assert isinstance(stop, StopByCommand)
    return f"`{shlex.join(stop.argv)}`{ports}"


def plan_text(plan: LaunchPlan) -> Text:
    """Every command per node, stage by stage, with env, files, readiness and stop."""
    out = Text()

    def line(text: str = "", style: str = "") -> None:
        out.append(text, style=style)
        out.append("\n")

    line(
        f"plan: {plan.topology} on cluster {plan.cluster}, model {plan.model} (served as {plan.served_model_name})",
        "bold",
    )
    line(f"endpoint: {plan.endpoint}", "bold green")
    for key, value in plan.endpoint_headers.items():
        line(f"endpoint header: {key}: {render(value)}", "green")
    for note in plan.notes:
        line(f"note: {note}", "yellow")
    total = len(plan.stages)
    for number, stage in enumerate(plan.stages, start=1):
        line()
        when = "starts first" if number == 1 else f"starts when stage {number - 1} is ready"
        parallel = ", its steps in parallel" if len(stage.steps) > 1 else ""
        line(f"stage {number} of {total} ({when}{parallel})", "bold magenta")
        for step in stage.steps:
            line(f"  {step.name}  on node {step.node}  ({step.role})", "bold cyan")
            for position, text in enumerate(command_lines(step.argv)):
                line(f"{_INDENT}{'$ ' if position == 0 else '    '}{text}", "cyan")
            if step.env:
                line(f"{_INDENT}env:", "dim")
                for key, value in step.env.items():
                    line(f"{_INDENT}  {key}={_quoted(value)}", "yellow" if isinstance(value, Secret) else "")
            for path, content in step.files.items():
                line(f"{_INDENT}file {path}:", "dim")
                for content_line in content.rstrip("\n").split("\n"):
                    line(f"{_INDENT}  | {content_line}")
            line(f"{_INDENT}ready when: {describe_probe(step)}", "green")
            line(f"{_INDENT}stop: {describe_stop(step)}", "red")
    line()
    line(f"teardown order: {', '.join(step.name for step in plan.teardown_order())}", "bold")
    return out


def plan_json(plan: LaunchPlan) -> str:
    """The whole plan as JSON (what cluster/ executes), secrets as ***, plus the teardown order."""
    data = plan.model_dump(mode="json", context={"mask_secrets": True})
    data["teardown_order"] = [step.name for step in plan.teardown_order()]
    return json.dumps(data, indent=2)
