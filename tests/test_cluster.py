"""The embedded control plane, exercised for real: RBAC, ServiceAccount tokens, garbage
collection, the PyTorchJob CRD, S3, Prometheus service discovery, and up/down."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from gradatim.cluster import ClusterInfo, ControlPlane, versions
from gradatim.cluster.components import NODE_NAME
from gradatim.cluster.build import download_module, local_replacements, render_go_mod
from gradatim.cluster.layout import StateLayout
from gradatim.cluster.process import pick_free_ports, processes_in_group, read_stat
from gradatim.cluster.state import ClusterState
from tests.conftest import node_for


def eventually(check, timeout: float = 60, interval: float = 0.5):
    """Polls `check` until it returns a truthy value (returned) or raises AssertionError at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, ApiException):
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def cluster_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradatim.cluster", *args], capture_output=True, text=True, timeout=900
    )


def token_client(cluster: ClusterInfo, kube: client.ApiClient, token: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = cluster.api_server
    configuration.ssl_ca_cert = kube.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


# -- pure helpers ---------------------------------------------------------------------


def test_build_module_pins_every_staging_module_upstream_replaces_locally():
    upstream = Path(download_module(versions.KUBERNETES_MODULE, versions.KUBERNETES_VERSION)["GoMod"]).read_text()
    staging = [m for m in local_replacements(upstream) if m.startswith("k8s.io/")]
    assert "k8s.io/client-go" in staging and len(staging) > 25

    go_mod = render_go_mod("x", upstream, versions.KUBERNETES_MODULE, versions.KUBERNETES_VERSION, "k8s.io/", "v0.34.4")

    assert f"require k8s.io/kubernetes {versions.KUBERNETES_VERSION}" in go_mod
    for module in staging:
        assert f"\t{module} => {module} v0.34.4\n" in go_mod
    assert "./staging" not in go_mod


def test_etcd_build_module_skips_forbidden_replaces():
    upstream = Path(download_module(versions.ETCD_MODULE, versions.ETCD_VERSION)["GoMod"]).read_text()
    go_mod = render_go_mod("x", upstream, versions.ETCD_MODULE, versions.ETCD_VERSION, "go.etcd.io/etcd/", "v3.6.5")
    assert "go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 v3.6.5" in go_mod
    assert "FORBIDDEN" not in go_mod and "go.etcd.io/tests" not in go_mod


def test_free_ports_are_distinct_and_reuse_a_free_preferred_port():
    preferred = free_port()
    ports = pick_free_ports(["a", "b", "c"], {"a": preferred}, "127.0.0.1")
    assert ports["a"] == preferred
    assert len(set(ports.values())) == 3
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert pick_free_ports(["a"], {"a": taken}, "127.0.0.1")["a"] != taken


# -- API server, RBAC, tokens, controllers -------------------------------------


def test_anonymous_requests_are_denied(cluster: ClusterInfo):
    context = ssl.create_default_context(cafile=str(cluster.state_dir / "pki" / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{cluster.api_server}/api/v1/namespaces/kube-system/secrets", context=context)
    assert denied.value.code in (401, 403)


def test_service_account_token_needs_a_role_binding(cluster, kube, namespace):
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "probe"}})
    token = core.create_namespaced_service_account_token(
        "probe", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    review = client.AuthenticationV1Api(kube).create_token_review({"spec": {"token": token}})
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{namespace}:probe"

    as_probe = client.CoreV1Api(token_client(cluster, kube, token))
    with pytest.raises(ApiException) as denied:
        as_probe.list_namespaced_secret(namespace)
    assert denied.value.status == 403

    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "probe-reads-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": "probe", "namespace": namespace}],
        },
    )
    eventually(lambda: as_probe.list_namespaced_secret(namespace) is not None, timeout=30)


def test_service_account_controller_creates_default_account(kube, namespace):
    core = client.CoreV1Api(kube)
    eventually(lambda: core.read_namespaced_service_account("default", namespace), timeout=30)
    eventually(lambda: core.read_namespaced_config_map("kube-root-ca.crt", namespace), timeout=30)


def test_garbage_collector_deletes_children_of_a_deleted_owner(kube, namespace):
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "child", "ownerReferences": [reference]}})

    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return "child" not in names

    eventually(child_gone, timeout=90)


# -- PyTorchJob CRD --------------------------------------------------------------

MINIMAL_PYTORCHJOB = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "PyTorchJob",
    "metadata": {"name": "minimal"},
    "spec": {
        "pytorchReplicaSpecs": {
            "Master": {
                "replicas": 1,
                "template": {"spec": {"containers": [{"name": "pytorch", "image": "busybox"}]}},
            }
        }
    },
}


