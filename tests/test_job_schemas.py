"""Every job the planner renders, PyTorchJob and TrainJob, passes Kubeflow's own CRD schemas and webhooks on the
real API server (training-operator and Kubeflow Trainer running), including the multi-node shapes of the
full-scale examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.api.hyperparams import PHI4_REASONING_SYSTEM_MESSAGE
from gradatim.api.resolved import ENDPOINT_API_KEY_ENV, ResolvedStageSpec
from gradatim.planner.render import TRAINING_RUNTIME, Upstream, render_pytorchjob, render_stage_spec, render_trainjob

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


@pytest.mark.parametrize("example", EXAMPLES)
def test_rendered_trainjobs_pass_kubeflow_trainer_schema_and_webhooks(kube, example):
    """Through the CRD schema and Kubeflow Trainer's defaulting and validating webhooks, which check each TrainJob
    against gradatim-torch (its runtime patches included)."""
    pipe, stages = load(example)
    api = client.CustomObjectsApi(kube)
    for stage in stages:
        job = render_trainjob(stage, pipe, key="0123456789abcdef", attempt=12, configmap="x-spec", suspend=False)
        job["metadata"]["namespace"] = "default"
        stored = api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "default", "trainjobs", job, dry_run="All",
                                                     field_validation="Strict")
        assert stored["spec"]["runtimeRef"] == {"name": TRAINING_RUNTIME, "kind": "ClusterTrainingRuntime", "apiGroup": "trainer.kubeflow.org"}


# The full-scale examples, stage by stage: (nodes, GPUs per node) of the planned PyTorchJob. Every stage shares the
# pipeline's image, /dev/shm and Kueue queue. Phi-4-mini-reasoning: 128 H100 = 16 x 8; Phi-4-reasoning(-plus): 32 = 4 x 8.
FULL_SCALE = {
    "phi4-mini-reasoning": {
        "teacher-rollouts": (1, 0), "decontaminate": (1, 0), "midtrain": (16, 8), "eval-midtrain": (1, 8), "sft": (16, 8), "eval-sft": (1, 8),
        "decontaminate-pairs": (1, 0), "dpo": (16, 8), "eval-dpo": (1, 8), "rl-prompts": (4, 8), "grpo": (16, 8),
        "eval-grpo": (1, 8),
    },
    "phi4-reasoning": {
        "decontaminate": (1, 0), "sft": (4, 8), "eval-sft": (1, 8), "eval-sft-aime25": (1, 8), "grpo": (4, 8),
        "eval-grpo": (1, 8), "eval-grpo-aime25": (1, 8),
    },
}
FULL_SCALE_CASES = [(example, stage) for example, stages in FULL_SCALE.items() for stage in stages]
SCRATCH = {"phi4-mini-reasoning": "200Gi", "phi4-reasoning": "1Ti"}
IMAGE, SHM, QUEUE = "ghcr.io/gradatim/trainer:0.1.0", "256Gi", "gpu-training"
COMMAND = ["torchrun", "-m", "gradatim.trainer", "--spec", "/etc/gradatim/stage.json", "--workdir", "/scratch"]
OUTPUTS = ("model", "traces", "pairs", "prompts", "data", "results")

MINI_SYSTEM = "Your name is Phi, an AI math expert developed by Microsoft."  # the Phi-4-mini-reasoning chat template's
MINI_EVAL = {"samples_per_problem": 3, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 32768, "system_message": MINI_SYSTEM}
PHI4_EVAL = {"temperature": 0.8, "top_p": 0.95, "top_k": 50, "max_new_tokens": 32768, "system_message": PHI4_REASONING_SYSTEM_MESSAGE}

# Stage -> (the model it starts from, the facts of ../shared/recipes.md its typed hyperparameters must carry).
# Dotted keys reach into nested blocks. Decontamination settings are ours: neither report gives any.
RECIPES = {
    "phi4-mini-reasoning": {
        # R1 behind its own OpenAI-compatible server: ~8 rollouts per question, verified, pairs kept for stage 3.
        "teacher-rollouts": ("endpoint:deepseek-ai/DeepSeek-R1", {"samples_per_prompt": 8, "write_pairs": True, "max_new_tokens": 32768}),
        "decontaminate": (None, {}),
        "midtrain": ("hf:microsoft/Phi-4-mini-instruct",
                     {"max_length": 16384, "batch_size": 128, "learning_rate": 1e-5, "epochs": 5, "warmup_ratio": 0.1, "packing": True}),
        "eval-midtrain": ("stage:midtrain", MINI_EVAL),
        "sft": ("stage:midtrain",
                {"max_length": 20480, "batch_size": 128, "learning_rate": 1e-5, "epochs": 5, "packing": False, "system_message": MINI_SYSTEM}),
        "eval-sft": ("stage:sft", MINI_EVAL),
        "decontaminate-pairs": (None, {}),
        "dpo": ("stage:sft", {"max_length": 16384, "learning_rate": 5e-7, "epochs": 1, "system_message": MINI_SYSTEM}),
        "eval-dpo": ("stage:dpo", MINI_EVAL),
        # The RL prompt filter: drop prompts whose group accuracy is above 50%.
        "rl-prompts": ("stage:dpo", {"pass_rate_band.max": 0.5, "temperature": 1.0, "max_new_tokens": 25600, "system_message": MINI_SYSTEM}),
        "grpo": ("stage:dpo", {"learning_rate": 5e-7, "max_completion_length": 25600, "temperature": 1.0, "system_message": MINI_SYSTEM,
                               "rewards.correctness": 1.0, "rewards.repetition": 0.0, "rewards.length_aware.enabled": False}),
        "eval-grpo": ("stage:grpo", MINI_EVAL),
    },
    "phi4-reasoning": {
        "decontaminate": (None, {}),
        # packing is derived, not reported: 16K steps x 32 sequences reach 16B tokens only with ~32K-token sequences.
        "sft": ("hf:microsoft/phi-4",
                {"learning_rate": 1e-5, "warmup_ratio": 450 / 16000, "weight_decay": 1e-4, "max_steps": 16000, "batch_size": 32,
                 "max_length": 32768, "packing": True, "think_format": True, "system_message": PHI4_REASONING_SYSTEM_MESSAGE}),
        "eval-sft": ("stage:sft", PHI4_EVAL | {"samples_per_problem": 5}),
        "eval-sft-aime25": ("stage:sft", PHI4_EVAL | {"samples_per_problem": 50}),
        "grpo": ("stage:sft",
                 {"num_generations": 8, "batch_size": 64 * 8, "learning_rate": 5e-8, "lr_scheduler": "cosine", "warmup_ratio": 10 / 125,
                  "max_steps": 125, "beta": 0.001, "max_completion_length": 31744, "max_length": 32768,
                  "system_message": PHI4_REASONING_SYSTEM_MESSAGE, "rewards.correctness": 8 / 13, "rewards.repetition": 1 / 13,
                  "rewards.length_aware.max_length": 31744, "rewards.length_aware.positive_control_length": 25600,
                  "rewards.length_aware.negative_control_length": 3702, "rewards.length_aware.correct_max": 1.0,
                  "rewards.length_aware.correct_min": 0.5, "rewards.length_aware.incorrect_max": -0.5,
                  "rewards.length_aware.incorrect_min": -1.0, "rewards.repetition_penalty.ngram_size": 5}),
        "eval-grpo": ("stage:grpo", PHI4_EVAL | {"samples_per_problem": 5}),
        "eval-grpo-aime25": ("stage:grpo", PHI4_EVAL | {"samples_per_problem": 50}),
    },
}


def full_scale_stage(example: str, name: str) -> tuple[TrainingPipeline, TrainingStage, dict[str, Upstream]]:
    """The pipeline, the stage, and every stage of the example as a finished upstream with all its outputs."""
    pipe, stages = load(example)
    upstream = {s.metadata["name"]: Upstream(s.spec.type, {o: f"s3://b/{s.metadata['name']}/{o}/" for o in OUTPUTS}) for s in stages}
    return pipe, {s.metadata["name"]: s for s in stages}[name], upstream


def dotted(params: Any, key: str) -> Any:
    for part in key.split("."):
        params = getattr(params, part)
    return params


@pytest.mark.parametrize("example", FULL_SCALE)
def test_full_scale_tables_cover_every_stage(example):
    names = {s.metadata["name"] for s in load(example)[1]}
    assert set(FULL_SCALE[example]) == names and set(RECIPES[example]) == names


@pytest.mark.parametrize(("example", "name"), FULL_SCALE_CASES)
def test_full_scale_job_shape(example, name):
    pipe, stage, _ = full_scale_stage(example, name)
    nodes, gpus = FULL_SCALE[example][name]
    job = render_pytorchjob(stage, pipe, key="k", attempt=1, configmap="c", suspend=True)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    assert job["spec"]["nprocPerNode"] == str(max(gpus, 1))  # one process per GPU; one on a CPU-only stage
    assert {role: r["replicas"] for role, r in replicas.items()} == ({"Master": 1, "Worker": nodes - 1} if nodes > 1 else {"Master": 1})
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        [container] = pod["containers"]
        assert container["image"] == IMAGE and container["command"] == COMMAND
        assert container["resources"]["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
        assert container["resources"]["requests"] == container["resources"]["limits"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM}} in pod["volumes"]
        assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
        assert {"name": "scratch", "emptyDir": {"sizeLimit": SCRATCH[example]}} in pod["volumes"]
        token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
        assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": False}}}, "from a Secret"
        api_key = [e for e in container["env"] if e["name"] == ENDPOINT_API_KEY_ENV]
        if name == "teacher-rollouts":  # the R1 endpoint's key, from its Secret, never in the spec
            assert api_key == [{"name": ENDPOINT_API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "r1-teacher", "key": "api-key"}}}]
        else:
            assert api_key == []


@pytest.mark.parametrize(("example", "name"), FULL_SCALE_CASES)
def test_full_scale_trainjob_shape(example, name):
    """The same stage as a TrainJob: nodes and processes per node in `trainer`, the same container, env and volumes
    through gradatim-torch and one runtime patch."""
    pipe, stage, _ = full_scale_stage(example, name)
    nodes, gpus = FULL_SCALE[example][name]
    job = render_trainjob(stage, pipe, key="k", attempt=1, configmap="c", suspend=True)
    trainer = job["spec"]["trainer"]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    assert trainer["numNodes"] == nodes and trainer["numProcPerNode"] == max(gpus, 1)
    assert trainer["image"] == IMAGE and trainer["command"] == COMMAND
    assert trainer["resourcesPerNode"]["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    [patch] = job["spec"]["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM}} in pod["volumes"]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": SCRATCH[example]}} in pod["volumes"]
    assert {"name": "stage-spec", "configMap": {"name": "c"}} in pod["volumes"]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [{"name": "stage-spec", "mountPath": "/etc/gradatim", "readOnly": True}]}]
    token = next(e for e in trainer["env"] if e["name"] == "HF_TOKEN")
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": False}}}


def test_a_priority_class_cannot_ride_on_a_trainjob():
    """phi4-mini-reasoning sets a PriorityClass; Trainer v2.3's runtime patches cannot set one, so asking for the
    TrainJob backend says so and names the fields, instead of dropping the priority silently."""
    from datetime import datetime, timezone

    from gradatim.planner.stage import Observed, plan_stage

    pipe, stage, upstream = full_scale_stage("phi4-mini-reasoning", "teacher-rollouts")
    pipe = pipe.model_copy(update={"spec": pipe.spec.model_copy(update={"backend": "trainjob"})})
    plan = plan_stage(Observed(stage, pipe, {stage.metadata["name"]: stage}, None, None, None, datetime.now(timezone.utc),
                               installed_backends=frozenset({"pytorchjob", "trainjob"})))
    assert plan.status.phase == "Invalid" and "priorityClassName" in plan.message and "spec.backend: pytorchjob" in plan.message
    auto = pipe.model_copy(update={"spec": pipe.spec.model_copy(update={"backend": "auto"})})
    plan = plan_stage(Observed(stage, auto, {stage.metadata["name"]: stage}, None, None, None, datetime.now(timezone.utc),
                               installed_backends=frozenset({"pytorchjob", "trainjob"})))
    assert plan.status.backend == "pytorchjob", "auto picks PyTorchJob where its CRD is installed"


@pytest.mark.parametrize(("example", "name"), FULL_SCALE_CASES)
def test_full_scale_hyperparameters_follow_the_reports(example, name):
    """What the trainer reads (the rendered stage spec, parsed as the type's block) carries the reports' numbers."""
    pipe, stage, upstream = full_scale_stage(example, name)
    starts_from, expected = RECIPES[example][name]
    model = stage.spec.inputs.model
    origin = model and (f"hf:{model.hf}" if model.hf else f"endpoint:{model.endpoint.model}" if model.endpoint else f"stage:{model.from_stage}")
    assert origin == starts_from
    resolved = ResolvedStageSpec.model_validate(render_stage_spec(stage, pipe, key="k", attempt=1, upstream=upstream))
    params = resolved.typed_params()
    assert {key: dotted(params, key) for key in expected} == expected



# The eval sets as their publishers lay them out (tests/test_datasets.py loads test-made copies through the same code).
PUBLISHED_EVAL_SETS = {
    "math500": {"hf": "HuggingFaceH4/MATH-500", "split": "test", "fields": {"prompt": "problem", "id": "unique_id"}},
    "aime24": {"hf": "HuggingFaceH4/aime_2024", "split": "train", "fields": {"prompt": "problem"}},
    "aime25": {"hf": "MathArena/aime_2025", "split": "train", "fields": {"prompt": "problem", "id": "problem_idx"}},
    "gpqa-diamond": {"hf": "Idavidrein/gpqa", "config": "gpqa_diamond", "split": "train",
                     "fields": {"prompt": "Question", "answer": "Correct Answer", "id": "Record ID",
                                "choices": ["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]}},
    "omnimath": {"hf": "KbsdJames/Omni-MATH", "split": "test", "fields": {"prompt": "problem"}},
}


@pytest.mark.parametrize(("example", "name"), FULL_SCALE_CASES)
def test_full_scale_eval_sets_are_named_as_published(example, name):
    pipe, stage, upstream = full_scale_stage(example, name)
    resolved = ResolvedStageSpec.model_validate(render_stage_spec(stage, pipe, key="k", attempt=1, upstream=upstream))
    for source in resolved.inputs.eval_data:
        if source.name in PUBLISHED_EVAL_SETS:
            assert source.to_wire() == {"name": source.name, **PUBLISHED_EVAL_SETS[source.name]}, source.name
