"""A PyTorchJob's replicas as local processes, without Kubernetes: what the kubelet and Kubeflow's training
operator do for one job, given the job as a dict and resolvers for the ConfigMaps and Secrets it names.

Each replica is a `torchrun` process (`python -m torch.distributed.run`) with the env Kubeflow injects (master on
loopback), its ConfigMap and Secret volumes written to files and its Secret references resolved into env. `sync`
returns the status Kubeflow would write. Only `gradatim run` (no cluster) uses it, feeding it the jobs its
planner renders; on a cluster the real Kubeflow controllers and the pod runner do this. The semantics it copies
are listed, with links, in `kubeflow.py`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gradatim.api.resolved import FINAL_SCRAPE_ENV
from gradatim.api.runfiles import TERMINATION_LOG_ENV, TERMINATION_MESSAGE_LIMIT
from gradatim.cluster.targets import write_targets
from gradatim.cluster import kubeflow as kf
from gradatim.planner.render import KUBEFLOW_JOB_LABEL

log = logging.getLogger("gradatim.local.jobs")

KILL_GRACE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Resolvers:
    """Where a pod's ConfigMaps and Secrets come from: `(namespace, name) -> data`, None when there is none.
    Secret data is decoded (bytes), as the kubelet hands it to a container."""

    config_map: Callable[[str, str], Mapping[str, str] | None]
    secret: Callable[[str, str], Mapping[str, bytes] | None]


@dataclass
class Replica:
    rtype: str
    index: int
    process: subprocess.Popen
    log_path: Path
    metrics_port: int | None = None
    stopped: bool = False  # ended by the runner (its job finished or was stopped), not on its own

    @property
    def termination_log(self) -> Path:
        """The file the container's termination message is written to (its terminationMessagePath)."""
        return self.log_path.parent / "termination-log"


@dataclass
class LocalJob:
    """The processes of one PyTorchJob."""

    namespace: str
    name: str
    uid: str
    replicas: list[Replica] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    master_port: int = 0

    def exit_codes(self) -> dict[tuple[str, int], int | None]:
        return {(r.rtype, r.index): r.process.poll() for r in self.replicas}

    def kill(self) -> None:
        live = [r for r in self.replicas if r.process.poll() is None]
        for r in live:
            r.stopped = True
            _signal_group(r.process, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        for r in live:
            try:
                r.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(r.process, signal.SIGKILL)
                r.process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


# What the kubelet keeps of a failed container's log as its message under FallbackToLogsOnError.
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"


def pod_object(job: Mapping[str, Any], replica: Replica) -> dict[str, Any]:
    """The pod Kubeflow would create for a replica: its template's labels and spec, owned by the job."""
    meta = job["metadata"]
    template = job["spec"]["pytorchReplicaSpecs"][replica.rtype]["template"]
    labels = {**((template.get("metadata") or {}).get("labels") or {}), KUBEFLOW_JOB_LABEL: meta["name"],
              REPLICA_TYPE_LABEL: replica.rtype.lower(), REPLICA_INDEX_LABEL: str(replica.index)}
    owner = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": meta["name"], "uid": meta["uid"], "controller": True,
             "blockOwnerDeletion": True}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": kf.pod_name(meta["name"], replica.rtype, replica.index), "namespace": meta["namespace"], "labels": labels,
                         "ownerReferences": [owner]},
            "spec": template.get("spec") or {}, "status": {"phase": "Pending"}}


def exit_code(returncode: int) -> int:
    """A process's status as a container's exit code: killed by signal N is 128 + N (SIGKILL: 137)."""
    return 128 - returncode if returncode < 0 else returncode


def termination_message(replica: Replica, code: int, policy: str | None) -> str:
    """What the kubelet reads into the terminated state: the termination message file, or with
    FallbackToLogsOnError and a failed container, the log's tail."""
    try:
        text = replica.termination_log.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    except OSError:
        text = ""
    if not text.strip() and code != 0 and policy == "FallbackToLogsOnError":
        try:
            lines = replica.log_path.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
        except OSError:
            lines = []
        text = b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
    return text