def test_pytorchjob_crd_is_established(kube):
    crd = client.ApiextensionsV1Api(kube).read_custom_resource_definition("pytorchjobs.kubeflow.org")
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions["Established"] == "True"


def test_pytorchjob_dry_run_accepts_valid_and_rejects_invalid(kube, namespace):
    api = client.CustomObjectsApi(kube)
    created = api.create_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", MINIMAL_PYTORCHJOB, dry_run="All"
    )
    assert created["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] == 1

    invalid = {**MINIMAL_PYTORCHJOB, "spec": {"runPolicy": {}}}  # pytorchReplicaSpecs is required
    with pytest.raises(ApiException) as rejected:
        api.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", invalid, dry_run="All")
    assert rejected.value.status == 422
    assert "pytorchReplicaSpecs" in rejected.value.body


def test_the_kubeflow_controllers_webhooks_answer_as_a_users_install_does(kube, namespace):
    """training-operator's validating webhook and Kubeflow Trainer's, served on loopback with our webhook CA."""
    api = client.CustomObjectsApi(kube)
    nameless = {**MINIMAL_PYTORCHJOB, "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {
        "containers": [{"name": "trainer", "image": "busybox"}]}}}}}}
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", nameless, dry_run="All")
    assert refused.value.status == 403 and "validator.pytorchjob.training-operator.kubeflow.org" in refused.value.body
    assert "must have at least one container with name pytorch" in refused.value.body
    trainjob = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "tj"},
                "spec": {"runtimeRef": {"name": "no-such-runtime"}, "trainer": {"numNodes": 1}}}
    with pytest.raises(ApiException) as unknown:
        api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", trainjob, dry_run="All")
    assert unknown.value.status in (403, 422) and "no-such-runtime" in unknown.value.body
    runtime = api.get_cluster_custom_object("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", "gradatim-torch")
    assert runtime["spec"]["mlPolicy"]["torch"] == {}, "Gradatim's ClusterTrainingRuntime is installed"
    trainjob["spec"]["runtimeRef"]["name"] = "gradatim-torch"
    accepted = api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", trainjob, dry_run="All")
    assert accepted["spec"]["runtimeRef"]["kind"] == "ClusterTrainingRuntime", "the trainer's defaulting webhook ran"


# -- S3 and Prometheus ---------------------------------------------------------------


def test_the_clusters_pod_runner_runs_pods_unless_their_namespace_asks_for_a_runner_of_its_own(cluster, kube, namespace):
    """`cluster up` starts a pod runner (Node gradatim-local): a pod in a plain namespace runs there. One in a namespace
    annotated with a node selector of its own (PodNodeSelector, as the tests' namespaces are) waits for that node."""
    core = client.CoreV1Api(kube)
    plain = f"plain-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": plain}})
    pod = {"metadata": {"name": "hello"}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "c", "image": "python:3.11", "command": ["python", "-c", "print('hello from the pod runner')"]}]}}
    try:
        eventually(lambda: core.create_namespaced_pod(plain, pod), timeout=30)  # once the namespace's ServiceAccount exists
        eventually(lambda: core.create_namespaced_pod(namespace, pod), timeout=30)
        ran = eventually(lambda: (p := core.read_namespaced_pod("hello", plain)).status.phase == "Succeeded" and p, timeout=60)
        assert ran.spec.node_name == NODE_NAME
        assert (cluster.state_dir / "pods" / plain / "hello" / "c.log").read_text().strip() == "hello from the pod runner"
        waiting = core.read_namespaced_pod("hello", namespace)
        assert waiting.spec.node_selector == {"kubernetes.io/hostname": node_for(namespace)} and not waiting.spec.node_name
        assert waiting.status.phase == "Pending"
    finally:
        core.delete_namespace(plain)


def process_env(pid: int) -> dict[str, str]:
    return dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in e)


def test_the_kubeflow_controllers_act_as_their_own_service_accounts(cluster):
    """As an install has them: each controller's kubeconfig is its ServiceAccount's token, with the upstream RBAC
    and nothing more (JobSet's role reads no Secrets)."""
    processes = ClusterState.load(StateLayout(cluster.state_dir)).processes
    accounts = {"training-operator": ("system:serviceaccount:kubeflow:training-operator", "pods"),
                "jobset-controller": ("system:serviceaccount:jobset-system:jobset-controller-manager", "jobs.batch"),
                "trainer-controller-manager": ("system:serviceaccount:kubeflow-system:kubeflow-trainer-controller-manager", "jobsets.jobset.x-k8s.io")}
    for name, (account, creates) in accounts.items():
        kubeconfig = process_env(processes[name].pid)["KUBECONFIG"]

        def kubectl(*args: str) -> str:
            return subprocess.run([str(cluster.kubectl), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True).stdout.strip()

        assert kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}") == account, name
        assert kubectl("auth", "can-i", "create", creates, "-A") == "yes", name
        if name == "jobset-controller":
            assert kubectl("auth", "can-i", "get", "secrets", "-n", "kube-system") == "no"


