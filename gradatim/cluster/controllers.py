"""The Kubeflow controllers of the embedded control plane, set up as a platform team installs them.

- Kubeflow training-operator v1 (`PyTorchJob`), with its validating webhook;
- Kubeflow Trainer v2 (`TrainJob`, `ClusterTrainingRuntime`) and the JobSet controller it runs nodes on, with their
  webhooks (JobSet's mutating one is required: without it the controller fails on a JobSet with no network set).

CRDs, webhook registrations and each controller's ServiceAccount and cluster RBAC are read from the upstream
manifests in the Go module cache (never copied into the repo) and their kustomize patches, namespaces and name
prefixes applied; each controller acts as its ServiceAccount, by a long-lived token (`controller_kubeconfig`); each webhook's `clientConfig.service` becomes a loopback URL, served with
a certificate from our webhook CA (`pki.ensure_webhook_pki`), since the API server cannot resolve Service names here.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
from pathlib import Path
from typing import Any

import yaml

from gradatim.cluster import versions
from gradatim.cluster.build import download_module
from gradatim.cluster.pki import WebhookPki

KUBEFLOW_NAMESPACE = "kubeflow"  # where training-operator keeps its webhook Secret (its MY_POD_NAMESPACE)
TRAINING_OPERATOR_WEBHOOK_SECRET = "training-operator-webhook-cert"
# training-operator's cert rotator only checks that a file exists at this fixed path (its webhook server itself
# reads $TMPDIR/k8s-webhook-server/serving-certs, which is per control plane).
TRAINING_OPERATOR_FIXED_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")


@functools.cache  # a pinned module's directory does not change; `go mod download` is a subprocess
def module_dir(module: str, version: str) -> Path:
    return Path(download_module(module, version)["Dir"])


def crd_files() -> list[Path]:
    """The job CRDs of the controllers: PyTorchJob, Trainer v2's three and JobSet. All exceed the 256 KB a
    client-side apply can annotate, so they are applied server-side."""
    operator = module_dir(versions.TRAINING_OPERATOR_MODULE, versions.TRAINING_OPERATOR_VERSION)
    trainer = module_dir(versions.TRAINER_MODULE, versions.TRAINER_VERSION)
    jobset = module_dir(versions.JOBSET_MODULE, versions.JOBSET_VERSION)
    return [
        operator / versions.PYTORCHJOB_CRD_PATH,
        *sorted((trainer / versions.TRAINER_CRDS_DIR).glob("trainer.kubeflow.org_*.yaml")),
        jobset / versions.JOBSET_CRD_PATH,
    ]


def apply_json_patch(document: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """The `add` and `replace` operations of an RFC 6902 patch, which is all the upstream kustomize patches use."""
    document = copy.deepcopy(document)
    for op in ops:
        if op["op"] not in ("add", "replace"):
            raise ValueError(f"unsupported patch op {op['op']}")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        target: Any = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if op["op"] == "add":
                target.insert(index, op["value"])
            else:
                target[index] = op["value"]
        else:
            target[last] = op["value"]
    return document


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _patched(manifests: Path, patches: list[tuple[Path, str]]) -> list[dict[str, Any]]:
    """The webhook configurations of `manifests`, each with the patch files that target its kind applied."""
    out = []
    for document in _load(manifests):
        for patch, kind in patches:
            if document["kind"] == kind:
                document = apply_json_patch(document, yaml.safe_load(patch.read_text()))
        out.append(document)
    return out


def _on_loopback(configuration: dict[str, Any], port: int, ca_bundle: bytes) -> dict[str, Any]:
    """Every webhook served at https://127.0.0.1:port<path>, trusted through our webhook CA."""
    configuration = copy.deepcopy(configuration)
    for webhook in configuration["webhooks"]:
        path = webhook["clientConfig"]["service"].get("path", "/")
        webhook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": base64.b64encode(ca_bundle).decode()}
    return configuration


def webhook_configurations(ports: dict[str, int], pki: WebhookPki) -> list[dict[str, Any]]:
    ca = pki.ca.cert.read_bytes()
    operator = module_dir(versions.TRAINING_OPERATOR_MODULE, versions.TRAINING_OPERATOR_VERSION) / "manifests/base/webhook"
    trainer = module_dir(versions.TRAINER_MODULE, versions.TRAINER_VERSION) / "manifests/base/webhook"
    jobset = module_dir(versions.JOBSET_MODULE, versions.JOBSET_VERSION) / "config/components/webhook"
    out = []
    for document in _patched(operator / "manifests.yaml", [(operator / "patch.yaml", "ValidatingWebhookConfiguration")]):
        # Only the PyTorchJob scheme is enabled, so only its webhook is served.
        document["webhooks"] = [w for w in document["webhooks"] if "pytorchjobs" in w["rules"][0]["resources"]]
        out.append(_on_loopback(document, ports["training_operator_webhook"], ca))
    for document in _patched(trainer / "manifests.yaml", [(trainer / "patch_mutating.yaml", "MutatingWebhookConfiguration"),
                                                         (trainer / "patch_validating.yaml", "ValidatingWebhookConfiguration")]):
        out.append(_on_loopback(document, ports["trainer_webhook"], ca))
    for document in _patched(jobset / "manifests.yaml", [(jobset / "patches/mutating-patch.yaml", "MutatingWebhookConfiguration"),
                                                        (jobset / "patches/validating-patch.yaml", "ValidatingWebhookConfiguration")]):
        # kustomize's namePrefix in JobSet's default overlay; keeps it apart from the trainer's same-named base.
        document["metadata"]["name"] = "jobset-" + document["metadata"]["name"]
        out.append(_on_loopback(document, ports["jobset_webhook"], ca))
    return out


