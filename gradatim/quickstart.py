"""`gradatim quickstart`: the README's main command.

Brings up the embedded control plane, gives the pipeline its S3 credentials as a Secret, applies
`examples/quickstart/` with `kubectl apply -k`, and shows what the API server holds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from gradatim.cluster.controlplane import ControlPlane
from gradatim.cluster.progress import ConsoleProgress
from gradatim.cluster.state import ClusterInfo

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
S3_SECRET = "gradatim-s3"


def render_s3_secret(info: ClusterInfo, namespace: str) -> str:
    """The Secret the example pipeline's `storage.secretRef` names, as YAML for `kubectl apply`."""
    return (
        "apiVersion: v1\nkind: Secret\n"
        f"metadata: {{name: {S3_SECRET}, namespace: {namespace}}}\n"
        "type: Opaque\nstringData:\n"
        f"  AWS_ACCESS_KEY_ID: {info.s3_access_key}\n"
        f"  AWS_SECRET_ACCESS_KEY: {info.s3_secret_key}\n"
        f"  AWS_ENDPOINT_URL: {info.s3_endpoint}\n"
    )


def run_quickstart(state_dir: str | None = None, namespace: str = "default") -> int:
    progress = ConsoleProgress()
    info = ControlPlane(state_dir).up(progress)

    def kubectl(*args: str, stdin: str | None = None) -> str:
        cmd = [str(info.kubectl), f"--kubeconfig={info.kubeconfig}", *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True).stdout

    with progress.step(f"Created Secret {S3_SECRET} with the embedded S3 credentials"):
        kubectl("apply", "-f", "-", stdin=render_s3_secret(info, namespace))
    with progress.step(f"Applied {EXAMPLE.relative_to(EXAMPLE.parents[1])} with kubectl apply -k"):
        print(kubectl("apply", "-k", str(EXAMPLE)), end="")
    print(kubectl("-n", namespace, "get", "trainingpipelines,trainingstages"), end="")
    progress.info(f"Try: KUBECONFIG={info.kubeconfig} kubectl get tstage -o wide")
    return 0
