"""Installing Gradatim as shipped: least privilege in both install modes, proven by impersonating the operator's
ServiceAccount (`kubectl auth can-i --as`); the operator running with exactly those grants, as a uid with no passwd
entry (its image's); a pipeline where the operator may not read Secrets told so, and running once granted; the
example recipes side by side in one cluster."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from tests.operator_harness import REPO, apply_rbac, clusterwide_rbac, kustomized, namespaced_rbac, running_harness

CLUSTERWIDE_ACCOUNT = "system:serviceaccount:gradatim-system:gradatim-operator"


def kubectl(cluster, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", *args],
                          capture_output=True, text=True, timeout=60, check=check, input=stdin)


def can_i(cluster, account: str, verb: str, resource: str, namespace: str | None) -> bool:
    """`kubectl auth can-i` as `account`; namespace None asks for every namespace at once. A subresource is written
    `pods:exec` (kubectl reads `pods/exec` as the pod named exec)."""
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    resource, _, subresource = resource.partition(":")
    sub = [f"--subresource={subresource}"] if subresource else []
    out = kubectl(cluster, "auth", "can-i", verb, resource, *sub, *where, f"--as={account}", check=False)
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


@pytest.fixture
def namespaces(kube):
    """Three fresh namespaces, deleted afterwards."""
    names = [f"inst-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for name in names:
        client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    yield names
    for name in names:
        client.CoreV1Api(kube).delete_namespace(name)


def check_grants(cluster, account: str, allowed: list[tuple[str, str, str | None]], refused: list[tuple[str, str, str | None]]) -> None:
    wrong = [f"{'refused' if want else 'allowed'}: {verb} {resource} in {ns or 'every namespace'}"
             for want, cases in ((True, allowed), (False, refused)) for verb, resource, ns in cases
             if can_i(cluster, account, verb, resource, ns) != want]
    assert not wrong, f"{account}:\n" + "\n".join(wrong)


def test_the_clusterwide_install_reads_secrets_and_writes_configmaps_only_in_workspaces(cluster, kube, namespaces):
    workspace, elsewhere, _ = namespaces
    apply_rbac(cluster, clusterwide_rbac(workspace))
    allowed = [
        ("watch", "trainingstages.gradatim.io", None), ("patch", "trainingpipelines.gradatim.io", None),
        ("patch", "trainingstages.gradatim.io:status", elsewhere),
        ("create", "pytorchjobs.kubeflow.org", elsewhere), ("delete", "trainjobs.trainer.kubeflow.org", elsewhere),
        ("list", "pods", None), ("create", "events", elsewhere), ("list", "events", elsewhere),
        ("get", "secrets", workspace), ("create", "configmaps", workspace),
        ("watch", "namespaces", None), ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ]
    refused = [
        ("get", "secrets", None), ("get", "secrets", elsewhere), ("get", "secrets", "kube-system"), ("list", "secrets", workspace),
        ("create", "configmaps", "kube-system"), ("create", "configmaps", elsewhere), ("update", "configmaps", workspace),
        ("delete", "configmaps", workspace),
        ("create", "trainingstages.gradatim.io", workspace), ("delete", "trainingpipelines.gradatim.io", workspace),
        ("create", "pods", workspace), ("delete", "pods", workspace), ("create", "pods:exec", workspace),
        ("create", "rolebindings.rbac.authorization.k8s.io", workspace), ("get", "nodes", None),
        ("create", "serviceaccounts:token", "gradatim-system"),
    ]
    check_grants(cluster, CLUSTERWIDE_ACCOUNT, allowed, refused)


def test_the_namespaced_install_may_act_only_in_its_namespace(cluster, kube, namespaces):
    home, elsewhere, _ = namespaces
    apply_rbac(cluster, namespaced_rbac(home))
    account = f"system:serviceaccount:{home}:gradatim-operator"
    allowed = [
        ("watch", "trainingstages.gradatim.io", home), ("patch", "trainingpipelines.gradatim.io:status", home),
        ("create", "pytorchjobs.kubeflow.org", home), ("create", "trainjobs.trainer.kubeflow.org", home),
        ("list", "pods", home), ("create", "events", home), ("get", "secrets", home), ("create", "configmaps", home),
    ]
    refused = [
        ("watch", "trainingstages.gradatim.io", None), ("get", "trainingstages.gradatim.io", elsewhere),
        ("create", "pytorchjobs.kubeflow.org", elsewhere), ("get", "secrets", elsewhere), ("list", "secrets", home),
        ("create", "configmaps", elsewhere), ("list", "namespaces", None),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None), ("create", "pods", home),
    ]
    check_grants(cluster, account, allowed, refused)


def test_the_namespaced_operator_runs_a_pipeline_as_a_uid_without_a_passwd_entry(cluster, kube, tmp_path):
    """With only the namespaced install's Role, as uid 65532 with no passwd entry and no USER: kopf's own identity
    lookup (getpass) raised here and crash-looped the operator's image."""
    probe = subprocess.run(["unshare", "--user", "--map-user=65532", "--map-group=65532", "env", "-u", "USER", "-u", "LOGNAME",
                            "python3", "-c", "import getpass; getpass.getuser()"], capture_output=True, text=True)
    assert "uid not found: 65532" in probe.stderr, "the test would prove nothing: uid 65532 has a name here"
    with running_harness(cluster, kube, tmp_path, "nsop", install="namespaced", uid=65532) as h:
        h.pipeline("p")
        h.stage("train", "p")
        h.stage("eval", "p", "eval", deps=("train",), env={"STAND_IN_METRICS": '{"pass@1": 0.9}'})
        h.wait_phase("eval", "Succeeded", timeout=180)
        assert Path(f"/proc/{h.operator.group}/uid_map").read_text().split()[:3] == ["65532", "0", "1"]
        log = h.operator_log()
        assert "Forbidden" not in log and "403" not in log, log  # no cluster-wide scan asked for, none refused


