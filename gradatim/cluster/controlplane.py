"""The embedded control plane: etcd, kube-apiserver, kube-controller-manager, the Kubeflow controllers
(training-operator, Trainer v2 and JobSet), SeaweedFS S3, Prometheus and the pod runner as local processes, driven by
`up`, `down` and `status`. Only the kubelet is stood in for, by the pod runner (`gradatim podrunner`, Node
`gradatim-local`), which runs every pod not kept for another node.

Used by `gradatim cluster ...`, by the pytest `cluster` fixture and by the quickstart,
so all three get exactly the same cluster.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from gradatim.cluster import components, controllers, health, versions
from gradatim.cluster.build import Binaries, default_cache_dir, ensure_binaries
from gradatim.cluster.crds import crd_files, install_crds, run_kubectl
from gradatim.cluster.errors import ClusterError
from gradatim.cluster.layout import StateLayout, default_state_dir
from gradatim.cluster.pki import Pki, ensure_pki, ensure_webhook_pki
from gradatim.cluster.process import (
    is_running,
    pick_free_ports,
    require_running,
    spawn,
    stop_groups,
    tail,
    wait_for,
)
from gradatim.cluster.progress import Progress, SilentProgress
from gradatim.cluster.render import (
    render_env_file,
    render_kubeconfig,
    render_prometheus_config,
    render_s3_identities,
    render_token_kubeconfig,
)
from gradatim.planner.render import TRAINING_RUNTIME, render_cluster_training_runtime
from gradatim.cluster.state import ClusterInfo, ClusterState, ComponentStatus, ProcessRecord

START_TIMEOUT_SECONDS = 120  # generous: a loaded 2-core machine starts the API server in ~10 s
COMPONENT_PORTS = {
    "etcd": ("etcd_client", "etcd_peer"),
    "kube-apiserver": ("api_server",),
    "kube-controller-manager": ("controller_manager",),
    "seaweedfs": tuple(p for p in components.PORT_NAMES if p.startswith(("seaweedfs", "s3"))),
    "prometheus": ("prometheus",),
    "training-operator": ("training_operator_webhook", "training_operator_health"),
    "jobset-controller": ("jobset_webhook", "jobset_health"),
    "trainer-controller-manager": ("trainer_webhook", "trainer_health"),
    "pod-runner": ("pod_runner_health",),
}
# Stopped in this order: the controllers, then the API server, storage last.
STOP_STAGES = (("pod-runner",), components.KUBEFLOW_CONTROLLERS, ("kube-controller-manager", "kube-apiserver"), ("etcd", "seaweedfs", "prometheus"))
# SeaweedFS's filer waits 15 s for its S3 subscription to end on SIGTERM; let it finish.
STOP_GRACE_SECONDS = 30


class ControlPlane:
    """One control plane living in `state_dir` (default `${GRADATIM_HOME:-~/.gradatim}/cluster`)."""

    def __init__(self, state_dir: Path | str | None = None, cache_dir: Path | str | None = None) -> None:
        self.layout = StateLayout(Path(state_dir) if state_dir else default_state_dir())
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    # -- queries -------------------------------------------------------------

    def info(self) -> ClusterInfo:
        state = ClusterState.load(self.layout)
        if not state.ports:
            raise ClusterError(f"No control plane was ever started in {self.layout.root}")
        return ClusterInfo.from_state(self.layout, state)

    def is_running(self) -> bool:
        """All recorded processes alive and the API server answering /readyz."""
        state = ClusterState.load(self.layout)
        if set(state.processes) != set(components.COMPONENTS):
            return False
        if not all(is_running(p.pid, p.executable) for p in state.processes.values()):
            return False
        return health.api_server_ready(self.info().api_server, ensure_pki(self.layout.pki_dir))

    def status(self) -> list[ComponentStatus]:
        state = ClusterState.load(self.layout)
        probes = self._health_probes(state) if state.ports else {}
        statuses = []
        for name in components.COMPONENTS:
            record = state.processes.get(name)
            running = record is not None and is_running(record.pid, record.executable)
            statuses.append(
                ComponentStatus(
                    name=name,
                    pid=record.pid if record else None,
                    ports={p: state.ports[p] for p in COMPONENT_PORTS[name] if p in state.ports},
                    running=running,
                    healthy=running and probes[name](),
                )
            )
        return statuses

    # -- up ------------------------------------------------------------------

    def up(self, progress: Progress | None = None) -> ClusterInfo:
        """Starts the control plane (building binaries on first use) and waits until it is healthy.

        If it is already running, only re-applies the CRDs (so regenerated ones land);
        a half-dead one is stopped and started afresh."""
        progress = progress or SilentProgress()
        with self._locked():
            if self.is_running():
                progress.info(f"Control plane already running in {self.layout.root}")
                info = self.info()
                with progress.step("CRDs re-applied and Established"):
                    install_crds(info.kubectl, info.kubeconfig, crd_files())
                return info
            self._stop_leftovers(progress)
            weed, prometheus = components.find_weed(), components.find_prometheus()
            binaries = ensure_binaries(self.cache_dir, progress)
            started = time.monotonic()
            with progress.step("Prepared state dir (PKI, configs, ports)"):
                state, pki = self._prepare(binaries)
            info = ClusterInfo.from_state(self.layout, state)
            try:
                self._start_all(state, binaries, pki, weed, prometheus, info, progress)
            except BaseException:
                progress.info(f"Start-up failed; stopping what was started (logs in {self.layout.logs_dir})")
                self._stop(state)
                raise
            self.layout.env_file.write_text(render_env_file(info.env))
        progress.info(f"Control plane up in {time.monotonic() - started:.1f}s")
        progress.info(f"  kubeconfig: {info.kubeconfig}")
        progress.info(f"  env file:   {info.env_file}")
        progress.info(f"  load it:    set -a; . {info.env_file}; set +a")
        return info

    def _prepare(self, binaries: Binaries) -> tuple[ClusterState, Pki]:
        """PKI, ports (the previous ones where still free), credentials and config files."""
        pki = ensure_pki(self.layout.pki_dir)
        state = ClusterState.load(self.layout)
        state.ports = pick_free_ports(components.PORT_NAMES, state.ports, components.HOST)
        state.ensure_s3_credentials()
        state.kubectl = str(binaries.kubectl)
        state.processes = {}
        self._write_configs(state, pki)
        state.save(self.layout)
        return state, pki

    def _start_all(
        self,
        state: ClusterState,
        binaries: Binaries,
        pki: Pki,
        weed: Path,
        prometheus: Path,
        info: ClusterInfo,
        progress: Progress,
    ) -> None:
        layout, ports = self.layout, state.ports
        probes = self._health_probes(state)
        # Storage and metrics do not depend on the API server: start them together.
        self._start(state, "etcd", components.etcd_command(binaries, layout, ports))
        self._start(state, "seaweedfs", components.seaweedfs_command(weed, layout, ports))
        self._start(state, "prometheus", components.prometheus_command(prometheus, layout, ports))
        self._wait(state, "etcd", probes["etcd"], progress, "etcd healthy")

        self._start(state, "kube-apiserver", components.api_server_command(binaries, layout, pki, ports))
        self._wait(state, "kube-apiserver", probes["kube-apiserver"], progress, "kube-apiserver ready (RBAC on)")

        self._start(
            state, "kube-controller-manager", components.controller_manager_command(binaries, layout, pki, ports)
        )
        with progress.step("CRDs installed and Established (PyTorchJob, TrainJob, JobSet + crds/)"):
            install_crds(binaries.kubectl, layout.kubeconfig, crd_files())
        kcm = "kube-controller-manager"
        self._wait(state, kcm, probes[kcm], progress, f"{kcm} healthy")
        self._start_kubeflow(state, binaries, progress, probes)
        self._start(state, "pod-runner", components.pod_runner_command(layout, ports), components.pod_runner_env(layout))
        self._wait(state, "pod-runner", probes["pod-runner"], progress, f"Pod runner ready (Node {components.NODE_NAME}, pods under {layout.pods_dir})")
        self._wait(state, "seaweedfs", probes["seaweedfs"], progress, f"SeaweedFS S3 answering at {info.s3_endpoint}")
        with progress.step(f"S3 bucket '{info.s3_bucket}' exists"):
            ensure_bucket(info)
        self._wait(state, "prometheus", probes["prometheus"], progress, f"Prometheus ready at {info.prometheus_url}")

    def _start_kubeflow(self, state: ClusterState, binaries: Binaries, progress: Progress, probes: dict[str, Callable[[], bool]]) -> None:
        """training-operator, JobSet and Kubeflow Trainer, with their webhooks registered on loopback."""
        layout = self.layout
        with progress.step("Kubeflow webhooks registered (training-operator, Trainer, JobSet)"):
            webhook_pki = ensure_webhook_pki(layout.pki_dir)
            controllers.write_serving_certs(layout.controllers_tmp_dir, webhook_pki)
            objects = layout.root / "kubeflow-install.json"
            objects.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                           "items": controllers.install_objects(state.ports, webhook_pki)}, indent=1))
            run_kubectl(binaries.kubectl, layout.kubeconfig, ["apply", "--server-side", "--force-conflicts", "--field-manager=gradatim", "-f", str(objects)])
        with progress.step("Kubeflow controllers' ServiceAccount tokens issued (upstream RBAC)"):
            env = {name: components.controller_env(layout, self._controller_kubeconfig(state, binaries, name)) for name in controllers.CONTROLLER_RBAC}
        self._start(state, "training-operator", components.training_operator_command(binaries, layout, state.ports), env["training-operator"])
        self._start(state, "jobset-controller", components.jobset_command(binaries, layout), env["jobset-controller"])
        self._start(state, "trainer-controller-manager", components.trainer_command(binaries, layout), env["trainer-controller-manager"])
        for name, title in (("training-operator", f"Kubeflow training-operator {versions.TRAINING_OPERATOR_VERSION} ready (PyTorchJob)"),
                            ("jobset-controller", f"JobSet {versions.JOBSET_VERSION} ready"),
                            ("trainer-controller-manager", f"Kubeflow Trainer {versions.TRAINER_VERSION} ready (TrainJob)")):
            self._wait(state, name, probes[name], progress, title)
        with progress.step(f"ClusterTrainingRuntime {TRAINING_RUNTIME} installed (manifests/trainer)"):
            runtime = layout.root / "cluster-training-runtime.json"
            runtime.write_text(json.dumps(render_cluster_training_runtime(), indent=1))
            run_kubectl(binaries.kubectl, layout.kubeconfig, ["apply", "--server-side", "--force-conflicts", "--field-manager=gradatim", "-f", str(runtime)])

    def _controller_kubeconfig(self, state: ClusterState, binaries: Binaries, controller: str) -> Path:
        """The controller's kubeconfig, with its ServiceAccount's long-lived token once the token controller filled it."""
        _, namespace, account = controllers.controller_rbac(controller)
        token = ""

        def issued() -> bool:
            nonlocal token
            token = run_kubectl(binaries.kubectl, self.layout.kubeconfig, ["get", "secret", f"{account}-token", "-n", namespace,
                                                                           "-o", "jsonpath={.data.token}"]).strip()
            return bool(token)

        if not wait_for(issued, START_TIMEOUT_SECONDS, interval=0.25):
            raise ClusterError(f"no token for ServiceAccount {namespace}/{account} after {START_TIMEOUT_SECONDS}s (kube-controller-manager's token controller)")
        path = self.layout.controller_kubeconfig(controller)
        server = f"https://{components.HOST}:{state.ports['api_server']}"
        path.write_text(render_token_kubeconfig(server, ensure_pki(self.layout.pki_dir).ca.cert.read_bytes(), base64.b64decode(token).decode(),
                                                f"system:serviceaccount:{namespace}:{account}"))
        path.chmod(0o600)
        return path

    def _start(self, state: ClusterState, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        pid = spawn(command, self.layout.log_file(name), cwd=self.layout.root, env=env)
        state.processes[name] = ProcessRecord(pid=pid, command=command)
        state.save(self.layout)  # recorded at once, so an interrupted `up` can be cleaned up

    def _wait(
        self, state: ClusterState, name: str, probe: Callable[[], bool], progress: Progress, title: str
    ) -> None:
        record, log_file = state.processes[name], self.layout.log_file(name)
        with progress.step(title):

            def ready() -> bool:
                require_running(name, record.pid, record.executable, log_file)
                return probe()

            if not wait_for(ready, START_TIMEOUT_SECONDS, interval=0.25):
                raise ClusterError(
                    f"{name} not healthy after {START_TIMEOUT_SECONDS}s; last lines of {log_file}:\n{tail(log_file)}"
                )

    def _write_configs(self, state: ClusterState, pki: Pki) -> None:
        layout, ports = self.layout, state.ports
        for directory in (layout.logs_dir, layout.etcd_dir, layout.seaweedfs_dir, layout.prometheus_data,
                          layout.prometheus_sd_dir, layout.controller_manager_cert_dir):
            directory.mkdir(parents=True, exist_ok=True)
        layout.etcd_dir.chmod(0o700)  # etcd refuses a data dir others can read
        server = f"https://{components.HOST}:{ports['api_server']}"
        ca = pki.ca.cert.read_bytes()
        for path, pair, user in (
            (layout.kubeconfig, pki.admin, "gradatim-admin"),
            (layout.controller_manager_kubeconfig, pki.controller_manager, "system:kube-controller-manager"),
        ):
            write_private(path, render_kubeconfig(server, ca, pair.cert.read_bytes(), pair.key.read_bytes(), user))
        write_private(layout.s3_config, render_s3_identities(state.s3_access_key, state.s3_secret_key))
        layout.prometheus_config.write_text(
            render_prometheus_config(f"{components.HOST}:{ports['prometheus']}", str(layout.prometheus_sd_dir))
        )
        layout.controllers_tmp_dir.mkdir(parents=True, exist_ok=True)
        layout.pytorch_init_template.write_text("[]")
        layout.jobset_config.write_text(controllers.jobset_config(ports, layout.controllers_tmp_dir / "k8s-webhook-server" / "serving-certs"))
        layout.trainer_config.write_text(controllers.trainer_config(ports))

    def _health_probes(self, state: ClusterState) -> dict[str, Callable[[], bool]]:
        info = ClusterInfo.from_state(self.layout, state)
        pki = ensure_pki(self.layout.pki_dir)
        return {
            "etcd": lambda: health.etcd_healthy(f"http://{components.HOST}:{state.ports['etcd_client']}"),
            "kube-apiserver": lambda: health.api_server_ready(info.api_server, pki),
            "kube-controller-manager": lambda: health.controller_manager_healthy(state.ports["controller_manager"]),
            "seaweedfs": lambda: health.s3_answering(
                info.s3_endpoint, info.s3_access_key, info.s3_secret_key, info.s3_region
            ),
            "prometheus": lambda: health.prometheus_ready(info.prometheus_url),
            "training-operator": lambda: health.controller_ready(state.ports["training_operator_health"]),
            "jobset-controller": lambda: health.controller_ready(state.ports["jobset_health"]),
            "trainer-controller-manager": lambda: health.controller_ready(state.ports["trainer_health"]),
            "pod-runner": lambda: health.controller_ready(state.ports["pod_runner_health"]),
        }

    # -- down ----------------------------------------------------------------

    def down(self, progress: Progress | None = None) -> list[str]:
        """Stops every process this control plane started; returns their names.

        Raises ClusterError if anything is still running afterwards. Data is kept."""
        progress = progress or SilentProgress()
        with self._locked():
            state = ClusterState.load(self.layout)
            if not state.processes:
                progress.info(f"No control plane running in {self.layout.root}")
                return []
            names = list(state.processes)
            with progress.step(f"Stopped {', '.join(names)}"):
                self._stop(state)
        progress.info("Nothing left running.")
        return names

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises `up` and `down` on one state dir (e.g. a quickstart and a test run)."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with open(self.layout.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _stop_leftovers(self, progress: Progress) -> None:
        state = ClusterState.load(self.layout)
        if state.processes:
            with progress.step("Stopped leftovers of a previous, unhealthy control plane"):
                self._stop(state)

    def _stop(self, state: ClusterState) -> None:
        """Stops in stages, whole process groups, then verifies nothing is left."""
        left: dict[str, list[int]] = {}
        for stage in STOP_STAGES:
            # Only groups whose leader still runs our binary: a stale pid may belong to someone else.
            groups = {
                name: record.pid
                for name, record in state.processes.items()
                if name in stage and is_running(record.pid, record.executable)
            }
            left.update(stop_groups(groups, STOP_GRACE_SECONDS))
        still_running = {name: pids for name, pids in left.items() if pids}
        if still_running:
            raise ClusterError(f"Processes survived SIGKILL: {still_running}")
        state.processes = {}
        state.save(self.layout)


def ensure_bucket(info: ClusterInfo) -> None:
    client = info.s3_client()
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if info.s3_bucket not in existing:
        client.create_bucket(Bucket=info.s3_bucket)


def write_private(path: Path, text: str) -> None:
    """Kubeconfigs and S3 identities hold secrets: owner-only from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
