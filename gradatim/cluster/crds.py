"""CustomResourceDefinitions installed into every control plane."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import gradatim
from gradatim.cluster import controllers
from gradatim.cluster.errors import ClusterError


def repo_crds_dir() -> Path:
    """The repo's generated CRDs (top-level `crds/`); absent when gradatim is installed as a wheel."""
    return Path(gradatim.__file__).resolve().parent.parent / "crds"


def crd_files() -> list[Path]:
    """The Kubeflow job CRDs (PyTorchJob, TrainJob and its runtimes, JobSet) plus every CRD under the repo's
    `crds/` (not its kustomization)."""
    ours = sorted(repo_crds_dir().rglob("*.yaml")) if repo_crds_dir().is_dir() else []
    return [*controllers.crd_files(), *(path for path in ours if "kind: CustomResourceDefinition" in path.read_text())]


def install_crds(kubectl: Path, kubeconfig: Path, files: list[Path], timeout_seconds: int = 60) -> None:
    """Server-side apply (the PyTorchJob CRD is too big for client-side apply's annotation),
    then wait until every CRD is Established."""
    file_args = [arg for path in files for arg in ("-f", str(path))]
    run_kubectl(
        kubectl,
        kubeconfig,
        ["apply", "--server-side", "--force-conflicts", "--field-manager=gradatim", *file_args],
    )
    wait = ["wait", "--for=condition=Established", *file_args]
    try:
        run_kubectl(kubectl, kubeconfig, [*wait, "--timeout=15s"])
    except ClusterError:
        # A CRD left "Installing" by an API server that stopped right after creating it is
        # only re-queued for establishing on an update event (or a 5 min resync); nudge it.
        nudge = f"gradatim.io/establish-requested={time.time_ns()}"
        run_kubectl(kubectl, kubeconfig, ["annotate", "--overwrite", *file_args, nudge])
        run_kubectl(kubectl, kubeconfig, [*wait, f"--timeout={timeout_seconds}s"])


def run_kubectl(kubectl: Path, kubeconfig: Path, args: list[str]) -> str:
    result = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise ClusterError(f"`kubectl {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout
