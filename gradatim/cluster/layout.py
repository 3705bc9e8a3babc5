"""Where everything lives inside a control plane's state directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_state_dir() -> Path:
    return Path(os.environ.get("GRADATIM_HOME") or Path.home() / ".gradatim") / "cluster"


@dataclass(frozen=True)
class StateLayout:
    root: Path

    @property
    def state_file(self) -> Path:
        """Pids, ports and credentials of the running control plane (JSON)."""
        return self.root / "state.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def env_file(self) -> Path:
        """`KEY=VALUE` lines for clients: kubeconfig, S3, Prometheus, kubectl."""
        return self.root / "cluster.env"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_dir(self) -> Path:
        return self.root / "etcd"

    @property
    def controller_manager_kubeconfig(self) -> Path:
        return self.root / "kube-controller-manager.kubeconfig"

    @property
    def controller_manager_cert_dir(self) -> Path:
        """KCM writes its self-signed serving cert here."""
        return self.root / "kube-controller-manager"

    @property
    def seaweedfs_dir(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def s3_config(self) -> Path:
        return self.root / "s3-identities.json"

    @property
    def prometheus_config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus-data"

    @property
    def prometheus_sd_dir(self) -> Path:
        """Prometheus reads scrape targets from `*.json` files here (file_sd)."""
        return self.root / "prometheus-sd"

    def controller_kubeconfig(self, controller: str) -> Path:
        """A Kubeflow controller's: its ServiceAccount's token."""
        return self.root / f"{controller}.kubeconfig"

    @property
    def pods_dir(self) -> Path:
        """The pod runner's: a directory per pod with its volumes and its containers' logs."""
        return self.root / "pods"

    @property
    def controllers_tmp_dir(self) -> Path:
        """$TMPDIR of the Kubeflow controllers: their webhook servers read certificates below it."""
        return self.root / "controllers-tmp"

    @property
    def pytorch_init_template(self) -> Path:
        return self.root / "pytorch-init-containers.json"

    @property
    def jobset_config(self) -> Path:
        return self.root / "jobset-config.json"

    @property
    def trainer_config(self) -> Path:
        return self.root / "trainer-config.json"

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"
