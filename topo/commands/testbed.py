"""`topo testbed up|down|status`: network-namespace nodes with real sshd on this machine (root)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from cluster.testbed import DEFAULT_DIR, Testbed, TestbedSpec, down, up

console = Console(highlight=False, soft_wrap=True)

testbed_app = typer.Typer(
    help=(
        "A real multi-node test bed on this machine (needs root): one network namespace per node on a "
        "bridge with no default route, one sshd per node in its own PID namespace, a fresh key pair and "
        "known_hosts, and a cluster file for them. Use it to run topo over real SSH without real nodes."
    ),
    no_args_is_help=True,
)

DIR_OPTION = typer.Option(
    DEFAULT_DIR, "--dir", help="Directory of the bed: keys, known_hosts, sshd configs and logs, node workdirs, "
    "cluster.yaml. Removed again by `topo testbed down`."
)


@testbed_app.command("up")
def testbed_up(
    nodes: int = typer.Option(2, "--nodes", "-n", help="How many nodes (namespaces), 1-8."),
    directory: Path = DIR_OPTION,
    prefix: str = typer.Option(
        "topo", "--prefix", help="Name prefix of namespaces (<prefix>-nN) and links (<prefix>-br0, -hN, -eN)."
    ),
    subnet: str = typer.Option("10.88.0", "--subnet", help="First three octets of the /24: nodes .1..N, bridge .254."),
    proxy_on: str = typer.Option(
        "node1", "--proxy-on", help="Where the cluster file puts the LiteLLM proxy: node1..N or controller."
    ),
) -> None:
    """Build the bed (removing an earlier one in the same --dir first) and write DIR/cluster.yaml.

    Engines are the twin, started on each node with this venv's python; Ray and LiteLLM also come from
    this venv. Then e.g.: `topo plan --cluster DIR/cluster.yaml --model tiny --topology tp2-ray`.
    """
    spec = TestbedSpec(nodes=nodes, directory=directory, prefix=prefix, subnet=subnet, proxy_on=proxy_on, python=sys.executable)
    with console.status("building the test bed"):
        bed = up(spec, log=lambda message: console.print(f"  {message}"))
    for node in bed.nodes:
        console.print(f"[green]{node.name}[/] {node.ip} (namespace {node.namespace}, link {node.node_link}, sshd pid {node.sshd_pid})")
    console.print(f"cluster file: [bold]{bed.cluster_yaml}[/]")
    console.print(f"ssh: ssh -i {bed.client_key} -o UserKnownHostsFile={bed.known_hosts} root@{bed.nodes[0].ip}")


@testbed_app.command("down")
def testbed_down(
    directory: Path = DIR_OPTION,
    prefix: str = typer.Option(None, "--prefix", help="Default: the prefix recorded in DIR (else 'topo')."),
) -> None:
    """Remove the bed: every process in its namespaces, the namespaces, the bridge and links, DIR. Idempotent."""
    down(directory, prefix=prefix)
    console.print("test bed removed")


@testbed_app.command("status")
def testbed_status(directory: Path = DIR_OPTION) -> None:
    """Show the bed recorded in DIR."""
    bed = Testbed.load(directory.resolve())
    if bed is None:
        console.print(f"no test bed in {directory}")
        raise typer.Exit(1)
    for node in bed.nodes:
        console.print(f"{node.name} {node.ip} namespace {node.namespace} sshd pid {node.sshd_pid}")
    console.print(f"cluster file: {bed.cluster_yaml}")


def register(app: typer.Typer) -> None:
    app.add_typer(testbed_app, name="testbed")
