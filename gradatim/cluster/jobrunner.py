"""`gradatim jobrunner`: stands in for the Kubeflow training operator and the kubelet on a machine without them.

It watches PyTorchJobs on the API server and hands each to `processes.JobProcesses`, which runs each replica
as a local `torchrun` process with the env Kubeflow injects (master on loopback), the pod's ConfigMap volumes
written to files and its Secret references resolved into env (here: read from the API server); it writes back
the status conditions and replica statuses Kubeflow writes, and a pod per replica with the container state the
kubelet writes (exit code, reason, termination message). The semantics it copies are listed, with links, in
`gradatim/cluster/kubeflow.py`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from gradatim.cluster.processes import JobProcesses, LocalJob, Resolvers, free_port

__all__ = ["JobRunner", "LocalJob", "add_jobrunner_command", "free_port"]

log = logging.getLogger("gradatim.jobrunner")


def api_resolvers(core: client.CoreV1Api) -> Resolvers:
    """ConfigMaps and Secrets read from the API server, as the kubelet reads them."""

    def config_map(ns: str, name: str) -> Mapping[str, str] | None:
        try:
            return core.read_namespaced_config_map(name, ns).data or {}
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def secret(ns: str, name: str) -> Mapping[str, bytes] | None:
        try:
            data = core.read_namespaced_secret(name, ns).data or {}
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return {key: base64.b64decode(value) for key, value in data.items()}

    return Resolvers(config_map, secret)


class JobRunner:
    """Watches PyTorchJobs on the API server, runs them with `JobProcesses` and writes their status back."""

    def __init__(
        self,
        api: client.ApiClient,
        workdir: Path,
        namespace: str | None = None,
        image_modules: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        prometheus_sd_dir: Path | None = None,
        poll_seconds: float = 0.5,
        cpus: float | None = None,
    ) -> None:
        self.api = api
        self.cpus = cpus or os.cpu_count() or 1
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.core = client.CoreV1Api(api)
        self.processes = JobProcesses(workdir, api_resolvers(self.core), image_modules, extra_env, prometheus_sd_dir)
        self._pods_written: dict[tuple[str, str], str] = {}  # (job uid, pod name) -> the status last written

    @property
    def jobs(self) -> dict[str, LocalJob]:
        """The running jobs' processes, by job uid."""
        return self.processes.jobs

    # -- loop -------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("Job runner watching PyTorchJobs in %s", self.namespace or "all namespaces")
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception as err:  # the API server may blink; keep the processes and try again
                    log.warning("Job runner step failed: %s", err)
                stop.wait(self.poll_seconds)
        finally:
            self.processes.stop_all()

    def step(self) -> None:
        if self.namespace:
            items = self.custom.list_namespaced_custom_object("kubeflow.org", "v1", self.namespace, "pytorchjobs")["items"]
        else:
            items = self.custom.list_cluster_custom_object("kubeflow.org", "v1", "pytorchjobs")["items"]
        seen = set()
        # A one-node scheduler: a job starts when its pods' CPU requests fit beside the running ones (or when
        # nothing runs), as pods wait for a node; oversubscribed CPU training threads thrash.
        in_use = sum(cpu_request(j) for j in items if j["metadata"]["uid"] in self.jobs)
        for job in sorted(items, key=lambda j: j["metadata"].get("creationTimestamp") or ""):
            seen.add(job["metadata"]["uid"])
            starting = job["metadata"]["uid"] not in self.jobs
            fits = not self.jobs or in_use + cpu_request(job) <= self.cpus
            self.sync(job, may_start=fits)
            if starting and job["metadata"]["uid"] in self.jobs:
                in_use += cpu_request(job)
        for uid in [u for u in self.jobs if u not in seen]:  # deleted: stop its processes
            local = self.jobs[uid]
            log.info("PyTorchJob %s/%s was deleted; stopping its processes", local.namespace, local.name)
            self.processes.forget(uid)
            self._pods_written = {k: v for k, v in self._pods_written.items() if k[0] != uid}

    def sync(self, job: dict[str, Any], may_start: bool = True) -> None:
        before = job.get("status") or {}
        status = self.processes.sync(job, datetime.now(timezone.utc), may_start)
        self._write_pods(job)  # first: the operator reads the pods once the job says Failed
        if json.dumps(status, sort_keys=True) != json.dumps(before, sort_keys=True):
            self._write_status(job, status)

    def _write_pods(self, job: dict[str, Any]) -> None:
        """Creates each replica's pod, as Kubeflow would, and writes its status, as the kubelet would: a failed
        container's exit code, reason and termination message are how the operator learns why an attempt died."""
        uid = job["metadata"]["uid"]
        for pod in self.processes.pods.get(uid, []):
            meta = pod["metadata"]
            key, status = (uid, meta["name"]), json.dumps(pod["status"], sort_keys=True)
            if self._pods_written.get(key) == status:
                continue
            try:
                if key not in self._pods_written:
                    try:
                        self.core.create_namespaced_pod(meta["namespace"], {k: v for k, v in pod.items() if k != "status"})
                    except ApiException as err:
                        if err.status != 409:
                            raise
                self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": _replacing_states(pod["status"])})
                self._pods_written[key] = status
            except ApiException as err:  # the pod is a report, not what runs the replica: never stop a job for it
                log.warning("Could not write pod %s/%s: %s", meta["namespace"], meta["name"], err.reason)
                self._pods_written[key] = status

    def _write_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        meta = job["metadata"]
        try:
            self.custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", meta["namespace"], "pytorchjobs", meta["name"], {"status": status})
        except ApiException as err:
            if err.status != 404:
                raise


