"""`topo`: the command line. Each sub-command lives in topo/commands/<name>.py and registers itself here."""

from __future__ import annotations

import sys
from importlib import import_module

import typer
from rich.console import Console
from rich.markup import escape

from common.errors import TopoError
from topo.exits import EXIT_CODES_HELP, EXIT_USAGE, interrupted_exit_code, treat_polite_signals_as_ctrl_c

app = typer.Typer(
    name="topo",
    help=(
        "Benchmark how to lay an LLM out on your inference nodes: solo, TP=2 over PyTorch distributed, "
        "TP=2 over Ray, or 2x solo behind a LiteLLM router. Start with `topo sweep --model gemma4-26b`.\n\n"
        + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

# One line per command module; each has `register(app)`. Kept explicit so a reader sees every command.
COMMAND_MODULES: tuple[str, ...] = (
    "topo.commands.bench",
    "topo.commands.plan",
    "topo.commands.twin",
    "topo.commands.report",
    "topo.commands.testbed",
    "topo.commands.up",
    "topo.commands.sweep",
    "topo.commands.predict",
    "topo.commands.calibrate",
    "topo.commands.history",
    "topo.commands.regress",
    "topo.commands.nightly",
)

for module_name in COMMAND_MODULES:
    import_module(module_name).register(app)

stderr = Console(stderr=True)


def main() -> None:
    """Entry point: any TopoError becomes one clear message and exit code 2, never a traceback; SIGTERM and
    SIGHUP interrupt like Ctrl-C (topo/exits.py)."""
    treat_polite_signals_as_ctrl_c()
    try:
        app()
    except TopoError as exc:
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]")
        sys.exit(interrupted_exit_code())
    except OSError as exc:  # a disk or file error no layer translated: still one line, still exit 2
        where = f" ({exc.filename})" if exc.filename else ""
        stderr.print(f"[bold red]error:[/] {escape(exc.strerror or str(exc))}{escape(where)}", highlight=False)
        sys.exit(EXIT_USAGE)
