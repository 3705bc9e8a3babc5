"""Runs the operator and the pod runner (the kubelet's stand-in) as real processes against the test cluster, whose
Kubeflow controllers turn the operator's jobs into pods, and helps tests apply stages and wait on their status.
The trainer inside the pods is tests/stand_in_trainer.py."""

from __future__ import annotations

import json
import os
import signal
import uuid
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from gradatim.api import GROUP, VERSION
from gradatim.cluster.process import processes_in_group, signal_groups, spawn, stop_groups, wait_for
from gradatim.cluster.targets import operator_targets
from gradatim.planner.jobs import KINDS
from gradatim.cluster.kubelet import free_port
from tests.conftest import node_for, own_node

REPO = Path(__file__).resolve().parents[1]
STAND_IN_IMAGE = "gradatim/stand-in-trainer:test"
STORAGE_PATIENCE_SECONDS = 20  # how long the operator under test waits out S3 faults that may pass (300 s shipped)


@dataclass
class Process:
    argv: list[str]
    env: dict[str, str]
    log: Path
    group: int | None = None

    def start(self) -> None:
        self.group = spawn(self.argv, self.log, REPO, self.env)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it."""
        if self.group is not None:
            signal_groups([self.group], signal.SIGKILL)
            wait_for(lambda: not processes_in_group(self.group), 30)

    def stop(self) -> None:
        if self.group is not None:
            stop_groups({"process": self.group}, grace_seconds=20)


@dataclass
class Harness:
    cluster: Any
    kube: client.ApiClient
    namespace: str
    workdir: Path
    backend: str = "pytorchjob"  # the Kubeflow job kind every pipeline of this harness asks for
    install: str = "clusterwide"  # the RBAC the operator runs with: manifests/operator/ or manifests/operator-namespaced/
    workspace: bool = True  # clusterwide: bind manifests/workspace/ in the namespace (its Secrets and ConfigMaps)
    uid: int | None = None  # run the operator as this uid, with no passwd entry for it (as in its image)
    image: str | None = None  # run the operator from this image under podman, as its Deployment says (namespaced)
    operator: Process = field(init=False)
    runner: Process = field(init=False)
    container_name: str = field(init=False, default="")
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "PYTHONPATH": str(REPO)}
        self.runner = Process(
            [sys.executable, "-m", "gradatim", "podrunner", "-n", self.namespace, "--workdir", str(self.workdir / "pods"),
             "--node-name", node_for(self.namespace), "--image-module", f"{STAND_IN_IMAGE}=tests.stand_in_trainer",
             "--prometheus-sd-dir", str(self.cluster.prometheus_sd_dir),
             "--cpus", "64"],  # the stand-in trainer barely uses a core: let the tests' jobs run side by side
            env, self.workdir / "podrunner.log",
        )
        if self.image:
            self.operator = self.operator_container()
            return
        operator_env = {**env, "KUBECONFIG": str(self.operator_kubeconfig()),
                        "GRADATIM_OPERATOR_METRICS_PORT": str(self.metrics_port), "GRADATIM_OPERATOR_RESYNC_SECONDS": "5",
                        "GRADATIM_STORAGE_PATIENCE_SECONDS": str(STORAGE_PATIENCE_SECONDS)}
        as_user: list[str] = []
        if self.uid is not None:
            # A user namespace maps this process's uid to `uid`, which has no passwd entry (the image's case); the
            # files stay readable, their owner being the same outside. No USER or LOGNAME to fall back on either.
            as_user = ["unshare", "--user", f"--map-user={self.uid}", f"--map-group={self.uid}"]
            operator_env = {k: v for k, v in operator_env.items() if k not in ("USER", "LOGNAME", "LNAME", "USERNAME", "HOME")}
        self.operator = Process(
            [*as_user, sys.executable, "-m", "gradatim", "operator", "-n", self.namespace,
             "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz"],
            operator_env, self.workdir / "operator.log",
        )

    def operator_container(self) -> Process:
        """The operator from `image` under podman, with the namespaced install's Deployment and Role, its token
        where the kubelet puts it and in-cluster config: no kubeconfig, nothing from this machine."""
        from tests import images

        assert self.install == "namespaced", "a cluster-wide operator would act on every test's namespace"
        apply_rbac(self.cluster, namespaced_rbac(self.namespace))
        deployment = next(d for d in kustomized(self.cluster, REPO / "manifests/operator-namespaced") if d["kind"] == "Deployment")
        account = images.service_account_files(self.workdir / "serviceaccount", self.token("gradatim-operator", self.namespace),
                                               Path(self.cluster.kubeconfig), self.namespace)
        self.container_name = f"gradatim-operator-{self.namespace}"
        argv, ports = images.podman_run_argv(deployment, self.image or "", self.container_name, self.namespace, account,
                                             self.cluster.api_server)
        self.metrics_port, self.liveness_port = ports["metrics"], ports["healthz"]
        return Process(["podman", *argv], images.podman_env(), self.workdir / "operator.log")

    def token(self, account: str, namespace: str) -> str:
        return client.CoreV1Api(self.kube).create_namespaced_service_account_token(
            account, namespace, {"spec": {"expirationSeconds": 7200}}).status.token

    def operator_kubeconfig(self) -> Path:
        """A kubeconfig for the operator's ServiceAccount with the roles shipped in manifests/ (cluster-wide, or the
        namespaced install's Role in this namespace), so every operator test also proves they are enough."""
        if self.install == "namespaced":
            apply_rbac(self.cluster, namespaced_rbac(self.namespace))
            account_namespace = self.namespace
        else:
            apply_rbac(self.cluster, clusterwide_rbac(self.namespace if self.workspace else None))
            account_namespace = "gradatim-system"
        token = self.token("gradatim-operator", account_namespace)
        config = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        for user in config["users"]:
            user["user"] = {"token": token}
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.kube)

    def start(self) -> None:
        self.runner.start()
        self.operator.start()
        operator_targets(self.cluster.prometheus_sd_dir, self.namespace, self.metrics_port)  # the embedded Prometheus scrapes it

    def stop(self) -> None:
        self.operator.stop()
        if self.image:
            from tests import images

            images.podman("rm", "-f", "--ignore", self.container_name, check=False)
        self.runner.stop()
        (Path(self.cluster.prometheus_sd_dir) / f"operator-{self.namespace}.json").unlink(missing_ok=True)

    def operator_log(self) -> str:
        return self.operator.log.read_text(errors="replace")[-6000:]

    # -- objects ---------------------------------------------------------------------------------------

    def s3_secret(self, name: str = "s3") -> None:
        data = {"AWS_ACCESS_KEY_ID": self.cluster.s3_access_key, "AWS_SECRET_ACCESS_KEY": self.cluster.s3_secret_key,
                "AWS_ENDPOINT_URL": self.cluster.s3_endpoint}
        client.CoreV1Api(self.kube).create_namespaced_secret(self.namespace, {"metadata": {"name": name}, "stringData": data})

    def pipeline(self, name: str, secret: str = "s3", **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingPipeline", "metadata": {"name": name},
                "spec": {"image": STAND_IN_IMAGE, "backend": self.backend, "storage": {"bucket": self.cluster.s3_bucket, "secretRef": {"name": secret}},
                         "resources": {"nodes": 1, "gpusPerNode": 0, "cpu": "1", "memory": "1Gi", "shmSize": "64Mi"}, **spec}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "trainingpipelines", body)

    def stage(self, name: str, pipeline: str, type_: str = "sft", deps: tuple[str, ...] = (), model: dict | None = None,
              env: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = {"model": model or {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:train"}]}
        if type_ == "eval":
            inputs = {"model": model or {"builtin": "tiny-model"}, "evalData": [{"builtin": "tiny-math:eval", "name": "math"}]}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingStage", "metadata": {"name": name},
                "spec": {"pipeline": pipeline, "type": type_, "dependsOn": list(deps), "inputs": inputs, type_: {},
                         "retryBackoffSeconds": 1, "env": [{"name": k, "value": v} for k, v in (env or {}).items()], **spec}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "trainingstages", body)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def patch_stage(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, "trainingstages", name, {"spec": spec})

    def jobs(self, stage: str | None = None) -> list[dict[str, Any]]:
        """The stage's jobs of the harness's kind (PyTorchJobs or TrainJobs), oldest first."""
        kind = KINDS[self.backend]
        selector = f"gradatim.io/stage={stage}" if stage else "app.kubernetes.io/managed-by=gradatim"
        found = self.custom.list_namespaced_custom_object(kind.group, kind.version, self.namespace, kind.plural, label_selector=selector)["items"]
        return sorted(found, key=lambda j: j["metadata"]["name"])

    def pods(self, stage: str) -> list[dict[str, Any]]:
        pods = client.CoreV1Api(self.kube).list_namespaced_pod(self.namespace, label_selector=f"gradatim.io/stage={stage}").items
        return [self.kube.sanitize_for_serialization(p) for p in pods]

    def events(self, name: str) -> list[Any]:
        return [e for e in client.CoreV1Api(self.kube).list_namespaced_event(self.namespace).items if e.involved_object.name == name]

    def wait(self, plural: str, name: str, done: Callable[[dict[str, Any]], bool], timeout: float = 120, what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                obj = self.get(plural, name)
            except ApiException as err:
                if err.status != 404:
                    raise
            if obj and done(obj):
                return obj
            time.sleep(0.3)
        raise AssertionError(f"{plural}/{name} never became {what}: status={json.dumps(obj.get('status'), indent=1)[:3000]}\n--- operator log ---\n{self.operator_log()}")

    def wait_phase(self, name: str, *phases: str, timeout: float = 120) -> dict[str, Any]:
        return self.wait("trainingstages", name, lambda o: (o.get("status") or {}).get("phase") in phases
                         and o["status"].get("observedGeneration") == o["metadata"]["generation"], timeout, "/".join(phases))

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()


def kustomized(cluster: Any, directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([str(cluster.kubectl), "kustomize", str(directory)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def clusterwide_rbac(workspace: str | None) -> list[dict[str, Any]]:
    """manifests/operator/'s namespace, ServiceAccount and roles, and manifests/workspace/'s RoleBinding in
    `workspace` (when given), as `kubectl apply -k` would apply them."""
    docs = [yaml.safe_load((REPO / "manifests/operator/namespace.yaml").read_text())]
    docs += [d for d in yaml.safe_load_all((REPO / "manifests/operator/rbac.yaml").read_text()) if d]
    if workspace:
        binding = yaml.safe_load((REPO / "manifests/workspace/rolebinding.yaml").read_text())
        binding["metadata"]["namespace"] = workspace
        docs.append(binding)
    return docs


def namespaced_rbac(namespace: str) -> list[dict[str, Any]]:
    """manifests/operator-namespaced/'s ServiceAccount, Role and RoleBinding, put in `namespace` (as its
    kustomization's `namespace:` would)."""
    docs = [d for name in ("serviceaccount.yaml", "role.yaml")
            for d in yaml.safe_load_all((REPO / "manifests/operator-namespaced" / name).read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
    return docs


def apply_rbac(cluster: Any, docs: list[dict[str, Any]]) -> None:
    subprocess.run([str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", "-"],
                   input=yaml.safe_dump_all(docs), text=True, check=True, capture_output=True)


@contextmanager
def running_harness(cluster: Any, kube: client.ApiClient, workdir: Path, prefix: str, backend: str = "pytorchjob",
                    **options: Any) -> Iterator[Harness]:
    """A fresh namespace with the S3 Secret, an operator and a pod runner watching it; all gone afterwards.
    `options`: Harness's install, workspace and uid."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(kube).create_namespace(own_node(ns))
    harness = Harness(cluster, kube, ns, workdir, backend, **options)
    harness.s3_secret()
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
        client.CoreV1Api(kube).delete_namespace(ns)