def _replacing_states(status: dict[str, Any]) -> dict[str, Any]:
    """A status patch whose container states replace the old ones: a strategic merge would keep `running` beside
    a new `terminated`, and a container has one state."""
    statuses = [{**c, "state": {"running": None, "waiting": None, "terminated": None, **c.get("state", {})}}
                for c in status.get("containerStatuses", [])]
    return {**status, "containerStatuses": statuses} if statuses else status


def cpu_quantity(value: str | int | float) -> float:
    """A Kubernetes CPU quantity in cores: `2`, `1.5`, `500m`."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def cpu_request(job: dict[str, Any]) -> float:
    """The CPU all of a PyTorchJob's pods request (limits where no request is set)."""
    total = 0.0
    for spec in (job["spec"].get("pytorchReplicaSpecs") or {}).values():
        for container in (spec.get("template") or {}).get("spec", {}).get("containers", []):
            resources = container.get("resources") or {}
            cpu = (resources.get("requests") or {}).get("cpu") or (resources.get("limits") or {}).get("cpu")
            total += int(spec.get("replicas", 1)) * (cpu_quantity(cpu) if cpu is not None else 0.0)
    return total


def add_jobrunner_command(subparsers) -> None:
    parser = subparsers.add_parser("jobrunner", help="run PyTorchJobs as local processes (stands in for Kubeflow and the kubelet)")
    parser.add_argument("-n", "--namespace", default=None, help="watch only this namespace (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("GRADATIM_HOME", Path.home() / ".gradatim")) / "jobs")
    parser.add_argument("--image-module", action="append", default=[], metavar="IMAGE=MODULE",
                        help="the Python module an image's `torchrun -m` entrypoint runs on this machine")
    parser.add_argument("--prometheus-sd-dir", type=Path, default=os.environ.get("GRADATIM_PROMETHEUS_SD_DIR"),
                        help="write Prometheus file_sd targets for each replica's metrics port here")
    parser.add_argument("--cpus", type=float, default=None,
                        help="CPU this node offers; a job waits until its pods' CPU requests fit (default: this machine's cores)")
    parser.set_defaults(func=_run_jobrunner)


def _run_jobrunner(args) -> int:
    from kubernetes import config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    modules = dict(item.split("=", 1) for item in args.image_module)
    runner = JobRunner(api, args.workdir, args.namespace, modules, prometheus_sd_dir=args.prometheus_sd_dir, cpus=args.cpus)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        runner.run(stop)
    except KeyboardInterrupt:
        stop.set()
    return 0