def test_s3_put_and_get(cluster: ClusterInfo):
    s3 = cluster.s3_client()
    key = f"tests/{time.time_ns()}.txt"
    s3.put_object(Bucket=cluster.s3_bucket, Key=key, Body=b"gradatim")
    assert s3.get_object(Bucket=cluster.s3_bucket, Key=key)["Body"].read() == b"gradatim"
    listed = s3.list_objects_v2(Bucket=cluster.s3_bucket, Prefix="tests/")
    assert key in {entry["Key"] for entry in listed["Contents"]}


def test_s3_rejects_a_wrong_secret(cluster: ClusterInfo):
    import boto3

    wrong = boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        aws_access_key_id=cluster.s3_access_key,
        aws_secret_access_key="not-the-secret",
        region_name=cluster.s3_region,
    )
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied"):
        wrong.list_objects_v2(Bucket=cluster.s3_bucket)


def test_prometheus_scrapes_a_target_written_to_the_sd_dir(cluster: ClusterInfo):
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    Gauge("gradatim_test_probe", "Set by test_cluster.py", registry=registry).set(42)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    target_file = cluster.prometheus_sd_dir / f"operator-test-{port}.json"  # the operator job's file_sd pattern
    try:
        target_file.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"run": "test"}}]))

        def target_up() -> bool:
            targets = get_json(f"{cluster.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
            return any(t["scrapeUrl"].startswith(f"http://127.0.0.1:{port}/") and t["health"] == "up" for t in targets)

        eventually(target_up, timeout=60)
        query = f"{cluster.prometheus_url}/api/v1/query?query=gradatim_test_probe"
        result = eventually(lambda: get_json(query)["data"]["result"], timeout=30)
        assert result[0]["value"][1] == "42"
        assert result[0]["metric"]["run"] == "test" and result[0]["metric"]["job"] == "gradatim-operator"
    finally:
        target_file.unlink(missing_ok=True)
        server.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


# -- env file, CLI, up/down -------------------------------------------------------------


def test_env_file_describes_the_cluster(cluster: ClusterInfo):
    env = dict(line.split("=", 1) for line in cluster.env_file.read_text().splitlines())
    assert env == cluster.env
    assert Path(env["GRADATIM_PROMETHEUS_SD_DIR"]).is_dir()
    namespaces = subprocess.run(
        [env["KUBECTL"], "get", "namespace", "kube-system", "-o", "name"],
        env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]},
        capture_output=True,
        text=True,
    )
    assert namespaces.stdout.strip() == "namespace/kube-system", namespaces.stderr


def test_second_up_says_already_running(cluster: ClusterInfo):
    started = time.monotonic()
    result = cluster_cli("up", "--state-dir", str(cluster.state_dir))
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr
    assert time.monotonic() - started < 15
    assert cluster_cli("kubeconfig", "--state-dir", str(cluster.state_dir)).stdout.strip() == str(cluster.kubeconfig)


def test_down_leaves_no_process_running(tmp_path: Path):
    """On its own state dir, so the shared cluster keeps running."""
    state_dir = tmp_path / "cluster"
    up = cluster_cli("up", "--state-dir", str(state_dir))
    try:
        assert up.returncode == 0, up.stderr
        assert cluster_cli("status", "--state-dir", str(state_dir)).returncode == 0
        processes = ClusterState.load(StateLayout(state_dir)).processes
        assert set(processes) == {"etcd", "seaweedfs", "prometheus", "kube-apiserver", "kube-controller-manager",
                                  "training-operator", "jobset-controller", "trainer-controller-manager", "pod-runner"}
        pids = [record.pid for record in processes.values()]
    except BaseException:
        cluster_cli("down", "--state-dir", str(state_dir))  # a failed check must not leave a control plane running
        raise

    down = cluster_cli("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert "Nothing left running" in down.stderr
    for pid in pids:
        stat = read_stat(pid)
        assert stat is None or stat[0] == "Z", f"pid {pid} still running"
        assert processes_in_group(pid) == []
    assert not ControlPlane(state_dir).is_running()
    status = cluster_cli("status", "--state-dir", str(state_dir))
    assert status.returncode == 1 and "stopped" in status.stdout
