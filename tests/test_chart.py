"""The Helm chart (charts/gradatim), linted and templated by the real helm (built from its Go module), renders the
same objects as the kustomize manifests in every mode: cluster-wide, with workspaces, namespaced, and with
monitoring. Its CRDs and monitoring files are generated copies, checked fresh here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradatim.api.crd import CHART_CRD_DIR, render_crds, dump
from gradatim.cluster import versions
from gradatim.cluster.build import default_cache_dir, ensure_helm
from gradatim.cluster.progress import ConsoleProgress
from tests.operator_harness import kustomized

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "gradatim"
KUBE_VERSION = versions.KUBERNETES_VERSION.lstrip("v")  # helm built without ldflags assumes Kubernetes 1.20
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version")


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm(default_cache_dir(), ConsoleProgress())


def run(*argv: str | Path) -> str:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def template(helm: Path, namespace: str, *sets: str) -> list[dict[str, Any]]:
    argv: list[str | Path] = [helm, "template", "gradatim", CHART, "--namespace", namespace, "--include-crds", "--kube-version", KUBE_VERSION]
    for value in sets:
        argv += ["--set", value]
    return [d for d in yaml.safe_load_all(run(*argv)) if d]


EXPONENT_ONLY = re.compile(r"^-?\d+[eE][-+]?\d+$")


def numbers(node: Any) -> Any:
    """kustomize writes 5.0e-07 as 5e-07, which PyYAML (YAML 1.1: a float needs a dot) reads as a string."""
    if isinstance(node, dict):
        return {k: numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [numbers(v) for v in node]
    return float(node) if isinstance(node, str) and EXPONENT_ONLY.match(node) else node


def by_identity(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Objects by (apiVersion, kind, namespace, name), without Helm's own labels (or a labels map they alone filled)
    and without Namespaces (`helm install --create-namespace` makes the release's)."""
    found = {}
    for doc in docs:
        if doc["kind"] == "Namespace":
            continue
        labels = doc["metadata"].get("labels")
        if labels is not None:
            for key in HELM_LABELS:
                labels.pop(key, None)
            if not labels:
                del doc["metadata"]["labels"]
        meta = doc["metadata"]
        found[(doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"])] = numbers(doc)
    return found


def assert_same_objects(helm_docs: list[dict[str, Any]], kustomize_docs: list[dict[str, Any]]) -> None:
    chart, manifests = by_identity(helm_docs), by_identity(kustomize_docs)
    assert sorted(chart) == sorted(manifests), "objects differ: only in the chart %s, only in manifests %s" % (
        sorted(set(chart) - set(manifests)), sorted(set(manifests) - set(chart)))
    different = [key for key in chart if chart[key] != manifests[key]]
    assert not different, "\n".join(f"{key}:\n--- chart\n{yaml.safe_dump(chart[key])}--- manifests\n{yaml.safe_dump(manifests[key])}"
                                    for key in different[:2])


def test_the_chart_lints_in_every_mode(helm):
    for sets in ([], ["installMode=namespaced", "watchNamespaces={team-a,team-b}"], ["monitoring.enabled=true", "workspaceNamespaces={team-a}"]):
        argv: list[str | Path] = [helm, "lint", CHART, "--strict", "--kube-version", KUBE_VERSION]
        for value in sets:
            argv += ["--set", value]
        assert "0 chart(s) failed" in run(*argv)


def test_the_chart_renders_the_clusterwide_manifests(helm, cluster):
    assert_same_objects(template(helm, "gradatim-system"), kustomized(cluster, REPO / "manifests/operator"))


def test_the_chart_binds_workspaces_as_manifests_workspace_does(helm, cluster):
    expected = kustomized(cluster, REPO / "manifests/operator")
    for namespace in ("team-a", "team-b"):
        for binding in kustomized(cluster, REPO / "manifests/workspace"):
            binding["metadata"]["namespace"] = namespace  # as `kubectl apply -n <namespace> -k manifests/workspace/`
            expected.append(binding)
    assert_same_objects(template(helm, "gradatim-system", "workspaceNamespaces={team-a,team-b}"), expected)


def test_the_chart_renders_the_namespaced_manifests(helm, cluster):
    assert_same_objects(template(helm, "gradatim", "installMode=namespaced"), kustomized(cluster, REPO / "manifests/operator-namespaced"))
    several = by_identity(template(helm, "gradatim", "installMode=namespaced", "watchNamespaces={team-a,team-b}"))
    assert not [key for key in several if key[1].startswith("Cluster")], "the namespaced install has no cluster-wide RBAC"
    assert {key[2] for key in several if key[1] in ("Role", "RoleBinding")} == {"team-a", "team-b"}
    command = several[("apps/v1", "Deployment", "gradatim", "gradatim-operator")]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--namespace=team-a", "--namespace=team-b"]


def test_the_chart_renders_the_monitoring_manifests_when_asked(helm, cluster):
    expected = kustomized(cluster, REPO / "manifests/operator") + kustomized(cluster, REPO / "manifests/monitoring")
    assert_same_objects(template(helm, "gradatim-system", "monitoring.enabled=true"), expected)
    moved = by_identity(template(helm, "ml-ops", "monitoring.enabled=true", "monitoring.release=prom"))
    rule = moved[("monitoring.coreos.com/v1", "PrometheusRule", "ml-ops", "gradatim-alerts")]
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert "{{ $labels.stage }}" in yaml.safe_dump(rule) or "$labels" in yaml.safe_dump(rule), "Prometheus's templates reach it untouched"
    monitor = moved[("monitoring.coreos.com/v1", "ServiceMonitor", "ml-ops", "gradatim-operator")]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["ml-ops"]


def test_a_bad_install_mode_is_refused_naming_the_value(helm):
    out = subprocess.run([str(helm), "template", "gradatim", str(CHART), "--set", "installMode=everywhere", "--kube-version", KUBE_VERSION],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and 'installMode: "everywhere" is neither clusterwide nor namespaced' in out.stderr


def test_the_charts_crds_are_fresh():
    """charts/gradatim/crds/ is generated with crds/ by `make crds`."""
    rendered = {name: dump(obj) for name, obj in render_crds().items()}
    assert {p.name for p in CHART_CRD_DIR.iterdir()} == set(rendered), "run `make crds`"
    for name, text in rendered.items():
        assert (CHART_CRD_DIR / name).read_text() == text, f"charts/gradatim/crds/{name} is stale; run `make crds`"
