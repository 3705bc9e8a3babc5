"""The local job runner against the real API server and Kubeflow's PyTorchJob CRD: the env Kubeflow injects,
a working multi-node torchrun rendezvous on loopback, the conditions Kubeflow writes, suspend and deletion."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from gradatim.cluster.jobrunner import JobRunner, cpu_quantity, cpu_request

PROBE_IMAGE = "gradatim/ddp-probe:test"


@pytest.fixture
def runner(kube, namespace, tmp_path):
    r = JobRunner(kube, tmp_path / "jobs", namespace, {PROBE_IMAGE: "tests.stand_in_ddp_probe"},
                  extra_env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])}, poll_seconds=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=r.run, args=(stop,), daemon=True)
    thread.start()
    yield r
    stop.set()
    thread.join(30)


def pytorchjob(name: str, probe_dir: Path, workers: int = 1, nproc: int = 2, suspend: bool = False, exit_code: int = 0) -> dict:
    def replica(n: int) -> dict:
        return {"replicas": n, "restartPolicy": "Never", "template": {"spec": {
            "containers": [{"name": "pytorch", "image": PROBE_IMAGE,
                            "command": ["torchrun", "-m", "gradatim.trainer", "--spec", "/etc/gradatim/stage.json"],
                            "env": [{"name": "PROBE_DIR", "value": str(probe_dir)}, {"name": "PROBE_EXIT", "value": str(exit_code)},
                                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "probe", "key": "token"}}}],
                            "volumeMounts": [{"name": "spec", "mountPath": "/etc/gradatim"}, {"name": "dshm", "mountPath": "/dev/shm"}]}],
            "volumes": [{"name": "spec", "configMap": {"name": "probe-spec"}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]}}}
    specs = {"Master": replica(1)}
    if workers:
        specs["Worker"] = replica(workers)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"nprocPerNode": str(nproc), "runPolicy": {"suspend": suspend, "backoffLimit": 0}, "pytorchReplicaSpecs": specs}}


def setup_objects(kube, namespace) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "probe-spec"}, "data": {"stage.json": '{"stage": "probe"}'}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "probe"}, "stringData": {"token": "s3cr3t"}})


def wait_condition(kube, namespace, name, type_, timeout=120) -> dict:
    api = client.CustomObjectsApi(kube)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", name)
        if any(c["type"] == type_ and c["status"] == "True" for c in (job.get("status") or {}).get("conditions", [])):
            return job
        time.sleep(0.3)
    raise AssertionError(f"{name} never {type_}: {json.dumps(job.get('status'))}")


def create(kube, namespace, body) -> None:
    client.CustomObjectsApi(kube).create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", body)


def test_two_nodes_of_two_processes_rendezvous_with_kubeflow_env(kube, namespace, runner, tmp_path):
    setup_objects(kube, namespace)
    create(kube, namespace, pytorchjob("ddp", tmp_path))
    job = wait_condition(kube, namespace, "ddp", "Succeeded")
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(4)]
    assert all(r["sum"] == 1 + 2 + 3 + 4 for r in ranks), "the all-reduce spanned both nodes"
    assert {r["WORLD_SIZE"] for r in ranks} == {"4"} and sorted(r["RANK"] for r in ranks) == ["0", "1", "2", "3"]
    assert {r["PET_NNODES"] for r in ranks} == {"2"} and {r["PET_NPROC_PER_NODE"] for r in ranks} == {"2"}
    assert sorted({r["PET_NODE_RANK"] for r in ranks}) == ["0", "1"] and {r["MASTER_ADDR"] for r in ranks} == {"127.0.0.1"}
    assert {r["PYTHONUNBUFFERED"] for r in ranks} == {"1"} and {r["FROM_SECRET"] for r in ranks} == {"s3cr3t"}
    assert json.loads(ranks[0]["spec"]) == {"stage": "probe"}, "the ConfigMap volume was materialised and the path rewritten"
    types = [c["type"] for c in job["status"]["conditions"]]
    assert types[0] == "Created" and "Succeeded" in types
    assert {c["type"]: c["status"] for c in job["status"]["conditions"]}["Running"] == "False"
    assert next(c for c in job["status"]["conditions"] if c["type"] == "Succeeded")["reason"] == "PyTorchJobSucceeded"
    assert job["status"]["replicaStatuses"]["Master"] == {"active": 0, "succeeded": 1, "failed": 0}
    assert job["status"]["completionTime"] and job["status"]["startTime"]


def test_a_failing_replica_fails_the_job(kube, namespace, runner, tmp_path):
    setup_objects(kube, namespace)
    create(kube, namespace, pytorchjob("bad", tmp_path, workers=0, nproc=1, exit_code=3))
    job = wait_condition(kube, namespace, "bad", "Failed")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PyTorchJobFailed" and "1 Master replica(s) failed" in failed["message"]
    assert not runner.jobs
    pod = client.CoreV1Api(kube).read_namespaced_pod("bad-master-0", namespace)  # written before the job's Failed
    assert pod.metadata.labels["training.kubeflow.org/job-name"] == "bad" and pod.metadata.owner_references[0].name == "bad"
    terminated = pod.status.container_statuses[0].state.terminated
    # The container is torchrun, which exits 1 when a worker fails (here with 3), and names the worker's code in its log.
    assert pod.status.phase == "Failed" and terminated.exit_code == 1 and terminated.reason == "Error", "the kubelet's record of the exit"


def test_suspend_resume_and_delete(kube, namespace, runner, tmp_path):
    setup_objects(kube, namespace)
    create(kube, namespace, pytorchjob("later", tmp_path, workers=0, nproc=1, suspend=True))
    job = wait_condition(kube, namespace, "later", "Suspended")
    assert job["status"]["replicaStatuses"]["Master"]["active"] == 0 and not runner.jobs
    api = client.CustomObjectsApi(kube)
    api.patch_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "later", {"spec": {"runPolicy": {"suspend": False}}})
    job = wait_condition(kube, namespace, "later", "Succeeded")
    resumed = next(c for c in job["status"]["conditions"] if c["type"] == "Suspended")
    assert resumed["status"] == "False" and resumed["reason"] == "PyTorchJobResumed"

    long = pytorchjob("long", tmp_path, workers=0, nproc=1)
    long["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"] = ["sleep", "600"]
    create(kube, namespace, long)
    wait_condition(kube, namespace, "long", "Running")
    deadline = time.monotonic() + 10
    while not runner.jobs and time.monotonic() < deadline:
        time.sleep(0.1)
    [local] = runner.jobs.values()
    api.delete_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "long")
    deadline = time.monotonic() + 30
    while runner.jobs and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not runner.jobs and local.replicas[0].process.poll() is not None, "deleting the job stopped its process"


def shell_job(name: str, script: str, policy: str, backoff: int) -> dict:
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"runPolicy": {"backoffLimit": backoff}, "pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": policy,
                     "template": {"spec": {"containers": [{"name": "pytorch", "image": "busybox", "command": ["sh", "-c", script]}]}}}}}}


def test_restart_policies_and_backoff_limit(kube, namespace, runner):
    create(kube, namespace, shell_job("flaky", "test -f marker && exit 0; touch marker; exit 1", "OnFailure", 2))
    job = wait_condition(kube, namespace, "flaky", "Succeeded")
    restarting = next(c for c in job["status"]["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "PyTorchJobRestarting" and "1 Master replica(s) failed" in restarting["message"]

    create(kube, namespace, shell_job("hopeless", "exit 1", "OnFailure", 1))
    failed = next(c for c in wait_condition(kube, namespace, "hopeless", "Failed")["status"]["conditions"] if c["type"] == "Failed")
    assert "reached the specified backoff limit" in failed["message"]

    create(kube, namespace, shell_job("permanent", "exit 3", "ExitCode", 5))  # 1-127: not retryable
    job = wait_condition(kube, namespace, "permanent", "Failed")
    assert not any(c["type"] == "Restarting" for c in job["status"]["conditions"])


def test_cpu_requests_are_read_as_the_scheduler_reads_them():
    job = {"spec": {"pytorchReplicaSpecs": {
        "Master": {"replicas": 1, "template": {"spec": {"containers": [{"name": "pytorch", "resources": {"requests": {"cpu": "1500m"}, "limits": {"cpu": "2"}}}]}}},
        "Worker": {"replicas": 3, "template": {"spec": {"containers": [{"name": "pytorch", "resources": {"limits": {"cpu": 2}}}]}}},
    }}}
    assert cpu_quantity("250m") == 0.25 and cpu_quantity("2") == 2.0
    assert cpu_request(job) == 1.5 + 3 * 2
