"""`topo twin serve ...`: run the emulated vLLM engine with vLLM's own serving flags."""

from __future__ import annotations

import typer

twin_app = typer.Typer(
    help=(
        "The twin: an emulated vLLM engine with a performance model of named hardware. It serves the "
        "OpenAI API like `vllm serve` and takes the same flags, so topo runs it where it would run vLLM."
    ),
    no_args_is_help=True,
)


@twin_app.command(
    "serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Serve MODEL like `vllm serve MODEL [flags]` (try `topo twin serve --help` for every flag).

    Examples: `topo twin serve gemma4-26b --hardware gb10 --port 8000`;
    a headless rank: `topo twin serve gemma4-26b -tp 2 --nnodes 2 --node-rank 1 --headless
    --master-addr 10.0.0.1 --master-port 29501`.
    """
    from twin.launch import main as twin_main  # flags are vLLM's: argparse owns them, typer passes them on

    twin_main(["serve", *ctx.args])


def register(app: typer.Typer) -> None:
    app.add_typer(twin_app, name="twin")
