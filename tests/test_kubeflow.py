"""The real Kubeflow controllers of the embedded control plane (training-operator v1.9, Trainer v2.3 on JobSet) and
the pod runner under them: a two-node, two-process torchrun rendezvous through each job kind, a failed attempt
that stays failed, and an OnFailure replica restarted in place. The job semantics asserted here are the
controllers' own; the pod runner only runs the pods they create."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.conftest import node_for, running
from gradatim.cluster.podrunner import PodRunner
from gradatim.planner.render import TRAINING_RUNTIME

REPO = Path(__file__).resolve().parents[1]
PROBE_IMAGE = "gradatim/ddp-probe:test"
COMMAND = ["torchrun", "-m", "gradatim.trainer", "--spec", "/etc/gradatim/stage.json"]


@pytest.fixture
def runner(kube, namespace, tmp_path):
    r = PodRunner(kube, tmp_path / "pods", namespace, {PROBE_IMAGE: "tests.stand_in_ddp_probe"},
                  extra_env={"PYTHONPATH": str(REPO)}, poll_seconds=0.2, node_name=node_for(namespace), cpus=64)
    with running(r):
        yield r


def setup_objects(kube, namespace) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "probe-spec"}, "data": {"stage.json": '{"stage": "probe"}'}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "probe"}, "stringData": {"token": "s3cr3t"}})


def probe_env(probe_dir: Path, exit_code: int = 0) -> list[dict]:
    return [{"name": "PROBE_DIR", "value": str(probe_dir)}, {"name": "PROBE_EXIT", "value": str(exit_code)},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "probe", "key": "token"}}}]


SPEC_VOLUME = {"name": "spec", "configMap": {"name": "probe-spec"}}
SPEC_MOUNT = {"name": "spec", "mountPath": "/etc/gradatim"}


def pytorchjob(name: str, probe_dir: Path, workers: int = 1, nproc: int = 2, exit_code: int = 0) -> dict:
    """Shaped as the planner renders one (gradatim/planner/render.py): replica restartPolicy Never, no
    backoffLimit, cleanPodPolicy Running, no pod-template restartPolicy."""
    def replica(n: int) -> dict:
        return {"replicas": n, "restartPolicy": "Never", "template": {"spec": {
            "containers": [{"name": "pytorch", "image": PROBE_IMAGE, "command": COMMAND, "env": probe_env(probe_dir, exit_code),
                            "volumeMounts": [SPEC_MOUNT]}],
            "volumes": [SPEC_VOLUME]}}}
    specs = {"Master": replica(1)}
    if workers:
        specs["Worker"] = replica(workers)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"nprocPerNode": str(nproc), "runPolicy": {"cleanPodPolicy": "Running"}, "pytorchReplicaSpecs": specs}}


def trainjob(name: str, probe_dir: Path, nodes: int = 2, nproc: int = 2) -> dict:
    patch = {"manager": "gradatim.io/tests", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {
        "template": {"spec": {"volumes": [SPEC_VOLUME], "containers": [{"name": "node", "volumeMounts": [SPEC_MOUNT]}]}}}}}]}}}}
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": name},
            "spec": {"runtimeRef": {"name": TRAINING_RUNTIME}, "runtimePatches": [patch],
                     "trainer": {"image": PROBE_IMAGE, "command": COMMAND, "numNodes": nodes, "numProcPerNode": nproc,
                                 "env": probe_env(probe_dir), "resourcesPerNode": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}}}


def create(kube, namespace, body) -> None:
    group, version = body["apiVersion"].split("/")
    plural = body["kind"].lower() + "s"
    client.CustomObjectsApi(kube).create_namespaced_custom_object(group, version, namespace, plural, body)


def wait_condition(kube, namespace, body, type_, timeout=180) -> dict:
    group, version = body["apiVersion"].split("/")
    api = client.CustomObjectsApi(kube)
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = api.get_namespaced_custom_object(group, version, namespace, body["kind"].lower() + "s", body["metadata"]["name"])
        if any(c["type"] == type_ and c["status"] == "True" for c in (job.get("status") or {}).get("conditions", [])):
            return job
        time.sleep(0.3)
    raise AssertionError(f"{body['metadata']['name']} never {type_}: {json.dumps(job.get('status'))}")


def ranks(probe_dir: Path, world: int) -> list[dict]:
    return [json.loads((probe_dir / f"rank-{r}.json").read_text()) for r in range(world)]


def test_a_pytorchjob_of_two_nodes_rendezvous_through_training_operator(kube, namespace, runner, tmp_path):
    setup_objects(kube, namespace)
    body = pytorchjob("ddp", tmp_path)
    create(kube, namespace, body)
    job = wait_condition(kube, namespace, body, "Succeeded")
    records = ranks(tmp_path, 4)
    assert all(r["sum"] == 1 + 2 + 3 + 4 for r in records), "the all-reduce spanned both pods"
    assert {r["WORLD_SIZE"] for r in records} == {"4"} and sorted(r["RANK"] for r in records) == ["0", "1", "2", "3"]
    assert {r["PET_NNODES"] for r in records} == {"2"} and {r["PET_NPROC_PER_NODE"] for r in records} == {"2"}
    assert sorted({r["PET_NODE_RANK"] for r in records}) == ["0", "1"] and {r["FROM_SECRET"] for r in records} == {"s3cr3t"}
    assert json.loads(records[0]["spec"]) == {"stage": "probe"}, "the ConfigMap volume was materialised and the path rewritten"
    conditions = {c["type"]: c for c in job["status"]["conditions"]}
    assert conditions["Succeeded"]["reason"] == "PyTorchJobSucceeded", "written by training-operator"
    master = client.CoreV1Api(kube).read_namespaced_pod("ddp-master-0", namespace)
    env = {e.name: e.value for e in master.spec.containers[0].env}
    assert env["MASTER_ADDR"] == "ddp-master-0" and env["MASTER_PORT"] == "23456", "training-operator's env, resolved by the pod runner"
    assert not master.spec.init_containers, "no init-pytorch container (the control plane turns it off)"


def test_a_trainjob_of_two_nodes_rendezvous_through_jobset(kube, namespace, runner, tmp_path):
    setup_objects(kube, namespace)
    body = trainjob("ddp", tmp_path)
    create(kube, namespace, body)
    job = wait_condition(kube, namespace, body, "Complete")
    records = ranks(tmp_path, 4)
    assert all(r["sum"] == 10 for r in records) and {r["WORLD_SIZE"] for r in records} == {"4"}
    assert sorted({r["PET_NODE_RANK"] for r in records}) == ["0", "1"], "node rank from the Job's completion index"
    assert json.loads(records[0]["spec"]) == {"stage": "probe"}, "the runtime patch's ConfigMap volume reached the pod"
    assert job["status"]["jobsStatus"][0]["name"] == "node"
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector="jobset.sigs.k8s.io/jobset-name=ddp").items
    assert len(pods) == 2 and {p.spec.subdomain for p in pods} == {"ddp"}
    env = {e.name: e.value for e in pods[0].spec.containers[0].env}
    assert env["PET_MASTER_ADDR"] == "ddp-node-0-0.ddp" and env["PET_MASTER_PORT"] == "29500", "Trainer's torch plugin"


def test_a_failed_attempt_stays_failed_and_is_never_run_again(kube, namespace, runner, tmp_path):
    """The failure mode seen with `backoffLimit: 0` and a pod-template restartPolicy: training-operator re-created
    the failed pod after writing Failed. Shaped as the planner renders it, the job fails once and stays so."""
    setup_objects(kube, namespace)
    body = pytorchjob("bad", tmp_path, workers=0, nproc=1, exit_code=3)
    create(kube, namespace, body)
    job = wait_condition(kube, namespace, body, "Failed")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PyTorchJobFailed"
    core = client.CoreV1Api(kube)
    first = core.read_namespaced_pod("bad-master-0", namespace)
    assert first.status.phase == "Failed" and first.status.container_statuses[0].state.terminated.exit_code != 0
    time.sleep(10)  # the operator's resyncs and the pod's own events come and go
    again = core.read_namespaced_pod("bad-master-0", namespace)
    assert again.metadata.uid == first.metadata.uid and again.status.phase == "Failed", "the same failed pod, not a new one"
    assert again.status.container_statuses[0].restart_count == 0
    events = [e for e in core.list_namespaced_event(namespace).items if e.involved_object.name == "bad" and e.reason == "SuccessfulCreatePod"]
    assert len(events) == 1, [(e.reason, e.message) for e in events]
    assert len(list((tmp_path / "pods" / namespace).glob("bad-master-0*"))) == 1


def test_an_onfailure_replica_is_restarted_in_place(kube, namespace, runner, tmp_path):
    """`restartPolicy: OnFailure` on a replica: training-operator gives the pod that policy and the pod runner
    restarts the container in place, as a kubelet does; the job then succeeds."""
    # The marker's path comes by env, which the pod runner maps into the pod's emptyDir (a path inside a shell
    # script is not rewritten).
    script = 'test -f "$MARKER" && exit 0; touch "$MARKER"; exit 1'
    body = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "flaky"},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": {"spec": {
                "containers": [{"name": "pytorch", "image": "busybox", "command": ["sh", "-c", script],
                                "env": [{"name": "MARKER", "value": "/work/marker"}],
                                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                "volumes": [{"name": "work", "emptyDir": {}}]}}}}}}
    create(kube, namespace, body)
    wait_condition(kube, namespace, body, "Succeeded")
    pod = client.CoreV1Api(kube).read_namespaced_pod("flaky-master-0", namespace)
    assert pod.spec.restart_policy == "OnFailure"
    status = pod.status.container_statuses[0]
    assert status.restart_count == 1 and status.last_state.terminated.exit_code == 1
    assert list((tmp_path / "pods" / namespace / "flaky-master-0" / "volumes").rglob("marker")), "the marker is in the pod's emptyDir"
