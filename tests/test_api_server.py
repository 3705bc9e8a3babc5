"""The API contract on the real API server: examples admitted, bad specs rejected naming the field, printer
columns and `kubectl explain` useful, and objects round-tripping unchanged through the pydantic types."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from gradatim.api import GROUP, VERSION, TrainingPipeline, TrainingStage, admission
from tests.bad_specs import BAD_SPECS, VALID_PIPELINE, VALID_STAGE

REPO = Path(__file__).resolve().parents[1]
PLURAL = {"TrainingStage": "trainingstages", "TrainingPipeline": "trainingpipelines"}


@pytest.fixture(scope="module")
def namespace(kube):
    name = f"api-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def kubectl(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True, text=True, timeout=60, check=check,
    )


def create(kube, namespace, body, dry_run=True):
    api = client.CustomObjectsApi(kube)
    return api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL[body["kind"]], body,
        dry_run="All" if dry_run else None, field_validation="Strict",
    )


@pytest.mark.parametrize("example", sorted(p for p in (REPO / "examples").iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_examples_pass_a_server_side_dry_run(cluster, kube, example):
    # The example's own Namespace is in it, but a server-side dry run creates nothing for the rest to go in.
    namespace = yaml.safe_load((example / "kustomization.yaml").read_text())["namespace"]
    kubectl(cluster, "create", "namespace", namespace, check=False)
    out = kubectl(cluster, "apply", "-k", str(example), "--dry-run=server", check=False)
    assert out.returncode == 0, out.stderr
    assert "created (server dry run)" in out.stdout or "configured (server dry run)" in out.stdout


def test_corpus_is_large_and_each_base_is_valid(kube, namespace):
    assert len(BAD_SPECS) >= 40
    assert len({c.case for c in BAD_SPECS}) == len(BAD_SPECS)
    create(kube, namespace, VALID_STAGE)
    create(kube, namespace, VALID_PIPELINE)


@pytest.mark.parametrize("bad", BAD_SPECS, ids=lambda c: c.case.replace(" ", "-"))
def test_bad_spec_is_rejected_naming_the_field(kube, namespace, bad):
    with pytest.raises(ApiException) as err:
        create(kube, namespace, bad.body())
    assert err.value.status in (400, 422), err.value.body
    message = json.loads(err.value.body)["message"]
    assert bad.field in message, f"{bad.case}: {message}"
    assert bad.allowed in message, f"{bad.case}: {message}"


def server_words(problem: admission.Problem) -> str:
    """A local problem as the API server words it (locally an unknown field also gets a "did you mean")."""
    return f'unknown field "{problem.field}"' if problem.type == admission.UNKNOWN_FIELD else problem.detail


@pytest.mark.parametrize("bad", BAD_SPECS, ids=lambda c: c.case.replace(" ", "-"))
def test_local_admission_says_what_the_api_server_says(kube, namespace, bad):
    """gradatim.api.admission (what `gradatim run` checks) against the real API server: the same problems, each
    with the same field and the same words. (With several, the server's order follows Go map iteration, so the
    problems are compared as a multiset, and the message checked to hold each of them.)"""
    with pytest.raises(ApiException) as err:
        create(kube, namespace, bad.body())
    status = json.loads(err.value.body)
    local = admission.validate(bad.body())
    if local and all(p.type == admission.UNKNOWN_FIELD for p in local):  # strict decoding: a 400 with no causes
        decoding = f'{bad.kind} in version "{VERSION}" cannot be handled as a {bad.kind}: strict decoding error: '
        assert status["message"] == decoding + ", ".join(server_words(p) for p in local)
        return
    causes = sorted((c.get("field", ""), c["message"]) for c in status["details"]["causes"])
    assert causes == sorted((p.field, server_words(p)) for p in local), bad.case
    prefix = f'{bad.kind}.{GROUP} "{bad.body()["metadata"]["name"]}" is invalid: '
    if len(local) == 1:
        assert status["message"] == prefix + str(local[0])
    else:
        assert status["message"].startswith(prefix + "[") and all(str(p) in status["message"] for p in local)


def test_type_and_pipeline_are_immutable(kube, namespace):
    body = json.loads(json.dumps(VALID_STAGE))
    body["metadata"]["name"] = "immutable"
    create(kube, namespace, body, dry_run=False)
    api = client.CustomObjectsApi(kube)
    for patch, field in (
        ({"spec": {"type": "midtrain", "sft": None, "midtrain": {}}}, "spec.type"),
        ({"spec": {"pipeline": "other"}}, "spec.pipeline"),
    ):
        with pytest.raises(ApiException) as err:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingstages", "immutable", patch)
        message = json.loads(err.value.body)["message"]
        assert field in message and "immutable" in message, message


def _full_stage() -> dict:
    """A stage with every optional block set, so the round trip covers the whole schema."""
    return {
        "apiVersion": "gradatim.io/v1alpha1",
        "kind": "TrainingStage",
        "metadata": {"name": "full-grpo"},
        "spec": {
            "pipeline": "recipe",
            "type": "grpo",
            "dependsOn": ["dpo", "rollouts"],
            "inputs": {
                "model": {"fromStage": "dpo", "output": "model"},
                "data": [{"fromStage": "rollouts", "output": "prompts", "name": "prompts"}, {"builtin": "tiny-math:rl"}],
                "evalData": [{"hf": "HuggingFaceH4/MATH-500@main", "name": "math500"}],
            },
            "grpo": {
                "numGenerations": 4, "batchSize": 64, "microBatchSize": 2, "epsilonHigh": 0.28, "maxSteps": 90,
                "rewards": {"format": 0.1, "lengthAware": {"maxLength": 4096, "positiveControlLength": 2048}},
                "systemMessage": "Think first.",
            },
            "resources": {"nodes": 4, "gpusPerNode": 8, "gpuResourceName": "amd.com/gpu", "cpu": 96, "memory": "1500Gi", "shmSize": "64Gi"},
            "image": "registry.example.com/trainer:1",
            "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
            "checkpointInterval": 10,
            "retryLimit": 5,
            "retryBackoffSeconds": 10,
            "activeDeadlineSeconds": 86400,
            "qualityGate": {"metric": "reward_mean", "comparison": ">", "threshold": 0.1},
            "suspend": True,
            "queueName": "team-a",
            "priorityClassName": "training-high",
            "seed": 7,
        },
    }


@pytest.mark.parametrize("body", [_full_stage(), VALID_STAGE, VALID_PIPELINE], ids=["full-stage", "minimal-stage", "minimal-pipeline"])
def test_objects_round_trip_unchanged(kube, namespace, body):
    """Server defaults equal pydantic defaults, and nothing is pruned or rewritten."""
    model = {"TrainingStage": TrainingStage, "TrainingPipeline": TrainingPipeline}[body["kind"]]
    sent = model.model_validate(body)
    stored = create(kube, namespace, body, dry_run=False)
    back = model.model_validate({k: v for k, v in stored.items() if k != "metadata"} | {"metadata": body["metadata"]})
    assert back.spec == sent.spec
    assert back.spec.to_wire() == sent.spec.to_wire()


def test_status_round_trips_through_the_status_subresource(kube, namespace):
    body = json.loads(json.dumps(VALID_STAGE))
    body["metadata"]["name"] = "with-status"
    stored = create(kube, namespace, body, dry_run=False)
    status = {
        "observedGeneration": 1, "phase": "Running", "attempt": 2, "jobName": "with-status-a2", "cacheKey": "ab12",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "JobRunning", "message": "attempt 2 running", "lastTransitionTime": "2026-11-23T10:00:00Z", "observedGeneration": 1},
            {"type": "Reconciling", "status": "True", "reason": "JobRunning", "message": "", "lastTransitionTime": "2026-11-23T10:00:00Z"},
        ],
        "progress": {"step": 120, "totalSteps": 500, "percent": 24, "etaSeconds": 3600, "text": "120/500"},
        "metrics": {"train_loss": 1.25}, "outputs": {"model": "s3://models/ns/recipe/sft/ab12/model/"},
        "startTime": "2026-11-23T09:00:00Z",
    }
    api = client.CustomObjectsApi(kube)
    updated = api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "trainingstages", "with-status", {"status": status})
    parsed = TrainingStage.model_validate(updated)
    assert parsed.status.to_wire() == TrainingStage.model_validate(stored | {"status": status}).status.to_wire()
    assert updated["status"]["progress"]["text"] == "120/500"


def test_printer_columns_and_short_names(cluster, kube, namespace):
    body = json.loads(json.dumps(VALID_STAGE))
    body["metadata"]["name"] = "columns"
    create(kube, namespace, body, dry_run=False)
    api = client.CustomObjectsApi(kube)
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "trainingstages", "columns",
        {"status": {"phase": "Running", "progress": {"step": 3, "totalSteps": 7, "percent": 42, "etaSeconds": 90, "text": "3/7"}}},
    )
    pipe = json.loads(json.dumps(VALID_PIPELINE))
    pipe["metadata"]["name"] = "columns-pipe"
    create(kube, namespace, pipe, dry_run=False)
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "trainingpipelines", "columns-pipe",
        {"status": {"phase": "Running", "progress": "3/7", "currentStage": "sft"}},
    )
    out = kubectl(cluster, "-n", namespace, "get", "tstage", "columns").stdout.splitlines()
    assert out[0].split() == ["NAME", "PIPELINE", "TYPE", "PHASE", "PROGRESS", "ETA(S)", "AGE"]
    assert out[1].split()[:6] == ["columns", "recipe", "sft", "Running", "3/7", "90"]
    wide = kubectl(cluster, "-n", namespace, "get", "tstage", "columns", "-o", "wide").stdout.splitlines()[0].split()
    assert {"ATTEMPT", "JOB", "READY"} <= set(wide)
    out = kubectl(cluster, "-n", namespace, "get", "tpipe", "columns-pipe").stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "PROGRESS", "RUNNING", "AGE"]
    assert out[1].split()[:4] == ["columns-pipe", "Running", "3/7", "sft"]
    both = kubectl(cluster, "-n", namespace, "get", "gradatim").stdout
    assert "trainingstage.gradatim.io/columns" in both and "trainingpipeline.gradatim.io/columns-pipe" in both


def test_kubectl_explain_describes_fields(cluster):
    def explain(path: str) -> str:  # kubectl wraps long lines; compare words
        return " ".join(kubectl(cluster, "explain", path).stdout.split())

    grpo = explain("trainingstage.spec.grpo")
    assert "GRPO with verifiable, length-aware and repetition rewards" in grpo
    for field in ("numGenerations", "epsilonHigh", "rewards", "maxCompletionLength"):
        assert field in grpo
    assert "Group size G" in grpo
    rewards = explain("trainingstage.spec.grpo.rewards.lengthAware")
    assert "short-and-right scores highest" in rewards
    storage = explain("tpipe.spec.storage.secretRef")
    assert "never copied" in storage