def pod_status(pod: dict[str, Any], replica: Replica) -> dict[str, Any]:
    """`pod` with the status the kubelet writes for the replica's one container: running, or terminated with
    its exit code, reason and message. A replica the runner stopped says so in its reason ("Killed"), so that its
    SIGKILL after the grace period is not taken for a kill for memory."""
    container = next((c for c in pod["spec"].get("containers", []) if c["name"] == "pytorch"), {})
    returncode = replica.process.poll()
    if returncode is None:
        phase, state = "Running", {"running": {}}
    else:
        code = exit_code(returncode)
        reason = "Completed" if code == 0 else ("Killed" if replica.stopped else "Error")
        terminated: dict[str, Any] = {"exitCode": code, "reason": reason}
        if message := termination_message(replica, code, container.get("terminationMessagePolicy")):
            terminated["message"] = message
        phase, state = ("Succeeded" if code == 0 else "Failed"), {"terminated": terminated}
    status = {"phase": phase, "containerStatuses": [{"name": "pytorch", "image": container.get("image", ""), "ready": phase == "Running",
                                                     "restartCount": 0, "state": state}]}
    return {**pod, "status": status}


class JobProcesses:
    """The running processes of many PyTorchJobs, by job uid. Knows nothing of where jobs come from or where
    their status goes: `sync` takes a job and returns its new status."""

    def __init__(
        self,
        workdir: Path,
        resolvers: Resolvers,
        image_modules: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        prometheus_sd_dir: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.resolvers = resolvers
        self.image_modules = dict(image_modules or {})
        self.extra_env = dict(extra_env or {})
        self.sd_dir = prometheus_sd_dir
        self.jobs: dict[str, LocalJob] = {}
        self.pods: dict[str, list[dict[str, Any]]] = {}  # by job uid: each replica's pod, status as the kubelet writes it

    def sync(self, job: dict[str, Any], now: datetime, may_start: bool = True) -> dict[str, Any]:
        """Starts, checks or stops the job's processes as its spec says; returns the status Kubeflow would write.
        `may_start` is the scheduler's say: False leaves a job that has not started yet `Created`, as a job
        whose pods wait for a node."""
        meta = job["metadata"]
        name, uid = meta["name"], meta["uid"]
        msg = kf.messages(name)
        status = job.get("status") or {}
        local = self.jobs.get(uid)

        if kf.has_condition(status, "Failed") or kf.has_condition(status, "Succeeded"):
            if local is not None:
                self.stop(uid)
            return status
        if not any(c.get("type") == "Created" for c in status.get("conditions") or []):
            status = kf.set_condition(status, "Created", True, kf.reason("Created"), msg["Created"], now)

        if kf.run_policy(job).get("suspend"):
            if local is not None:
                self.stop(uid)
            if not kf.has_condition(status, "Suspended"):
                status = kf.set_condition(status, "Running", False, kf.reason("Suspended"), msg["Suspended"], now)
                status = kf.set_condition(status, "Suspended", True, kf.reason("Suspended"), msg["Suspended"], now)
                status["replicaStatuses"] = {t: {"active": 0} for t in kf.replica_counts(job)}
            return status
        if kf.has_condition(status, "Suspended"):
            status = kf.set_condition(status, "Suspended", False, kf.reason("Resumed"), msg["Resumed"], now)
            status.pop("startTime", None)
        if local is not None:
            return self._check(job, local, status, now)
        if kf.has_condition(status, "Running"):  # running before, but its processes are gone (runner restart)
            return kf.set_condition(status, "Failed", True, kf.reason("Failed"), f"PyTorchJob {name} is failed because its replicas were lost.", now)
        if not may_start:
            return status
        self.jobs[uid] = self._start(job)
        self.pods[uid] = [pod_object(job, r) for r in self.jobs[uid].replicas]
        status["startTime"] = status.get("startTime") or kf._ts(now)
        status = kf.set_condition(status, "Running", True, kf.reason("Running"), msg["Running"], now)
        status["replicaStatuses"] = {t: {"active": n} for t, n in kf.replica_counts(job).items()}
        return status

    def stop(self, uid: str) -> None:
        """Kills the job's processes (if any) and forgets them; their pods' last status is kept."""
        local = self.jobs.pop(uid, None)
        if local is not None:
            local.kill()
            self.pods[uid] = [pod_status(pod, r) for pod, r in zip(self.pods.get(uid, []), local.replicas)]
            self._remove_targets(local)

    def forget(self, uid: str) -> None:
        """Drops a deleted job's pods."""
        self.stop(uid)
        self.pods.pop(uid, None)

    def stop_all(self) -> None:
        for uid in list(self.jobs):
            self.stop(uid)

    def _check(self, job: dict[str, Any], local: LocalJob, status: dict[str, Any], now: datetime) -> dict[str, Any]:
        name = job["metadata"]["name"]
        self.pods[local.uid] = [pod_status(pod_object(job, r), r) for r in local.replicas]
        deadline = kf.run_policy(job).get("activeDeadlineSeconds")
        codes = local.exit_codes()
        failed = [k for k, c in codes.items() if c not in (None, 0)]
        master_done = codes.get(("Master", 0)) == 0
        counts = kf.replica_counts(job)
        retryable = [k for k in failed if kf.should_restart(job, k[0], codes[k])]
        backoff_limit = kf.run_policy(job).get("backoffLimit")
        if deadline and time.monotonic() - local.started > float(deadline):
            status = kf.set_condition(status, "Failed", True, kf.reason("Failed"), kf.messages(name)["Deadline"], now)
        elif failed and len(retryable) == len(failed) and (backoff_limit is None or local.restarts < int(backoff_limit)):
            rtype = failed[0][0]
            for key in failed:
                self._restart_replica(job, local, key)
            return kf.set_condition(status, "Restarting", True, kf.reason("Restarting"),
                                    f"PyTorchJob {name} is restarting because {len(failed)} {rtype} replica(s) failed.", now)
        elif failed and retryable:
            status = kf.set_condition(status, "Failed", True, kf.reason("Failed"), kf.messages(name)["Backoff"], now)
        elif failed:
            rtype = failed[0][0]
            n = sum(1 for k in failed if k[0] == rtype)
            status = kf.set_condition(status, "Failed", True, kf.reason("Failed"), f"PyTorchJob {name} is failed because {n} {rtype} replica(s) failed.", now)
        elif kf.has_condition(status, "Restarting") and all(c is None for c in codes.values()):
            return kf.set_condition(status, "Running", True, kf.reason("Running"), kf.messages(name)["Running"], now)
        elif master_done:
            status = kf.set_condition(status, "Succeeded", True, kf.reason("Succeeded"), kf.messages(name)["Succeeded"], now)
        else:
            return status
        # Finished: stop what still runs, and move active counts over as Kubeflow does.
        local.kill()
        codes = local.exit_codes()
        status["replicaStatuses"] = {
            t: {"active": 0,
                "succeeded": sum(1 for (rt, _), c in codes.items() if rt == t and (c == 0 or (master_done and not failed))),
                "failed": sum(1 for (rt, _), c in codes.items() if rt == t and c not in (0, None) and not master_done)}
            for t in counts
        }
        status["completionTime"] = kf._ts(now)
        self.stop(job["metadata"]["uid"])
        return status

    def _restart_replica(self, job: dict[str, Any], local: LocalJob, key: tuple[str, int]) -> None:
        rtype, index = key
        old = next(r for r in local.replicas if (r.rtype, r.index) == key)
        spec = job["spec"]["pytorchReplicaSpecs"][rtype]
        old.termination_log.unlink(missing_ok=True)  # a restarted container starts with an empty message
        new = self._start_replica(job, rtype, index, spec["template"], local.master_port, old.log_path.parent)
        local.replicas[local.replicas.index(old)] = new
        local.restarts += 1
        log.info("Restarted %s-%d of PyTorchJob %s/%s (restart %d)", rtype, index, local.namespace, local.name, local.restarts)

    # -- starting replicas ------------------------------------------------------------------------------

    def job_dir(self, namespace: str, name: str) -> Path:
        """Where a job's replicas run and log: `<pod>/container.log` per replica."""
        return self.workdir / namespace / name

    def _start(self, job: dict[str, Any]) -> LocalJob:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        port = free_port()
        local = LocalJob(ns, name, meta["uid"], master_port=port)
        root = self.job_dir(ns, name)
        try:
            for rtype, spec in (job["spec"].get("pytorchReplicaSpecs") or {}).items():
                for index in range(int(spec.get("replicas", 1))):
                    local.replicas.append(self._start_replica(job, rtype, index, spec["template"], port, root / kf.pod_name(name, rtype, index)))
        except BaseException:
            local.kill()  # a gang starts whole or not at all
            raise
        log.info("Started PyTorchJob %s/%s: %d replica(s), logs in %s", ns, name, len(local.replicas), root)
        self._write_targets(local)
        return local

    def _start_replica(self, job: dict[str, Any], rtype: str, index: int, template: dict[str, Any], port: int, pod_root: Path) -> Replica:
        ns = job["metadata"]["namespace"]
        pod = template.get("spec") or {}
        container = next(c for c in pod["containers"] if c["name"] == "pytorch")
        mounts = self._materialise_volumes(ns, pod, container, pod_root)
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(self._container_env(ns, container))
        env.update(kf.replica_env(job, rtype, index, "127.0.0.1", port))
        metrics_port = None
        if any(p.get("name") == "metrics" for p in container.get("ports") or []):
            metrics_port = free_port()  # every pod has its own IP; here every replica gets its own port
            env["GRADATIM_METRICS_PORT"] = str(metrics_port)
            if self.sd_dir:  # our Prometheus scrapes every second: a short wait keeps a short stage's last values
                env.setdefault(FINAL_SCRAPE_ENV, "5")
        argv = self._argv(container, mounts)
        pod_root.mkdir(parents=True, exist_ok=True)
        log_path = pod_root / "container.log"
        # The kubelet mounts an empty file at terminationMessagePath; here the trainer is told where it is.
        env[TERMINATION_LOG_ENV] = str(pod_root / "termination-log")
        (pod_root / "termination-log").write_text("")
        with open(log_path, "ab") as out:
            process = subprocess.Popen(argv, env=env, cwd=pod_root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return Replica(rtype, index, process, log_path, metrics_port)

    def _argv(self, container: dict[str, Any], mounts: Mapping[str, Path]) -> list[str]:
        argv = [*container.get("command", []), *container.get("args", [])]
        if not argv:
            raise ValueError(f"container {container['name']} has no command")
        if argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        module = self.image_modules.get(container.get("image", ""))
        if module and "-m" in argv[3:]:
            i = argv.index("-m", 3)
            argv[i + 1] = module  # what this image's entrypoint module is, on this machine
        out = []
        for arg in argv:
            for mount, local in mounts.items():
                if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
                    arg = str(local) + arg[len(mount.rstrip("/")):]
            out.append(arg)
        return out

    def _materialise_volumes(self, ns: str, pod: dict[str, Any], container: dict[str, Any], pod_root: Path) -> dict[str, Path]:
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            path = mount["mountPath"]
            if path == "/dev/shm":
                continue  # the memory-backed emptyDir: the machine's own /dev/shm
            volume = volumes.get(mount["name"], {})
            local = pod_root / "mounts" / path.strip("/")
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                for key, value in self._config_map(ns, volume["configMap"]["name"]).items():
                    (local / key).write_text(value)
            elif "secret" in volume:
                for key, value in self._secret(ns, volume["secret"]["secretName"]).items():
                    (local / key).write_bytes(value)
            mounts[path] = local
        return mounts

    def _container_env(self, ns: str, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
                continue
            ref = (var.get("valueFrom") or {})
            if "secretKeyRef" in ref:
                sk = ref["secretKeyRef"]
                data = self.resolvers.secret(ns, sk["name"])
                if data is None and sk.get("optional"):
                    continue
                if data is None:
                    raise LookupError(f"Secret {sk['name']} not found in namespace {ns}")
                if sk["key"] in data:
                    env[var["name"]] = data[sk["key"]].decode()
                elif not sk.get("optional"):
                    raise KeyError(f"Secret {sk['name']} has no key {sk['key']}")
            elif "configMapKeyRef" in ref:
                ck = ref["configMapKeyRef"]
                data = self._config_map(ns, ck["name"])
                if ck["key"] in data:
                    env[var["name"]] = data[ck["key"]]
        return env

    def _config_map(self, ns: str, name: str) -> Mapping[str, str]:
        data = self.resolvers.config_map(ns, name)
        if data is None:
            raise LookupError(f"ConfigMap {name} not found in namespace {ns}")
        return data

    def _secret(self, ns: str, name: str) -> Mapping[str, bytes]:
        data = self.resolvers.secret(ns, name)
        if data is None:
            raise LookupError(f"Secret {name} not found in namespace {ns}")
        return data

    # -- Prometheus file-based service discovery ---------------------------------------------------------

    def _targets_path(self, local: LocalJob) -> Path | None:
        return self.sd_dir / f"pytorchjob_{local.namespace}_{local.name}.json" if self.sd_dir else None

    def _write_targets(self, local: LocalJob) -> None:
        path = self._targets_path(local)
        if path is None:
            return
        groups = [
            {"targets": [f"127.0.0.1:{r.metrics_port}"],
             "labels": {"namespace": local.namespace, "pytorchjob": local.name, "replica_type": r.rtype.lower(), "replica_index": str(r.index)}}
            for r in local.replicas if r.metrics_port
        ]
        write_targets(path, groups)

    def _remove_targets(self, local: LocalJob) -> None:
        path = self._targets_path(local)
        if path is not None:
            path.unlink(missing_ok=True)
