"""`gradatim cluster up|down|status|kubeconfig`.

The main CLI registers these with `add_cluster_commands(subparsers)` and then calls
`args.func(args)`, which returns the exit code. `python -m gradatim.cluster` offers
the same subcommands on their own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradatim.cluster.controlplane import ControlPlane
from gradatim.cluster.errors import ClusterError
from gradatim.cluster.progress import ConsoleProgress


def add_cluster_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cluster",
        help="run a local control plane (etcd, API server, controllers, S3, Prometheus)",
        description="A local control plane for developing and testing Gradatim.",
    )
    add_cluster_subcommands(parser)
    return parser


def add_cluster_subcommands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    for name, handler, help_text in (
        ("up", run_up, "build binaries if needed, start everything, wait until healthy"),
        ("down", run_down, "stop every process of the control plane"),
        ("status", run_status, "show each component: pid, ports, healthy or not"),
        ("kubeconfig", run_kubeconfig, "print the kubeconfig path (or the env file with --env)"),
        ("build", run_build, "build (or find cached) the Kubernetes, etcd and Kubeflow binaries, and helm"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument(
            "--state-dir", help="state directory (default: ${GRADATIM_HOME:-~/.gradatim}/cluster)"
        )
        command.set_defaults(func=handle_errors(handler))
    for name in ("up", "build"):
        commands.choices[name].add_argument(
            "--cache-dir", help="binary cache (default: ${GRADATIM_CACHE:-~/.cache/gradatim})"
        )
    commands.choices["kubeconfig"].add_argument(
        "--env", action="store_true", help="print the path of cluster.env instead"
    )


def run_up(args: argparse.Namespace) -> int:
    ControlPlane(args.state_dir, args.cache_dir).up(ConsoleProgress())
    return 0


def run_build(args: argparse.Namespace) -> int:
    from gradatim.cluster.build import default_cache_dir, ensure_binaries, ensure_helm

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    binaries = ensure_binaries(cache_dir, ConsoleProgress())
    helm = ensure_helm(cache_dir, ConsoleProgress())  # the chart's tests run it
    for path in (binaries.kube_apiserver.parent, binaries.etcd.parent, binaries.training_operator.parent,
                 binaries.jobset_controller.parent, binaries.trainer_controller_manager.parent, helm.parent):
        print(f"Binaries ready: {path}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    ControlPlane(args.state_dir).down(ConsoleProgress())
    return 0


def run_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    control_plane = ControlPlane(args.state_dir)
    statuses = control_plane.status()
    table = Table(title=f"Control plane in {control_plane.layout.root}")
    for column in ("component", "pid", "ports", "state"):
        table.add_column(column)
    for status in statuses:
        state = "[green]healthy[/green]" if status.healthy else (
            "[yellow]running, unhealthy[/yellow]" if status.running else "[red]stopped[/red]"
        )
        ports = ", ".join(f"{name}={port}" for name, port in status.ports.items())
        table.add_row(status.name, str(status.pid or "-"), ports, state)
    Console().print(table)
    return 0 if all(status.healthy for status in statuses) else 1


def run_kubeconfig(args: argparse.Namespace) -> int:
    info = ControlPlane(args.state_dir).info()
    print(info.env_file if args.env else info.kubeconfig)
    return 0


def handle_errors(handler):
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ClusterError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradatim.cluster", description="A local Gradatim control plane.")
    add_cluster_subcommands(parser)
    args = parser.parse_args(argv)
    return args.func(args)
