"""Every PyTorchJob the planner renders passes Kubeflow's own PyTorchJob CRD schema on the real API server,
including the multi-node shapes of the full-scale examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client

from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.planner.render import render_pytorchjob

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ["quickstart", "phi4-mini-reasoning", "phi4-reasoning"]


def load(example: str) -> tuple[TrainingPipeline, list[TrainingStage]]:
    docs = [d for f in sorted((REPO / "examples" / example).glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    [pipe] = [TrainingPipeline.model_validate(d) for d in docs if d.get("kind") == "TrainingPipeline"]
    stages = [d for d in docs if d.get("kind") == "TrainingStage"]
    for d in stages:
        d["metadata"].update(namespace="default", uid="00000000-0000-0000-0000-000000000000")
    return pipe, [TrainingStage.model_validate(d) for d in stages]


@pytest.mark.parametrize("example", EXAMPLES)
def test_rendered_jobs_pass_kubeflow_schema(kube, example):
    pipe, stages = load(example)
    api = client.CustomObjectsApi(kube)
    for stage in stages:
        job = render_pytorchjob(stage, pipe, key="0123456789abcdef", attempt=12, configmap="x-spec", suspend=False)
        job["metadata"]["namespace"] = "default"
        stored = api.create_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", job, dry_run="All", field_validation="Strict")
        assert stored["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] == 1


def test_full_scale_shapes(kube):
    pipe, stages = load("phi4-mini-reasoning")
    by_name = {s.metadata["name"]: s for s in stages}
    mid = render_pytorchjob(by_name["midtrain"], pipe, key="k", attempt=1, configmap="c", suspend=True)
    spec = mid["spec"]
    assert spec["nprocPerNode"] == "8" and spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 15  # 16 nodes x 8 = 128 H100
    container = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/gradatim/trainer:0.1.0" and container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["command"] == ["torchrun", "-m", "gradatim.trainer", "--spec", "/etc/gradatim/stage.json"]
    shm = next(v for v in spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["sizeLimit"] == "256Gi"
    assert mid["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-training"
    ev = render_pytorchjob(by_name["eval-sft"], pipe, key="k", attempt=1, configmap="c", suspend=True)
    assert "Worker" not in ev["spec"]["pytorchReplicaSpecs"]
    pipe14, stages14 = load("phi4-reasoning")
    grpo = render_pytorchjob({s.metadata["name"]: s for s in stages14}["grpo"], pipe14, key="k", attempt=1, configmap="c", suspend=False)
    assert grpo["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3  # 4 nodes x 8 = 32 H100
