"""The kubelet's part of running a pod, on this machine: each container of a pod as a local process, and the status
a kubelet writes of it (phase, conditions, container states with exit codes, reasons, termination messages and restart
counts). It does not know where pods come from or where their status goes: `gradatim podrunner` feeds it the pods
bound to its node on a real API server and writes the status back (podrunner.py); `gradatim run`, which has no
cluster, feeds it the pods of its jobs from memory (gradatim/local/jobs.py). Secrets, ConfigMaps, Service names and
ServiceAccount tokens come from a `PodSources`.

What a container gets, as from a kubelet: its env (values, Secret, ConfigMap and downward API references, `$(VAR)`
expansion), its volumes as directories (ConfigMap, Secret, emptyDir, downward API, projected; hostPath is the host
path itself and a PersistentVolumeClaim a directory per claim), restarts as its restartPolicy says, and SIGTERM then
SIGKILL when it is stopped. Paths under its mounts are rewritten in argv and env to those directories. Where one
machine is not a cluster: an env value naming a Service becomes 127.0.0.1, and each job gets its own rendezvous port
(MASTER_PORT), so two jobs that ask for the same port do not collide.

What it does not do: images (the command runs on this machine; `image_modules` maps an image's `-m` module to a
local one), cgroups or resource limits, networking beyond loopback (no pod IPs), probes, sidecar init containers,
activeDeadlineSeconds, updates to a ConfigMap or Secret volume after its pod started.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping, Protocol

from gradatim.api.resolved import FINAL_SCRAPE_ENV
from gradatim.api.runfiles import TERMINATION_LOG_ENV, TERMINATION_MESSAGE_LIMIT
from gradatim.cluster.targets import write_targets

log = logging.getLogger("gradatim.kubelet")

HOST_IP = "127.0.0.1"
JOB_LABELS = {"pytorchjob": "training.kubeflow.org/job-name", "jobset": "jobset.sigs.k8s.io/jobset-name"}
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
PORT_ENV = ("MASTER_PORT", "PET_MASTER_PORT")
TERMINAL = ("Succeeded", "Failed")
# The kubelet backs off 10 s, doubling up to 5 min, between restarts; here someone waits at a terminal.
RESTART_BACKOFF_SECONDS = 1.0
STOP_GRACE_SECONDS = 5  # a pod gone from the API server, or the runner stopping
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048  # what the kubelet keeps of a log under FallbackToLogsOnError
DNS_NAME = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?")
LOST_MESSAGE = "the node's pod runner restarted; the process is gone"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST_IP, 0))
        return s.getsockname()[1]


def timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- quantities and the pod spec, as pure functions -----------------------------------------------------

_SUFFIXES = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
             **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
             **{s + "i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")}}


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity: `2`, `1.5`, `500m`, `1Gi`, `1e3`."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(value).strip())
    if not m or m[2] not in _SUFFIXES:
        raise ValueError(f"invalid quantity {value!r}")
    try:
        return Decimal(m[1]) * _SUFFIXES[m[2]]
    except InvalidOperation:
        raise ValueError(f"invalid quantity {value!r}") from None


def _container_cpu(container: Mapping[str, Any]) -> float:
    resources = container.get("resources") or {}
    cpu = (resources.get("requests") or {}).get("cpu") or (resources.get("limits") or {}).get("cpu")
    return float(quantity(cpu)) if cpu is not None else 0.0


def pod_cpu(pod: Mapping[str, Any]) -> float:
    """The CPU the scheduler counts for a pod: its containers' requests (limits where none) summed, or its largest
    init container's, which runs alone, if that is more."""
    spec = pod.get("spec") or {}
    return max(sum(_container_cpu(c) for c in spec.get("containers") or []),
               max((_container_cpu(c) for c in spec.get("initContainers") or []), default=0.0))


