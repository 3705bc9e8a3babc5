"""The `gradatim` command: one entry point for the control plane, the operator, the pod runner and local runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradatim", description="Multi-stage LLM post-training on Kubernetes, step by step.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from gradatim.cluster.cli import add_cluster_commands

    add_cluster_commands(sub)

    quick = sub.add_parser("quickstart", help="bring up the embedded control plane, run the example recipe on it and report")
    quick.add_argument("--state-dir", default=None, help="control plane state (default: ~/.gradatim/cluster)")
    quick.add_argument("--example", type=Path, default=None, help="a recipe directory with a kustomization (default: examples/quickstart)")
    quick.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds")
    quick.add_argument("--backend", choices=("pytorchjob", "trainjob"), default=os.environ.get("GRADATIM_BACKEND") or None,
                       help="run the stages as Kubeflow PyTorchJobs (what `auto` picks here) or Kubeflow Trainer v2 TrainJobs "
                            "(default: the recipe's spec.backend; also GRADATIM_BACKEND, e.g. `make quickstart BACKEND=trainjob`)")
    quick.set_defaults(func=_quickstart)

    from gradatim.cluster.podrunner import add_podrunner_command
    from gradatim.local.run import add_run_command
    from gradatim.operator.run import add_operator_command
    from gradatim.report.cli import add_report_command

    add_operator_command(sub)
    add_podrunner_command(sub)
    add_run_command(sub)
    add_report_command(sub)

    crds = sub.add_parser("crds", help="write the CRD YAML generated from gradatim/api")
    crds.add_argument("--out", type=Path, default=None, help="directory (default: the repo's crds/)")
    crds.set_defaults(func=_crds)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