# Each controller's ServiceAccount, ClusterRole and binding: (module, version, directory, files, namespace, name prefix),
# as the upstream kustomizations install them (training-operator: manifests/overlays/standalone; Trainer:
# manifests/overlays/manager; JobSet: config/default). Leader election, cert rotation and metrics auth are off here,
# so their Roles are left out.
CONTROLLER_RBAC = {
    "training-operator": (versions.TRAINING_OPERATOR_MODULE, versions.TRAINING_OPERATOR_VERSION, "manifests/base/rbac",
                          ("service-account.yaml", "role.yaml", "cluster-role-binding.yaml"), KUBEFLOW_NAMESPACE, ""),
    "trainer-controller-manager": (versions.TRAINER_MODULE, versions.TRAINER_VERSION, "manifests/base/rbac",
                                   ("service_account.yaml", "role.yaml", "role_binding.yaml"), "kubeflow-system", ""),
    "jobset-controller": (versions.JOBSET_MODULE, versions.JOBSET_VERSION, "config/components/rbac",
                          ("service_account.yaml", "role.yaml", "role_binding.yaml"), "jobset-system", "jobset-"),
}
NAMESPACED = ("ServiceAccount", "Role", "RoleBinding", "Secret")


def controller_rbac(controller: str) -> tuple[list[dict[str, Any]], str, str]:
    """(objects, namespace, ServiceAccount name) of a controller: its upstream ServiceAccount, ClusterRole and
    binding with kustomize's namespace and name prefix applied, and a Secret for its long-lived token (filled by the
    controller manager's token controller)."""
    module, version, directory, files, namespace, prefix = CONTROLLER_RBAC[controller]
    root = module_dir(module, version) / directory
    objects, account = [], ""
    for document in (d for f in files for d in _load(root / f)):
        document = copy.deepcopy(document)
        document["metadata"]["name"] = prefix + document["metadata"]["name"]
        if document["kind"] in NAMESPACED:
            document["metadata"]["namespace"] = namespace
        if document["kind"] == "ServiceAccount":
            account = document["metadata"]["name"]
        if "roleRef" in document:
            document["roleRef"]["name"] = prefix + document["roleRef"]["name"]
            document["subjects"] = [{**s, "name": prefix + s["name"], "namespace": namespace} for s in document["subjects"]]
        objects.append(document)
    token = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
             "metadata": {"name": f"{account}-token", "namespace": namespace, "annotations": {"kubernetes.io/service-account.name": account}}}
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
    return [*namespaces, *objects, token], namespace, account


def install_objects(ports: dict[str, int], pki: WebhookPki) -> list[dict[str, Any]]:
    """Namespaces, each controller's ServiceAccount, RBAC and token Secret, training-operator's webhook Secret
    (pre-filled with our certificates, which its rotator accepts as valid, so it injects our CA instead of making its
    own) and the webhook registrations."""
    tls = {
        "ca.crt": pki.ca.cert.read_bytes(),
        "ca.key": pki.ca.key.read_bytes(),
        "tls.crt": pki.serving.cert.read_bytes(),
        "tls.key": pki.serving.key.read_bytes(),
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": TRAINING_OPERATOR_WEBHOOK_SECRET, "namespace": KUBEFLOW_NAMESPACE},
        "data": {k: base64.b64encode(v).decode() for k, v in tls.items()},
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUBEFLOW_NAMESPACE}}
    objects, seen = [], set()
    for obj in [namespace, *(o for c in CONTROLLER_RBAC for o in controller_rbac(c)[0]), secret, *webhook_configurations(ports, pki)]:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key not in seen:
            seen.add(key)
            objects.append(obj)
    return objects


def write_serving_certs(tmpdir: Path, pki: WebhookPki) -> None:
    """Where controller-runtime's webhook servers read their certificate: `$TMPDIR/k8s-webhook-server/serving-certs`.
    Written in place (a file watcher may hold the old ones open), and a copy at the fixed path training-operator's
    rotator checks, only when none is there (another control plane on this machine may have put its own)."""
    for directory, only_if_missing in ((tmpdir / "k8s-webhook-server" / "serving-certs", False), (TRAINING_OPERATOR_FIXED_CERT_DIR, True)):
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in (("tls.crt", pki.serving.cert), ("tls.key", pki.serving.key)):
            target = directory / name
            if only_if_missing and target.exists():
                continue
            with open(target, "wb") as f:
                f.write(source.read_bytes())


def trainer_config(ports: dict[str, int]) -> str:
    """Kubeflow Trainer's Configuration: its own cert management off (ours are in place), no leader election,
    metrics off, everything on loopback."""
    return json.dumps({
        "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['trainer_health']}", "readinessEndpointName": "readyz",
                   "livenessEndpointName": "healthz"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": ports["trainer_webhook"], "host": "127.0.0.1"},
        "leaderElection": {"leaderElect": False},
        "certManagement": {"enable": False},
        "statusServer": {"port": ports["trainer_status"]},
    }, indent=2)


def jobset_config(ports: dict[str, int], cert_dir: Path) -> str:
    return json.dumps({
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['jobset_health']}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": ports["jobset_webhook"], "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
    }, indent=2)