def admission_error(spec: Mapping[str, Any]) -> str | None:
    """Why a kubelet refuses a pod's resources: a negative quantity, or a request above its limit. The API server
    checks this too, but a kubelet does not trust it."""
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        resources = c.get("resources") or {}
        for name in ("cpu", "memory"):
            values = {}
            for kind in ("requests", "limits"):
                raw = (resources.get(kind) or {}).get(name)
                if raw is None:
                    continue
                try:
                    values[kind] = quantity(raw)
                except ValueError as err:
                    return f"container {c['name']}: {kind}.{name}: {err}"
                if values[kind] < 0:
                    return f"container {c['name']}: {kind}.{name} {raw} must be greater than or equal to 0"
            if "requests" in values and "limits" in values and values["requests"] > values["limits"]:
                return f"container {c['name']}: requests.{name} must be less than or equal to limits.{name}"
    return None


def group_key(pod: Mapping[str, Any]) -> str:
    """The job a pod belongs to (its PyTorchJob or JobSet), else the pod itself: scheduled together, one port."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    for kind, label in JOB_LABELS.items():
        if labels.get(label):
            return f"{meta['namespace']}/{kind}/{labels[label]}"
    return f"{meta['namespace']}/pod/{meta['name']}"


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$(VAR)` replaced from env as the kubelet does it: `$$` is a `$`, an unknown `$(VAR)` stays as it is."""
    return re.sub(r"\$\$|\$\(([^)]*)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward API fieldRef. Pod and host IP are loopback: every pod shares this machine's network."""
    meta, spec = pod["metadata"], pod["spec"]
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path):
        return (meta.get(m[1]) or {}).get(m[2], "")
    if path in ("metadata.labels", "metadata.annotations"):
        return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted((meta.get(path[9:]) or {}).items()))
    return {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.hostIP": HOST_IP, "status.hostIPs": HOST_IP, "status.podIP": HOST_IP, "status.podIPs": HOST_IP}.get(path, "")


def resource_value(pod: Mapping[str, Any], container: Mapping[str, Any], ref: Mapping[str, Any], allocatable: Mapping[str, Any]) -> str:
    """A downward API resourceFieldRef (`limits.cpu`, `requests.memory`), rounded up to whole divisors; an unset limit
    is the node's allocatable, as in the kubelet."""
    if ref.get("containerName"):
        container = next((c for c in pod["spec"].get("containers") or [] if c["name"] == ref["containerName"]), container)
    kind, name = ref["resource"].split(".", 1)
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None and kind == "limits":
        value = allocatable.get(name)
    divisor = quantity(ref.get("divisor") or "1") or Decimal(1)
    return str(math.ceil(quantity(value or 0) / divisor))


def rewrite_path(value: str, mounts: Mapping[str, Path]) -> str:
    """A path under a mount, as the directory that stands in for the mount here."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount + "/"):
            return str(mounts[mount]) + value[len(mount):]
    return value


def image_id(image: str) -> str:
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    if "/" not in name:
        name = f"library/{name}"
    if "." not in name.split("/")[0] and not name.startswith("localhost/"):
        name = f"docker.io/{name}"
    return f"{name}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def exit_code(returncode: int) -> int:
    """A process's status as a container's exit code: killed by signal N is 128 + N (SIGKILL: 137)."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ConfigError(Exception):
    """A Secret, ConfigMap or key a container needs is missing: it waits (CreateContainerConfigError), retried."""


# -- what runs ------------------------------------------------------------------------------------------


@dataclass
class Container:
    """One container of a pod: its process while it runs, and what the kubelet reports of it."""

    spec: dict[str, Any]
    state: dict[str, Any]
    process: subprocess.Popen | None = None
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    restarting: bool = False  # exited and will be started again after the back-off
    restart_at: float = 0.0  # monotonic
    done: bool = False  # exited and will not be started again
    exit_code: int | None = None
    started_at: str = ""
    container_id: str = ""
    metrics_port: int | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]


