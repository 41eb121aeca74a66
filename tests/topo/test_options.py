"""Options shared by the commands: `-c` is the concurrency everywhere, the old `-c FILE` of plan/up/down
still works with a note, topologies and levels are checked before anything runs, and no command module
borrows from another."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from common.errors import ConfigError, PlanError
from tests.common.test_import_cycles import import_graph
from topo.cli import app
from topo.options import parse_concurrency, parse_topologies

runner = CliRunner()


def test_old_cluster_spelling_of_plan_still_works_with_a_note():
    result = runner.invoke(app, ["plan", "-c", "local-twin-4", "-t", "2x-tp2-shuffle", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cluster"] == "local-twin-4"  # stdout stays pure JSON
    assert "deprecated" in result.stderr and "--cluster local-twin-4" in result.stderr


def test_c_with_levels_in_plan_says_what_c_means_now():
    result = runner.invoke(app, ["plan", "-c", "1,2"])
    assert isinstance(result.exception, ConfigError) and "-c is --concurrency" in str(result.exception)


def test_c_is_the_concurrency_of_the_sweep():
    result = runner.invoke(app, ["sweep", "--dry-run", "-c", "1,4", "-t", "solo", "--cluster", "local-twin"])
    assert result.exit_code == 0, result.output
    assert "c=1,4" in result.stdout


def test_levels_and_topologies_are_checked_first():
    assert parse_concurrency("1, 2,4") == [1, 2, 4]
    for bad in ("", "0", "a,b"):
        with pytest.raises(ConfigError, match="-c"):
            parse_concurrency(bad)
    assert parse_topologies(["solo,tp2-mp", "2x-tp2-shuffle"]) == ["solo", "tp2-mp", "2x-tp2-shuffle"]
    assert parse_topologies(None, default=()) == []
    with pytest.raises(PlanError, match="unknown topology 'duo'"):
        parse_topologies("solo,duo")


def test_no_command_module_imports_another():
    graph = import_graph()
    commands = {name for name in graph if name.startswith("topo.commands.")}
    borrowed = {(name, other) for name in commands for other in graph[name] & commands}
    assert borrowed == set()
