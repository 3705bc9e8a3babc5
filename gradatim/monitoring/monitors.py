"""prometheus-operator scrape configs for the two jobs in docs/metrics.md, and the generated monitoring files.

`gradatim-operator` is scraped through the Service in manifests/operator/base/service.yaml (a ServiceMonitor);
`gradatim-trainer` straight from the trainer pods (a PodMonitor), since a PyTorchJob's headless Service only
exposes its rendezvous port. Both honour the series' own labels: a stage's `namespace` is the stage's namespace,
not the namespace of the pod that reports it.

`python -m gradatim.monitoring [ROOT]` (`make monitoring`) regenerates these dashboard and monitor
files in manifests/monitoring/; the alert rules come from alerts.py, the kustomization is written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gradatim.monitoring.dashboard import render_dashboard_configmap, render_dashboard_json

NAMESPACE = "gradatim-system"
OPERATOR_JOB, TRAINER_JOB = "gradatim-operator", "gradatim-trainer"  # the scrape jobs docs/metrics.md names
NAME_LABEL = "app.kubernetes.io/name"
# kube-prometheus-stack's default serviceMonitorSelector / podMonitorSelector match the Helm release label.
RELEASE_LABELS = {"release": "kube-prometheus-stack"}
RELEASE_COMMENT = (
    "# kube-prometheus-stack's default serviceMonitorSelector and podMonitorSelector match `release: <Helm release>`.\n"
    "# If yours is not `kube-prometheus-stack`, change RELEASE_LABELS in monitors.py and run `make monitoring`, patch\n"
    "# the label with kustomize, or set prometheus.prometheusSpec.{serviceMonitor,podMonitor}SelectorNilUsesHelmValues=false.\n"
)
MONITORING_DIR = Path("manifests/monitoring")


def render_service_monitor() -> dict[str, Any]:
    """Scrapes the operator through its metrics Service; the job label comes from the Service's name label."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": OPERATOR_JOB, "namespace": NAMESPACE, "labels": {NAME_LABEL: OPERATOR_JOB, **RELEASE_LABELS}},
        "spec": {
            # Without jobLabel the job would be the Service's name, gradatim-operator-metrics.
            "jobLabel": NAME_LABEL,
            "selector": {"matchLabels": {NAME_LABEL: OPERATOR_JOB}},
            "namespaceSelector": {"matchNames": [NAMESPACE]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}],
        },
    }


def render_pod_monitor() -> dict[str, Any]:
    """Scrapes rank 0 of every running trainer, in any namespace."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": TRAINER_JOB, "namespace": NAMESPACE, "labels": {NAME_LABEL: TRAINER_JOB, **RELEASE_LABELS}},
        "spec": {
            "jobLabel": NAME_LABEL,
            "namespaceSelector": {"any": True},
            # Only rank 0 serves metrics; it runs in the master replica, which the training operator labels
            # `replica-type: master`. Selecting workers too would add one down target per worker.
            "selector": {"matchLabels": {NAME_LABEL: TRAINER_JOB, "training.kubeflow.org/replica-type": "master"}},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}],
        },
    }


def _dump(obj: dict[str, Any], source: str, comment: str = "") -> str:
    header = f"# Generated from gradatim/monitoring/{source} by `make monitoring`; do not edit by hand.\n" + comment
    return header + yaml.dump(obj, Dumper=_LiteralDumper, sort_keys=False, width=120)


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings (the dashboard JSON) as `|` blocks, so the ConfigMap stays readable and diffable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def generated_files() -> dict[Path, str]:
    """Repo-relative path -> text of every file `make monitoring` writes for the dashboard and the monitors."""
    return {
        # JSON has no comments: this copy is for Grafana's "Import dashboard", generated like the rest.
        MONITORING_DIR / "grafana-dashboard.json": render_dashboard_json(),
        MONITORING_DIR / "grafana-dashboard-configmap.yaml": _dump(render_dashboard_configmap(), "dashboard.py"),
        MONITORING_DIR / "servicemonitor.yaml": _dump(render_service_monitor(), "monitors.py", RELEASE_COMMENT),
        MONITORING_DIR / "podmonitor.yaml": _dump(render_pod_monitor(), "monitors.py", RELEASE_COMMENT),
    }
