"""The jobs of a run without Kubernetes (`gradatim run`): each attempt's PyTorchJob held in memory, its replicas run
as pods by the kubelet's code (gradatim/cluster/kubelet.py), the code the embedded cluster's pod runner runs them with.

A local run has no Kubeflow controller, so this does the little of the training-operator's work that a stage needs,
after kubeflow/training-operator v1.9 (pkg/controller.v1/pytorch, https://github.com/kubeflow/training-operator/tree/release-1.9):
one pod per replica, `<job>-<type>-<index>`, labelled with its job, type and index, reached by its name; the env the
operator injects (`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`, `PET_*` for torchrun); the job `Succeeded` when
its Master pod did and `Failed` when a pod failed (the replicas' restartPolicy is Never), its other pods then stopped
(cleanPodPolicy Running); suspend stops the pods and resume starts them again with a new `startTime`. Everything else
about jobs is the real controllers' to decide, on a cluster; the operator's tests run against them.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gradatim.planner.jobs import JobState, job_state
from gradatim.cluster.kubelet import JOB_LABELS, REPLICA_INDEX_LABEL, REPLICA_TYPE_LABEL, TERMINAL, LocalPod, PodProcesses, pod_cpu

log = logging.getLogger("gradatim.local.jobs")

MASTER_PORT = 23456  # Kubeflow's default; the kubelet code gives each job its own port on this machine
STOP_GRACE_SECONDS = 5.0
CANNOT_START = ("CreateContainerConfigError", "CreateContainerError")  # the kubelet's reasons for a container it cannot start


def _ts(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(status: dict[str, Any], type_: str, value: bool, reason: str, message: str, now: datetime) -> None:
    """Sets one condition; a job that starts running stops restarting, and a finished one stops running."""
    conditions = [c for c in status.get("conditions") or [] if c["type"] != type_]
    if value and type_ in ("Succeeded", "Failed"):
        conditions = [{**c, "status": "False", "lastTransitionTime": _ts(now)} if c["type"] == "Running" and c["status"] == "True" else c
                      for c in conditions]
    conditions.append({"type": type_, "status": "True" if value else "False", "reason": f"PyTorchJob{reason}", "message": message,
                       "lastUpdateTime": _ts(now), "lastTransitionTime": _ts(now)})
    status["conditions"] = conditions


def replica_pods(job: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
    """The pods the training-operator creates for a PyTorchJob, with the env it injects into the `pytorch` container."""
    meta, spec = job["metadata"], job["spec"]
    name, replicas = meta["name"], spec.get("pytorchReplicaSpecs") or {}
    counts = {rtype: int(r.get("replicas", 1)) for rtype, r in replicas.items()}
    nnodes, nproc = sum(counts.values()), str(spec.get("nprocPerNode") or "auto")
    master = f"{name}-master-0"
    pods = []
    for rtype, replica in replicas.items():
        for index in range(counts[rtype]):
            rank = index if rtype == "Master" else counts.get("Master", 0) + index
            template = copy.deepcopy(replica["template"])
            pod_spec = template.get("spec") or {}
            policy = replica.get("restartPolicy", "OnFailure")
            pod_spec["restartPolicy"] = "Never" if policy == "ExitCode" else policy  # the operator restarts ExitCode pods itself
            env = {"PYTHONUNBUFFERED": "1", "MASTER_ADDR": master, "PET_MASTER_ADDR": master, "MASTER_PORT": str(MASTER_PORT),
                   "PET_MASTER_PORT": str(MASTER_PORT), "WORLD_SIZE": str(nnodes * (int(nproc) if nproc.isdigit() else 1)),
                   "RANK": str(rank), "PET_NODE_RANK": str(rank), "PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": nproc}
            for container in pod_spec.get("containers") or []:
                if container["name"] == "pytorch":
                    container["env"] = [*(container.get("env") or []), *({"name": k, "value": v} for k, v in env.items())]
            labels = {**(template.get("metadata") or {}).get("labels", {}), JOB_LABELS["pytorchjob"]: name,
                      REPLICA_TYPE_LABEL: rtype.lower(), REPLICA_INDEX_LABEL: str(index)}
            pods.append({"apiVersion": "v1", "kind": "Pod", "spec": pod_spec,
                         "metadata": {"name": f"{name}-{rtype.lower()}-{index}", "namespace": meta["namespace"], "uid": str(uuid.uuid4()),
                                      "labels": labels, "creationTimestamp": _ts(now)}})
    return pods


class LocalJobs:
    """PyTorchJobs and their ConfigMaps held in memory, their pods run by `PodProcesses`. At most `parallel` jobs
    run at once, and a job starts beside others only when its CPU requests fit in this machine's cores (as the pod
    runner schedules: oversubscribed training threads thrash); the others wait `Created`, as pods wait for a node.
    Also the pods' `PodSources`: the ConfigMaps and Secrets of the run, and a name for each pod (the Service the
    operator creates for it)."""

    def __init__(self, workdir: Path, secrets: Mapping[str, Mapping[str, bytes]], parallel: int = 1,
                 image_modules: Mapping[str, str] | None = None, extra_env: Mapping[str, str] | None = None) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # name → PyTorchJob, in creation order
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.secrets = secrets
        self.parallel = parallel
        self.kubelet = PodProcesses(workdir, self, image_modules, extra_env)
        self.running_pods: dict[str, list[LocalPod]] = {}  # by job name, while its attempt runs
        self.stopping: dict[str, list[LocalPod]] = {}  # by job name: pods being deleted, until their processes are gone
        self.records: dict[str, dict[str, dict[str, Any]]] = {}  # by job name and pod uid: each pod with its last status

    # -- PodSources --------------------------------------------------------------------------------------

    def data(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        if kind == "secret":
            return dict(self.secrets[name]) if name in self.secrets else None
        configmap = self.configmaps.get(name)
        return {k: v.encode() for k, v in (configmap.get("data") or {}).items()} if configmap else None

    def services(self, namespace: str, listed_after: float = 0.0) -> set[str]:
        return {pod["metadata"]["name"] for pods in self.records.values() for pod in pods.values()}

    def token(self, namespace: str, account: str, request: dict[str, Any]) -> str | None:
        return None  # no API server to talk to

    # -- the jobs ----------------------------------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def create(self, job: dict[str, Any], configmap: dict[str, Any], now: datetime) -> bool:
        """Creates the job; False when one of that name exists (adopted, as the operator adopts on AlreadyExists)."""
        name = job["metadata"]["name"]
        if name in self.objects:
            return False
        job = json.loads(json.dumps(job))
        job["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_ts(now))
        job["status"] = {}
        set_condition(job["status"], "Created", True, "Created", f"PyTorchJob {name} is created.", now)
        self.configmaps[configmap["metadata"]["name"]] = configmap
        self.objects[name] = job
        return True

    def set_suspended(self, name: str, suspended: bool) -> None:
        if name in self.objects:
            self.objects[name]["spec"].setdefault("runPolicy", {})["suspend"] = suspended

    def delete(self, name: str) -> None:
        """Deletes the job: its pods are deleted too, and listed (with a deletionTimestamp) until they have stopped."""
        if self.objects.pop(name, None) is not None:
            self._stop(name)
            stopping = {lp.uid for lp in self.stopping.get(name, [])}
            self.records[name] = {uid: pod for uid, pod in self.records.get(name, {}).items() if uid in stopping}

    def pods(self, name: str) -> tuple[dict[str, Any], ...]:
        """The job's pods with the status the kubelet writes, its containers' exit codes and messages included."""
        return tuple(self.records.get(name, {}).values())

    def running(self) -> int:
        return len(self.running_pods)

    def cpu_in_use(self) -> float:
        return sum(pod_cpu(lp.pod) for lps in self.running_pods.values() for lp in lps)

    def logs(self, name: str) -> Path | None:
        """The Master pod's directory: `pytorch.log` is its trainer's output."""
        job = self.objects.get(name)
        return self.kubelet.pod_dir(job["metadata"]["namespace"], f"{name}-master-0") if job else None

    def sync(self, now: datetime) -> None:
        """Advances every job's pods and writes its status; waiting jobs start, oldest first, as slots free up.
        A deleted pod goes once its processes have."""
        # Running jobs first (the sort is stable: creation order within each), so the CPU and slots they free go
        # to the oldest waiting job.
        for name in sorted(self.objects, key=lambda n: n not in self.running_pods):
            self._sync(self.objects[name], now)
        for name, lps in list(self.stopping.items()):
            for lp in [lp for lp in lps if self.kubelet.stopped(lp)]:
                self.kubelet.forget(lp)
                lps.remove(lp)
                self.records.get(name, {}).pop(lp.uid, None)
            if not lps:
                del self.stopping[name]

    def stop_all(self) -> None:
        self.kubelet.stop_all(STOP_GRACE_SECONDS)
        self.running_pods.clear()
        self.stopping.clear()

    def _sync(self, job: dict[str, Any], now: datetime) -> None:
        name, status = job["metadata"]["name"], job["status"]
        if job_state(job) in (JobState.SUCCEEDED, JobState.FAILED):
            return
        if (job["spec"].get("runPolicy") or {}).get("suspend"):
            self._stop(name, now)
            if job_state(job) is not JobState.SUSPENDED:
                set_condition(status, "Running", False, "Suspended", f"PyTorchJob {name} is suspended.", now)
                set_condition(status, "Suspended", True, "Suspended", f"PyTorchJob {name} is suspended.", now)
            return
        if job_state(job) is JobState.SUSPENDED:
            set_condition(status, "Suspended", False, "Resumed", f"PyTorchJob {name} is resumed.", now)
            status.pop("startTime", None)
        lps = self.running_pods.get(name)
        if lps is None:
            if self.running() >= self.parallel or self.stopping.get(name):  # a resumed job's old pods go first
                return
            pods = replica_pods(job, now)
            if self.running() and self.cpu_in_use() + sum(pod_cpu(p) for p in pods) > self.kubelet.cpus:
                return
            self.records[name] = {pod["metadata"]["uid"]: pod for pod in pods}  # named before any starts: MASTER_ADDR
            lps = self.running_pods[name] = [self.kubelet.admit(pod) for pod in pods]
            status["startTime"] = _ts(now)
            set_condition(status, "Running", True, "Running", f"PyTorchJob {name} is running.", now)
            log.info("Started PyTorchJob %s/%s: %d pod(s)", job["metadata"]["namespace"], name, len(lps))
        for lp in lps:
            if lp.phase not in TERMINAL:
                self.kubelet.advance(lp)
            self.records[name][lp.uid] = {**lp.pod, "status": self.kubelet.status(lp)}
        failed = [lp for lp in lps if lp.phase == "Failed"]
        # A kubelet waits for a missing Secret or ConfigMap to be created; nothing creates one during a local run.
        stuck = next(((lp, c) for lp in lps for c in lp.all() if (c.state.get("waiting") or {}).get("reason") in CANNOT_START), None)
        if failed:
            rtype = failed[0].pod["metadata"]["labels"][REPLICA_TYPE_LABEL]
            count = sum(1 for lp in failed if lp.pod["metadata"]["labels"][REPLICA_TYPE_LABEL] == rtype)
            set_condition(status, "Failed", True, "Failed", f"PyTorchJob {name} is failed because {count} {rtype.capitalize()} replica(s) failed.", now)
        elif stuck is not None:
            lp, c = stuck
            waiting = c.state["waiting"]
            set_condition(status, "Failed", True, "Failed", f"PyTorchJob {name} is failed because pod {lp.name} cannot start container "
                          f"{c.name}: {waiting['reason']}: {waiting.get('message', '')}", now)
        elif any(lp.phase == "Succeeded" and lp.pod["metadata"]["labels"][REPLICA_TYPE_LABEL] == "master" for lp in lps):
            set_condition(status, "Succeeded", True, "Succeeded", f"PyTorchJob {name} is successfully completed.", now)
        else:
            return
        status["completionTime"] = _ts(now)
        self._stop(name, now)

    def _stop(self, name: str, now: datetime | None = None) -> None:
        """Deletes the job's pods that still run (cleanPodPolicy Running), without waiting: `sync` forgets them once
        their processes are gone. A finished pod stays, with its status."""
        for lp in self.running_pods.pop(name, []):
            if lp.phase in TERMINAL and not any(c.process is not None for c in lp.all()):
                self.kubelet.forget(lp)
                continue
            self.kubelet.begin_stop(lp, STOP_GRACE_SECONDS)
            self.stopping.setdefault(name, []).append(lp)
            record = self.records.get(name, {}).get(lp.uid)
            if record is not None:
                record["metadata"] = {**record["metadata"], "deletionTimestamp": _ts(now or datetime.now(timezone.utc))}
