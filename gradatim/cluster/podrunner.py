"""`gradatim podrunner`: stands in for the kubelet, and a one-node kube-scheduler, against a real API server.

Real controllers (Kubeflow's training operator, JobSet, the Job controller) create Pods. The pod runner registers a
Node, binds pending Pods to it (a job's pods together, when their CPU requests fit) and runs each bound Pod's
containers as local processes with the kubelet's code (kubelet.py: env, volumes, restarts, the status a kubelet
writes), writing that status back. A deleted pod's processes get SIGTERM, then SIGKILL after its grace period, and
then the pod is removed, as a kubelet finishes a deletion; a pod gone from the API server has its processes stopped.

Scheduling looks at CPU and `nodeSelector` (a namespace's PodNodeSelector annotation keeps its pods for a runner of
its own), not at affinity or taints; there are no node heartbeats. `--health-port` serves /healthz and /readyz, ready
once the Node is registered.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from kubernetes import client
from kubernetes.client.rest import ApiException

from gradatim.cluster.kubelet import HOST_IP, TERMINAL, LocalPod, PodProcesses, admission_error, group_key, lost_status, pod_cpu, timestamp

__all__ = ["ApiSources", "PodRunner", "add_podrunner_command"]

log = logging.getLogger("gradatim.podrunner")

DEFAULT_SCHEDULER = "default-scheduler"
MAX_GRACE_SECONDS = 30  # of a deleted pod's terminationGracePeriodSeconds
GONE_GRACE_SECONDS = 5  # a pod gone from the API server, or the runner stopping
SERVICES_CACHE_SECONDS = 2.0
MERGE_PATCH = "application/merge-patch+json"  # lists replaced whole: a container has one state, not a merge of two


class ApiSources:
    """`PodSources` on the API server: Secrets and ConfigMaps read when a container needs them, Service names
    listed at most every SERVICES_CACHE_SECONDS, tokens by TokenRequest."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self._services: dict[str, tuple[float, set[str]]] = {}  # by namespace, and when listed

    def data(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        read = self.core.read_namespaced_config_map if kind == "configmap" else self.core.read_namespaced_secret
        try:
            obj = json.loads(read(name, namespace, _preload_content=False).data)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        if kind == "secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        return {**{k: v.encode() for k, v in (obj.get("data") or {}).items()},
                **{k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}}

    def services(self, namespace: str, listed_after: float = 0.0) -> set[str]:
        listed, services = self._services.get(namespace, (0.0, set()))
        if listed < listed_after or time.monotonic() - listed > SERVICES_CACHE_SECONDS:
            items = json.loads(self.core.list_namespaced_service(namespace, _preload_content=False).data)["items"]
            services = {s["metadata"]["name"] for s in items}
            self._services[namespace] = (time.monotonic(), services)
        return services

    def token(self, namespace: str, account: str, request: dict[str, Any]) -> str | None:
        try:
            response = self.core.create_namespaced_service_account_token(account, namespace, request, _preload_content=False)
        except ApiException as err:
            log.debug("No token for %s/%s: %s", namespace, account, err.reason)
            return None
        return json.loads(response.data)["status"]["token"]