def test_a_pipeline_where_the_operator_may_not_read_secrets_says_how_to_grant_it_then_runs(cluster, kube, tmp_path):
    with running_harness(cluster, kube, tmp_path, "nows", workspace=False) as h:
        h.pipeline("p")
        h.stage("train", "p")
        st = h.wait_phase("train", "Invalid")
        message = next(c["message"] for c in st["status"]["conditions"] if c["type"] == "Stalled")
        assert "may not read Secret 's3'" in message and f"kubectl apply -n {h.namespace} -k manifests/workspace/" in message, message
        assert h.jobs("train") == []
        kubectl(cluster, "apply", "-n", h.namespace, "-k", str(REPO / "manifests/workspace"))
        h.wait_phase("train", "Succeeded", timeout=180)


def test_the_example_recipes_install_side_by_side(cluster, kube):
    """Each full-scale recipe lives in its own namespace (they share stage names): both apply to one cluster, and
    no object of one is an object of the other."""
    examples = ["phi4-mini-reasoning", "phi4-reasoning"]
    rendered = {ex: kustomized(cluster, REPO / "examples" / ex) for ex in examples}
    keys = {ex: {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs
                 if d["kind"] not in ("ClusterRole", "ClusterRoleBinding")} for ex, docs in rendered.items()}
    assert not keys[examples[0]] & keys[examples[1]]
    for ex, docs in rendered.items():
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {ex}
    try:
        for ex in examples:
            out = kubectl(cluster, "apply", "-k", str(REPO / "examples" / ex), check=False)
            assert out.returncode == 0, out.stderr
        for ex in examples:
            stages = kubectl(cluster, "get", "trainingstages", "-n", ex, "-o", "name").stdout.split()
            assert stages and len(stages) == sum(d["kind"] == "TrainingStage" for d in rendered[ex])
            binding = kubectl(cluster, "get", "rolebinding", "gradatim-workspace", "-n", ex, "-o", "jsonpath={.subjects[0].namespace}").stdout
            assert binding == "gradatim-system"
    finally:
        for ex in examples:
            kubectl(cluster, "delete", "namespace", ex, "--wait=false", check=False)