@dataclass
class LocalPod:
    """A pod bound to this node, and its containers."""

    pod: dict[str, Any]  # the object as last listed
    dir: Path
    group: str
    init: list[Container]
    containers: list[Container]
    start_time: str = field(default_factory=timestamp)
    phase: str = "Pending"
    volumes: dict[str, Path] | None = None  # by volume name, once materialised
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, lastTransitionTime)
    stop_deadline: float | None = None  # set once it is being stopped: SIGKILL then
    written: str = ""  # the status last written, as JSON

    @property
    def namespace(self) -> str:
        return self.pod["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.pod["metadata"]["name"]

    @property
    def uid(self) -> str:
        return self.pod["metadata"]["uid"]

    def all(self) -> list[Container]:
        return [*self.init, *self.containers]


class PodSources(Protocol):
    """Where a pod's Secrets, ConfigMaps, Service names and ServiceAccount tokens come from."""

    def data(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        """A ConfigMap's (`configmap`) or Secret's (`secret`) data, decoded; None when there is no such object."""

    def services(self, namespace: str, listed_after: float = 0.0) -> set[str]:
        """The names of the namespace's Services, from a list made after `listed_after` (time.monotonic()) when given."""

    def token(self, namespace: str, account: str, request: dict[str, Any]) -> str | None:
        """A token for the ServiceAccount (a TokenRequest's spec); None when none is issued."""


class PodProcesses:
    """The pods admitted to this machine, by uid, and their containers' processes."""

    def __init__(
        self,
        workdir: Path,
        sources: PodSources,
        image_modules: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        prometheus_sd_dir: Path | None = None,
        cpus: float | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.sources = sources
        self.image_modules = dict(image_modules or {})
        self.extra_env = dict(extra_env or {})
        self.sd_dir = Path(prometheus_sd_dir) if prometheus_sd_dir else None
        self.cpus = cpus or os.cpu_count() or 1
        self.memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.pods: dict[str, LocalPod] = {}  # by pod uid
        self._ports: dict[str, int] = {}  # rendezvous port by job group

    def pod_dir(self, namespace: str, name: str) -> Path:
        """Where a pod's volumes, container logs (`<container>.log`) and termination messages are."""
        return self.workdir / namespace / name

    def stop_all(self, grace: float = STOP_GRACE_SECONDS) -> None:
        for lp in self.pods.values():
            if lp.stop_deadline is None:
                self.begin_stop(lp, grace)
        while not all([self.stopped(lp) for lp in self.pods.values()]):
            time.sleep(0.1)
        for lp in list(self.pods.values()):
            self.forget(lp)

    # -- one pod ----------------------------------------------------------------------------------------

    def admit(self, pod: dict[str, Any]) -> LocalPod:
        meta, spec = pod["metadata"], pod["spec"]
        pod_dir = self.pod_dir(meta["namespace"], meta["name"])
        shutil.rmtree(pod_dir / "volumes", ignore_errors=True)  # an emptyDir starts empty; a pod of the same name may have run
        pod_dir.mkdir(parents=True, exist_ok=True)
        reason = "PodInitializing" if spec.get("initContainers") else "ContainerCreating"
        lp = LocalPod(pod, pod_dir, group_key(pod),
                      init=[Container(c, {"waiting": {"reason": "PodInitializing"}}) for c in spec.get("initContainers") or []],
                      containers=[Container(c, {"waiting": {"reason": reason}}) for c in spec.get("containers") or []])
        scheduled = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] == "PodScheduled"), None)
        lp.conditions["PodScheduled"] = ("True", (scheduled or {}).get("lastTransitionTime") or timestamp())
        log.info("Pod %s/%s admitted; its logs are in %s", lp.namespace, lp.name, pod_dir)
        self.pods[lp.uid] = lp
        return lp

    def advance(self, lp: LocalPod) -> None:
        """Init containers one after another, then all containers; the pod's phase from what they did."""
        if lp.volumes is None:
            try:
                lp.volumes = self._volumes(lp)
            except ConfigError as err:  # the kubelet retries the mount; the containers wait
                for c in lp.all():
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": str(err)}}
                return
        policy = lp.pod["spec"].get("restartPolicy") or "Always"
        for c in lp.init:
            if not (c.done and c.exit_code == 0):
                self._run(lp, c, "Never" if policy == "Never" else "OnFailure")  # a succeeded init container stays done
            if not (c.done and c.exit_code == 0):
                break
        else:
            for c in lp.containers:
                self._run(lp, c, policy)
        phase, lp.phase = lp.phase, pod_phase(lp)
        if phase != lp.phase and lp.phase in TERMINAL:
            self.ended(lp)

    def ended(self, lp: LocalPod) -> None:
        codes = ", ".join(f"{c.name}={c.exit_code}" for c in lp.all() if c.exit_code is not None)
        log.info("Pod %s/%s %s (exit codes: %s)", lp.namespace, lp.name, lp.phase, codes or "none")
        self._remove_targets(lp)

    def _run(self, lp: LocalPod, c: Container, policy: str) -> None:
        if c.process is not None:
            if c.process.poll() is not None:
                self._exited(lp, c, policy)
        elif not c.done and time.monotonic() >= c.restart_at:
            self._start(lp, c, policy)

    def _start(self, lp: LocalPod, c: Container, policy: str) -> None:
        mounts = self._mounts(lp, c)
        try:
            env = self._env(lp, c, mounts)
        except ConfigError as err:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}}
            return
        argv = self.argv(c, env, mounts)
        if not argv:
            c.state = {"waiting": {"reason": "CreateContainerError", "message": "no command: an image's own entrypoint cannot run here"}}
            return
        term_log = lp.dir / f"{c.name}.termination-log"
        term_log.write_text("")  # a container starts with an empty message
        if c.metrics_port is None and any(p.get("name") == "metrics" for p in c.spec.get("ports") or []):
            c.metrics_port = free_port()  # every pod has its own IP in a cluster; here every container its own port
            self._write_targets(lp)
        process_env = {**os.environ, **self.extra_env, **env, TERMINATION_LOG_ENV: str(term_log)}
        if c.metrics_port:
            process_env["GRADATIM_METRICS_PORT"] = str(c.metrics_port)
            if self.sd_dir:  # our Prometheus scrapes every second: a short wait keeps a short stage's last values
                process_env.setdefault(FINAL_SCRAPE_ENV, "5")
        working_dir = rewrite_path(c.spec.get("workingDir") or "", mounts)
        cwd = working_dir if working_dir and os.path.isdir(working_dir) else lp.dir
        if c.restarting:
            c.restart_count += 1
            c.restarting = False
        c.started_at = timestamp()
        try:
            with open(lp.dir / f"{c.name}.log", "ab") as out:
                c.process = subprocess.Popen(argv, env=process_env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:  # as containerd reports a command that cannot run
            self._finished(lp, c, {"exitCode": 128, "reason": "StartError", "message": str(err), "startedAt": c.started_at,
                                   "finishedAt": timestamp()}, policy)
            return
        c.container_id = f"gradatim://{c.process.pid}"
        c.state = {"running": {"startedAt": c.started_at}}
        log.info("Pod %s/%s: started container %s (pid %d)", lp.namespace, lp.name, c.name, c.process.pid)

    def _exited(self, lp: LocalPod, c: Container, policy: str) -> None:
        assert c.process is not None
        code = exit_code(c.process.returncode)
        _signal_group(c.process.pid, signal.SIGKILL)  # what it leaves behind goes with it, as with a container's cgroup
        c.process = None
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": c.started_at,
                      "finishedAt": timestamp(), "containerID": c.container_id}
        if message := self._message(lp, c, code):
            terminated["message"] = message
        self._finished(lp, c, terminated, policy)

    def _finished(self, lp: LocalPod, c: Container, terminated: dict[str, Any], policy: str) -> None:
        c.exit_code = terminated["exitCode"]
        if lp.stop_deadline is None and (policy == "Always" or (policy == "OnFailure" and c.exit_code != 0)):
            c.last_state = {"terminated": terminated}
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {RESTART_BACKOFF_SECONDS:g}s restarting "
                                   f"failed container={c.name} pod={lp.name}_{lp.namespace}({lp.uid})"}}
            c.restarting, c.restart_at = True, time.monotonic() + RESTART_BACKOFF_SECONDS
            log.info("Pod %s/%s: container %s exited with %d; restarting it", lp.namespace, lp.name, c.name, c.exit_code)
        else:
            c.state, c.done = {"terminated": terminated}, True

    def _message(self, lp: LocalPod, c: Container, code: int) -> str:
        """The termination message file, or under FallbackToLogsOnError with a failure and no message, the log's tail."""
        try:
            text = (lp.dir / f"{c.name}.termination-log").read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        except OSError:
            text = ""
        if not text.strip() and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                lines = (lp.dir / f"{c.name}.log").read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
            except OSError:
                lines = []
            text = b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
        return text

    # -- stopping ---------------------------------------------------------------------------------------

    def begin_stop(self, lp: LocalPod, grace: float) -> None:
        lp.stop_deadline = time.monotonic() + grace
        for c in lp.all():
            if c.process is not None:
                _signal_group(c.process.pid, signal.SIGTERM)

    def stopped(self, lp: LocalPod) -> bool:
        """Whether a pod being stopped has no process left; SIGKILL once its grace period is over."""
        for c in lp.all():
            if c.process is not None and c.process.poll() is None and time.monotonic() >= (lp.stop_deadline or 0):
                _signal_group(c.process.pid, signal.SIGKILL)
                c.process.wait()
            if c.process is not None and c.process.poll() is not None:
                self._exited(lp, c, "Never")
        if any(c.process is not None for c in lp.all()):
            return False
        for c in lp.all():
            c.done = True  # nothing starts again
        lp.phase = pod_phase(lp)
        return True

    def forget(self, lp: LocalPod) -> None:
        self._remove_targets(lp)
        self.pods.pop(lp.uid, None)
        if not any(p.group == lp.group for p in self.pods.values()):
            self._ports.pop(lp.group, None)

    # -- status -----------------------------------------------------------------------------------------

    def status(self, lp: LocalPod) -> dict[str, Any]:
        now, terminal = timestamp(), lp.phase in TERMINAL
        incomplete = [c.name for c in lp.init if not (c.done and c.exit_code == 0)]
        unready = [c.name for c in lp.containers if "running" not in c.state]
        wanted = {"PodScheduled": (True, "", ""),
                  "Initialized": (not incomplete, "ContainersNotInitialized", f"containers with incomplete status: [{' '.join(incomplete)}]"),
                  "ContainersReady": (not terminal and not unready, "PodCompleted" if terminal else "ContainersNotReady",
                                      f"containers with unready status: [{' '.join(unready)}]"),
                  "Ready": (not terminal and not unready, "PodCompleted" if terminal else "ContainersNotReady",
                            f"containers with unready status: [{' '.join(unready)}]")}
        conditions = [c for c in (lp.pod.get("status") or {}).get("conditions") or [] if c["type"] not in wanted]  # others' own
        for type_, (ok, reason, message) in wanted.items():
            value = "True" if ok else "False"
            old = lp.conditions.get(type_)
            lp.conditions[type_] = (value, old[1] if old and old[0] == value else now)
            condition = {"type": type_, "status": value, "lastProbeTime": None, "lastTransitionTime": lp.conditions[type_][1]}
            if not ok:
                condition.update({"reason": reason} if reason == "PodCompleted" else {"reason": reason, "message": message})
            conditions.append(condition)
        status = {"phase": lp.phase, "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}], "startTime": lp.start_time, "conditions": conditions,
                  "containerStatuses": [container_status(c, init=False) for c in lp.containers]}
        if lp.init:
            status["initContainerStatuses"] = [container_status(c, init=True) for c in lp.init]
        return status

    # -- a container's env, argv and volumes ------------------------------------------------------------

    def _env(self, lp: LocalPod, c: Container, mounts: Mapping[str, Path]) -> dict[str, str]:
        started = time.monotonic()  # a Service list made after this counts as fresh: at most one re-list per container
        """The container's own env, in order: envFrom, then env; each value as it is on this machine."""
        env: dict[str, str] = {}
        for source in c.spec.get("envFrom") or []:
            ref, kind = (source["configMapRef"], "configmap") if "configMapRef" in source else (source.get("secretRef") or {}, "secret")
            data = self._data(kind, lp.namespace, ref.get("name", ""), ref.get("optional"))
            for key, value in (data or {}).items():
                name = source.get("prefix", "") + key
                env[name] = self._local_value(lp, name, value.decode(errors="replace"), mounts)
        for var in c.spec.get("env") or []:
            ref = var.get("valueFrom")
            if ref is None:  # only literal values name Services: a label's value may well be a Service's name
                value = self._loopback(lp, expand(var.get("value") or "", env), started)
            elif "fieldRef" in ref:
                value = field_value(lp.pod, ref["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in ref:
                value = resource_value(lp.pod, c.spec, ref["resourceFieldRef"], {"cpu": self.cpus, "memory": self.memory})
            else:
                kind, key_ref = ("configmap", ref["configMapKeyRef"]) if "configMapKeyRef" in ref else ("secret", ref["secretKeyRef"])
                data = self._key(kind, lp.namespace, key_ref)
                if data is None:
                    continue
                value = data.decode(errors="replace")
            env[var["name"]] = self._local_value(lp, var["name"], value, mounts)
        return env

    def _local_value(self, lp: LocalPod, name: str, value: str, mounts: Mapping[str, Path]) -> str:
        if name in PORT_ENV:  # one rendezvous port per job, so that jobs asking for the same one do not collide
            if lp.group not in self._ports:
                self._ports[lp.group] = free_port()
            return str(self._ports[lp.group])
        return rewrite_path(value, mounts)

    def _loopback(self, lp: LocalPod, value: str, started: float) -> str:
        """A host name whose first label (`svc`, `svc.ns.svc...`) or second (`host.subdomain...`) is a Service's name
        in the pod's namespace, or the pod's own subdomain (its headless Service, which a controller may create a moment
        after the pod), is this machine: every pod listens on loopback."""
        if not DNS_NAME.fullmatch(value) or value.replace(".", "").isdigit():
            return value
        labels = value.rstrip(".").split(".")

        def names_a_service(services: set[str]) -> bool:
            return labels[0] in services or (len(labels) > 1 and labels[1] in services)

        own = {lp.pod["spec"]["subdomain"]} if lp.pod["spec"].get("subdomain") else set()
        if names_a_service(self.sources.services(lp.namespace) | own):
            return HOST_IP
        # A host-like name missed in a list that may be seconds old: list again, once per container (a Service made since counts).
        if ("-" in value or "." in value) and names_a_service(self.sources.services(lp.namespace, listed_after=started)):
            return HOST_IP
        return value

    def argv(self, c: Container, env: Mapping[str, str], mounts: Mapping[str, Path]) -> list[str]:
        argv = [expand(a, env) for a in [*(c.spec.get("command") or []), *(c.spec.get("args") or [])]]
        if not argv:
            return []
        if argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        elif argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        module = self.image_modules.get(c.spec.get("image", ""))
        if module and argv[0] == sys.executable:
            for i in range(1, len(argv) - 1):
                if argv[i] == "-m" and argv[i + 1] != "torch.distributed.run":
                    argv[i + 1] = module  # what this image's entrypoint module is, on this machine
                    break
        return [a if i == 0 and a == sys.executable else rewrite_path(a, mounts) for i, a in enumerate(argv)]  # ours, not the image's

    def _mounts(self, lp: LocalPod, c: Container) -> dict[str, Path]:
        """mountPath -> the directory (or file, with subPath) that stands in for it."""
        mounts = {}
        for m in c.spec.get("volumeMounts") or []:
            local = (lp.volumes or {}).get(m["name"])
            if m["mountPath"] == "/dev/shm" or local is None:
                continue  # the memory-backed emptyDir: the machine's own /dev/shm serves
            if m.get("subPath"):
                local = local / m["subPath"]
                if not local.exists():
                    local.mkdir(parents=True)
            mounts[m["mountPath"].rstrip("/")] = local
        mounts[c.spec.get("terminationMessagePath") or "/dev/termination-log"] = lp.dir / f"{c.name}.termination-log"
        return mounts

    def _volumes(self, lp: LocalPod) -> dict[str, Path]:
        """Each volume as a directory under the pod's, its files written."""
        out = {}
        for v in lp.pod["spec"].get("volumes") or []:
            if "hostPath" in v:
                out[v["name"]] = Path(v["hostPath"]["path"])
                continue
            path = lp.dir / "volumes" / v["name"]
            if "persistentVolumeClaim" in v:  # a claim outlives its pods: one directory per claim
                path = self.workdir / lp.namespace / "persistentvolumeclaims" / v["persistentVolumeClaim"]["claimName"]
            files: dict[str, bytes] = {}
            if "configMap" in v:
                files = self._projection("configmap", lp.namespace, v["configMap"].get("name", ""), v["configMap"])
            elif "secret" in v:
                files = self._projection("secret", lp.namespace, v["secret"].get("secretName", ""), v["secret"])
            elif "downwardAPI" in v:
                files = self._downward(lp, v["downwardAPI"].get("items") or [])
            for source in (v.get("projected") or {}).get("sources") or []:
                if "configMap" in source:
                    files.update(self._projection("configmap", lp.namespace, source["configMap"].get("name", ""), source["configMap"]))
                elif "secret" in source:
                    files.update(self._projection("secret", lp.namespace, source["secret"].get("name", ""), source["secret"]))
                elif "downwardAPI" in source:
                    files.update(self._downward(lp, source["downwardAPI"].get("items") or []))
                elif "serviceAccountToken" in source:
                    files.update(self._token(lp, source["serviceAccountToken"]))
            path.mkdir(parents=True, exist_ok=True)  # emptyDir, and anything else: an empty directory
            for rel, data in files.items():
                (path / rel).parent.mkdir(parents=True, exist_ok=True)
                (path / rel).write_bytes(data)
            out[v["name"]] = path
        return out

    def _projection(self, kind: str, namespace: str, name: str, source: Mapping[str, Any]) -> dict[str, bytes]:
        data = self._data(kind, namespace, name, source.get("optional"))
        if data is None:
            return {}
        if not source.get("items"):
            return dict(data)
        files = {}
        for item in source["items"]:
            if item["key"] in data:
                files[item["path"]] = data[item["key"]]
            elif not source.get("optional"):
                raise ConfigError(f"{kind} references non-existent config key: {item['key']}")
        return files

    def _downward(self, lp: LocalPod, items: list[dict[str, Any]]) -> dict[str, bytes]:
        files = {}
        for item in items:
            if "fieldRef" in item:
                files[item["path"]] = field_value(lp.pod, item["fieldRef"]["fieldPath"]).encode()
            elif "resourceFieldRef" in item:
                container = next(iter(lp.pod["spec"].get("containers") or [{}]))
                allocatable = {"cpu": self.cpus, "memory": self.memory}
                files[item["path"]] = resource_value(lp.pod, container, item["resourceFieldRef"], allocatable).encode()
        return files

    def _token(self, lp: LocalPod, source: Mapping[str, Any]) -> dict[str, bytes]:
        """A token for the pod's ServiceAccount, bound to the pod; none if the API server will not issue one."""
        body = {"spec": {"audiences": [source["audience"]] if source.get("audience") else [],
                         "expirationSeconds": source.get("expirationSeconds") or 3600,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": lp.name, "uid": lp.uid}}}
        token = self.sources.token(lp.namespace, lp.pod["spec"].get("serviceAccountName") or "default", body)
        return {source.get("path") or "token": token.encode()} if token is not None else {}

    def _data(self, kind: str, namespace: str, name: str, optional: bool | None) -> dict[str, bytes] | None:
        """A ConfigMap's or Secret's data, decoded; None for a missing optional one."""
        data = self.sources.data(kind, namespace, name)
        if data is None and not optional:
            raise ConfigError(f'{kind} "{name}" not found')
        return data

    def _key(self, kind: str, namespace: str, ref: Mapping[str, Any]) -> bytes | None:
        data = self._data(kind, namespace, ref.get("name", ""), ref.get("optional"))
        if data is not None and ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {'ConfigMap' if kind == 'configmap' else 'Secret'} {namespace}/{ref.get('name')}")

    # -- Prometheus file-based service discovery ---------------------------------------------------------

    def _targets_path(self, lp: LocalPod) -> Path | None:
        return self.sd_dir / f"pod_{lp.namespace}_{lp.name}.json" if self.sd_dir else None

    def _write_targets(self, lp: LocalPod) -> None:
        path = self._targets_path(lp)
        if path is None:
            return
        pod_labels = lp.pod["metadata"].get("labels") or {}
        labels = {"namespace": lp.namespace, "pod": lp.name}
        for key, label in (("pytorchjob", JOB_LABELS["pytorchjob"]), ("replica_type", REPLICA_TYPE_LABEL),
                           ("replica_index", REPLICA_INDEX_LABEL), ("trainjob", JOB_LABELS["jobset"])):
            if label in pod_labels:
                labels[key] = pod_labels[label].lower() if key == "replica_type" else pod_labels[label]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_targets(path, [{"targets": [f"{HOST_IP}:{c.metrics_port}"], "labels": labels} for c in lp.all() if c.metrics_port])

    def _remove_targets(self, lp: LocalPod) -> None:
        path = self._targets_path(lp)
        if path is not None:
            path.unlink(missing_ok=True)



def pod_phase(lp: LocalPod) -> str:
    """Pending until the init containers succeeded and a container started; Succeeded or Failed once every container
    exited for good (any non-zero: Failed); Running in between."""
    if any(c.done and c.exit_code != 0 for c in lp.init):
        return "Failed"
    if not all(c.done for c in lp.init):
        return "Pending"
    if all(c.done for c in lp.containers):
        return "Succeeded" if all(c.exit_code == 0 for c in lp.containers) else "Failed"
    if any(c.container_id for c in lp.containers):
        return "Running"
    return "Pending"


def container_status(c: Container, init: bool) -> dict[str, Any]:
    running = "running" in c.state
    status = {"name": c.name, "image": c.spec.get("image", ""), "imageID": image_id(c.spec.get("image", "")),
              "ready": (c.done and c.exit_code == 0) if init else running, "started": running,
              "restartCount": c.restart_count, "state": c.state, "lastState": c.last_state}
    if c.container_id and "waiting" not in c.state:
        status["containerID"] = c.container_id
    return status


def lost_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A Running pod on this node that this runner does not know: it ran under an earlier runner, whose processes
    are gone (or out of reach). Its containers end, and it Fails."""
    now, status = timestamp(), pod.get("status") or {}
    gone = {"exitCode": 137, "reason": "Error", "message": LOST_MESSAGE, "finishedAt": now}

    def lost(key: str, specs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        known = {s["name"]: s for s in status.get(key) or []}
        return [s if "terminated" in (s.get("state") or {}) else {**s, "ready": False, "started": False, "state": {"terminated": gone}}
                for s in (known.get(c["name"]) or {"name": c["name"], "image": c.get("image", ""), "imageID": "", "restartCount": 0}
                          for c in specs or [])]

    conditions = [{**c, "status": "False", "reason": "PodFailed", "lastTransitionTime": now}
                  if c["type"] in ("Ready", "ContainersReady") and c["status"] == "True" else c for c in status.get("conditions") or []]
    return {"phase": "Failed", "conditions": conditions, "message": LOST_MESSAGE,
            "containerStatuses": lost("containerStatuses", pod["spec"].get("containers")),
            "initContainerStatuses": lost("initContainerStatuses", pod["spec"].get("initContainers"))}