class PodRunner:
    """Registers a Node, binds pending pods to it and runs the pods bound to it as local processes."""

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
        node_name: str = "gradatim-local",
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.kubelet = PodProcesses(workdir, ApiSources(self.core), image_modules, extra_env, prometheus_sd_dir, cpus)
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.node_name = node_name
        self.node_labels = {"kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux"}
        self.node_registered = False

    @property
    def pods(self) -> dict[str, LocalPod]:
        return self.kubelet.pods

    @property
    def workdir(self) -> Path:
        return self.kubelet.workdir

    # -- loop -------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("Pod runner: node %s, pods in %s", self.node_name, self.namespace or "all namespaces")
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception as err:  # the API server may blink; keep the processes and try again
                    log.warning("Pod runner step failed: %s", err)
                stop.wait(self.poll_seconds)
        finally:
            self.stop_all()

    def step(self) -> None:
        if not self.node_registered:
            self.register_node()
        if self.namespace:
            pods = json.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)["items"]
        else:
            pods = json.loads(self.core.list_pod_for_all_namespaces(_preload_content=False).data)["items"]
        self._schedule(pods)
        listed = set()
        for pod in pods:
            if pod["spec"].get("nodeName") != self.node_name:
                continue
            listed.add(pod["metadata"]["uid"])
            try:
                self._sync(pod)
            except Exception as err:
                log.warning("Pod %s/%s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], err)
        for uid, lp in list(self.pods.items()):
            if uid in listed:
                continue
            if lp.stop_deadline is None and any(c.process for c in lp.all()):
                log.info("Pod %s/%s is gone from the API server; stopping its processes", lp.namespace, lp.name)
                self.kubelet.begin_stop(lp, GONE_GRACE_SECONDS)
            if self.kubelet.stopped(lp):
                self.kubelet.forget(lp)

    def stop_all(self) -> None:
        self.kubelet.stop_all(GONE_GRACE_SECONDS)

    def register_node(self) -> None:
        """The Node the pods are bound to; nothing else keeps it up to date."""
        cpu = str(int(self.kubelet.cpus)) if float(self.kubelet.cpus).is_integer() else f"{round(self.kubelet.cpus * 1000)}m"
        resources = {"cpu": cpu, "memory": str(self.kubelet.memory), "pods": "110"}
        try:
            self.core.create_node({"metadata": {"name": self.node_name, "labels": self.node_labels}}, _preload_content=False)
        except ApiException as err:
            if err.status != 409:
                raise
        now = timestamp()
        status = {"capacity": resources, "allocatable": resources,
                  "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node_name}],
                  "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "gradatim pod runner is ready",
                                  "lastHeartbeatTime": now, "lastTransitionTime": now}]}
        self.core.patch_node_status(self.node_name, {"status": status}, _content_type=MERGE_PATCH, _preload_content=False)
        self.node_registered = True

    # -- scheduling -------------------------------------------------------------------------------------

    def _schedule(self, pods: list[dict[str, Any]]) -> None:
        """Binds each job's pending pods together, oldest job first, when their CPU fits beside what runs here,
        or when nothing runs (a job bigger than the machine runs alone): oversubscribed training threads thrash."""
        mine = [p for p in pods if p["spec"].get("nodeName") == self.node_name and (p.get("status") or {}).get("phase") not in TERMINAL]
        in_use, running = sum(pod_cpu(p) for p in mine), {group_key(p) for p in mine}
        groups: dict[str, list[dict[str, Any]]] = {}
        for p in pods:
            if (not p["spec"].get("nodeName") and p["spec"].get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
                    and not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") not in TERMINAL
                    and all(self.node_labels.get(k) == v for k, v in (p["spec"].get("nodeSelector") or {}).items())):
                groups.setdefault(group_key(p), []).append(p)
        for key, members in sorted(groups.items(), key=lambda g: min(p["metadata"].get("creationTimestamp") or "" for p in g[1])):
            need = sum(pod_cpu(p) for p in members)
            # A job some of whose pods run already gets the rest at once: its running pods wait for them.
            if running and key not in running and in_use + need > self.kubelet.cpus:
                continue
            for p in members:
                self._bind(p)
            in_use += need
            running.add(key)

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:  # the response unread: the client fails to deserialise the Binding it returns
            self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body, _preload_content=False)
        except ApiException as err:
            log.warning("Could not bind pod %s/%s: %s", meta["namespace"], meta["name"], err.reason)
            return
        pod["spec"]["nodeName"] = self.node_name

    def _sync(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        lp = self.pods.get(meta["uid"])
        if lp is None:
            if meta.get("deletionTimestamp"):
                self._finish_deletion(pod)
            elif status.get("phase") == "Running":  # ours before this runner started: it cannot reattach
                log.warning("Pod %s/%s ran under an earlier pod runner; marking it Failed", meta["namespace"], meta["name"])
                self._patch(pod, lost_status(pod))
            elif status.get("phase") not in TERMINAL:
                if error := admission_error(pod["spec"]):
                    log.warning("Pod %s/%s refused: %s", meta["namespace"], meta["name"], error)
                    self._patch(pod, {"phase": "Failed", "reason": "UnexpectedAdmissionError", "message": f"Pod was rejected: {error}"})
                else:
                    self.kubelet.admit(pod)
            return
        lp.pod = pod
        if meta.get("deletionTimestamp"):
            if lp.stop_deadline is None:
                grace = meta.get("deletionGracePeriodSeconds")
                self.kubelet.begin_stop(lp, min(MAX_GRACE_SECONDS, 30 if grace is None else grace))
            if self.kubelet.stopped(lp):
                self.kubelet.ended(lp)
                self._write_status(lp)
                self._finish_deletion(pod)
                self.kubelet.forget(lp)
                log.info("Pod %s/%s deleted", lp.namespace, lp.name)
            return
        if lp.phase not in TERMINAL:
            self.kubelet.advance(lp)
        self._write_status(lp)

    def _finish_deletion(self, pod: dict[str, Any]) -> None:
        """What the kubelet does last: a pod bound to a node is only removed once its node says it has stopped."""
        meta = pod["metadata"]
        try:  # this pod, not one created since under its name; with a body, the API server reads no query parameters
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                                            _preload_content=False)
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    def _write_status(self, lp: LocalPod) -> None:
        status = self.kubelet.status(lp)
        text = json.dumps(status, sort_keys=True)
        if text != lp.written:
            self._patch(lp.pod, status)
            lp.written = text

    def _patch(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status}, _content_type=MERGE_PATCH,
                                                  _preload_content=False)
        except ApiException as err:
            if err.status != 404:
                raise


def serve_health(port: int, ready: Callable[[], bool]) -> None:
    """/healthz (the process answers) and /readyz (`ready()`), as a controller-runtime manager serves them."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/healthz" or (self.path == "/readyz" and ready())
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b"ok" if ok else b"not ready")

        def log_message(self, *args: Any) -> None:  # the probes poll; keep them out of the log
            pass

    server = http.server.ThreadingHTTPServer((HOST_IP, port), Health)
    threading.Thread(target=server.serve_forever, daemon=True, name="health").start()


def add_podrunner_command(subparsers) -> None:
    parser = subparsers.add_parser("podrunner", help="run the pods bound to a local node as processes (stands in for the kubelet)")
    parser.add_argument("-n", "--namespace", default=None, help="run only this namespace's pods (default: all)")
    # Resolved when used: every `gradatim` command builds this parser, and Path.home() raises for a uid with no
    # passwd entry and no HOME (the operator's image).
    parser.add_argument("--workdir", type=Path, default=None, help="pods' files (default: ${GRADATIM_HOME:-~/.gradatim}/pods)")
    parser.add_argument("--image-module", action="append", default=[], metavar="IMAGE=MODULE",
                        help="the Python module an image's `-m` entrypoint runs on this machine")
    parser.add_argument("--prometheus-sd-dir", type=Path, default=os.environ.get("GRADATIM_PROMETHEUS_SD_DIR"),
                        help="write Prometheus file_sd targets for each pod's metrics port here")
    parser.add_argument("--cpus", type=float, default=None,
                        help="CPU this node offers; a job's pods wait until their CPU requests fit (default: this machine's cores)")
    parser.add_argument("--node-name", default="gradatim-local", help="the Node this runner registers and runs the pods of")
    parser.add_argument("--health-port", type=int, default=None, help="serve /healthz and /readyz on 127.0.0.1 at this port")
    parser.set_defaults(func=_run_podrunner)


def _run_podrunner(args) -> int:
    from kubernetes import config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    modules = dict(item.split("=", 1) for item in args.image_module)
    workdir = args.workdir or Path(os.environ.get("GRADATIM_HOME") or Path.home() / ".gradatim") / "pods"
    runner = PodRunner(api, workdir, args.namespace, modules, prometheus_sd_dir=args.prometheus_sd_dir, cpus=args.cpus,
                       node_name=args.node_name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.health_port:
        serve_health(args.health_port, lambda: runner.node_registered)
    try:
        runner.run(stop)
    except KeyboardInterrupt:
        stop.set()
    return 0
