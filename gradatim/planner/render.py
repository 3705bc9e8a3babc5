"""Pure builders for a stage attempt's children: the resolved spec, its ConfigMap and the PyTorchJob."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gradatim.api.base import API_VERSION
from gradatim.api.common import Resources, Source
from gradatim.api.pipeline import TrainingPipeline
from gradatim.api.resolved import ENDPOINT_API_KEY_ENV, OutputLocation, ProducedBy, ResolvedInputs, ResolvedSource, ResolvedStageSpec, StorageLocation
from gradatim.api.runfiles import TERMINATION_LOG
from gradatim.api.stage import TrainingStage

LABEL_PREFIX = "gradatim.io/"
PIPELINE_LABEL = LABEL_PREFIX + "pipeline"
STAGE_LABEL = LABEL_PREFIX + "stage"
TYPE_LABEL = LABEL_PREFIX + "type"
ATTEMPT_LABEL = LABEL_PREFIX + "attempt"
KEY_LABEL = LABEL_PREFIX + "cache-key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "gradatim"}
TRAINER_POD = {"app.kubernetes.io/name": "gradatim-trainer"}  # what the PodMonitor selects; also its job label
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUBEFLOW_JOB_LABEL = "training.kubeflow.org/job-name"  # Kubeflow puts it on every pod of a job

SPEC_DIR = "/etc/gradatim"
SPEC_FILE = "stage.json"
# Node-local scratch (an emptyDir): inputs are downloaded and tokenised once per pod, checkpoints staged.
SCRATCH_DIR = "/scratch"
METRICS_PORT = 9090
# The main output of each type, for `fromStage` inputs that name no `output`.
MAIN_OUTPUT = {"generate": "traces", "decontaminate": "data", "midtrain": "model", "sft": "model", "dpo": "model", "grpo": "model", "eval": "results"}
# Every output each type writes (gradatim/trainer/stages/*.py): `model` is a model, the rest are datasets.
OUTPUTS = {"generate": ("traces", "pairs", "prompts", "stats", "rollouts"), "decontaminate": ("data", "removed"), "midtrain": ("model",), "sft": ("model",),
           "dpo": ("model",), "grpo": ("model",), "eval": ("results",)}
MODEL_OUTPUT = "model"


def job_name(stage: str, attempt: int) -> str:
    return f"{stage}-a{attempt}"


def output_uri(pipeline: TrainingPipeline, namespace: str, pipeline_name: str, stage: str, key: str) -> str:
    storage = pipeline.spec.storage
    return f"s3://{storage.bucket}/{storage.prefix}{namespace}/{pipeline_name}/{stage}/{key}/"


def stage_output_uri(pipeline: TrainingPipeline, namespace: str, stage: TrainingStage, key: str) -> str:
    """Where the stage's run under cache key `key` writes its outputs, results.json and progress.json."""
    return output_uri(pipeline, namespace, stage.spec.pipeline, stage.metadata["name"], key)


def effective_resources(stage: TrainingStage, pipeline: TrainingPipeline) -> dict[str, Any]:
    """The pipeline's default resources with every field the stage sets laid over them."""
    merged = pipeline.spec.resources.model_dump()
    merged.update({k: v for k, v in stage.spec.resources.model_dump().items() if v is not None})
    return Resources.model_validate(merged).model_dump()


@dataclass(frozen=True)
class Upstream:
    """What a finished upstream stage offers: its type (for its main output) and its output URIs."""

    type: str
    outputs: Mapping[str, str]

    def uri(self, output: str | None) -> str | None:
        return self.outputs.get(output or MAIN_OUTPUT[self.type])


def _sources(stage: TrainingStage) -> list[Source]:
    inputs = stage.spec.inputs
    return [s for s in [inputs.model, *inputs.data, *inputs.eval_data] if s is not None]


def _slots(stage: TrainingStage) -> list[tuple[str, Source, bool]]:
    """(field, source, wants a model) for every input of the stage."""
    inputs = stage.spec.inputs
    slots = [("spec.inputs.model", inputs.model, True)] if inputs.model is not None else []
    slots += [(f"spec.inputs.data[{i}]", s, False) for i, s in enumerate(inputs.data)]
    slots += [(f"spec.inputs.evalData[{i}]", s, False) for i, s in enumerate(inputs.eval_data)]
    return slots


def unfit_inputs(stage: TrainingStage, types: Mapping[str, str]) -> list[str]:
    """`fromStage` inputs that name an output the upstream stage's type never writes, or a model where a dataset
    belongs (and the reverse), each naming the field and what would fit; `types` maps stage names to types."""
    problems = []
    for field, source, wants_model in _slots(stage):
        up = types.get(source.from_stage or "")
        if up is None:
            continue
        output = source.output or MAIN_OUTPUT[up]
        writes = f"stage {source.from_stage} is a {up} stage, which writes {', '.join(OUTPUTS[up])}"
        where = f"{field}.output" if source.output else f"{field}.fromStage"
        if output not in OUTPUTS[up]:
            problems.append(f"{where}: {writes}; it has no output {output}")
        elif wants_model and output != MODEL_OUTPUT:
            problems.append(f"{where}: {writes}; a model comes from midtrain, sft, dpo or grpo")
        elif not wants_model and output == MODEL_OUTPUT:
            problems.append(f"{where}: {writes}, a model; a dataset comes from generate (traces, pairs, prompts, stats), "
                            "decontaminate (data, removed) or eval (results)")
    return problems


def missing_outputs(stage: TrainingStage, upstream: Mapping[str, Upstream]) -> list[str]:
    """`fromStage` inputs whose output the upstream stage did not report, as `stage/output`."""
    missing = []
    for source in _sources(stage):
        if source.from_stage is not None:
            up = upstream.get(source.from_stage)
            if up is None or up.uri(source.output) is None:
                kind = source.output or (MAIN_OUTPUT[up.type] if up else "main output")
                missing.append(f"{source.from_stage}/{kind}")
    return missing


def resolve_source(source: Source, upstream: Mapping[str, Upstream]) -> ResolvedSource:
    """A source with `fromStage` replaced by the URI of that stage's output."""
    shape = {k: getattr(source, k) for k in ("name", "config", "split", "fields") if getattr(source, k, None) is not None}  # datasets only
    if source.from_stage is None:
        return ResolvedSource(hf=source.hf, revision=source.revision, uri=source.uri, builtin=source.builtin,
                              endpoint=getattr(source, "endpoint", None), **shape)
    up = upstream[source.from_stage]
    output = source.output or MAIN_OUTPUT[up.type]
    return ResolvedSource(uri=up.uri(source.output), produced_by=ProducedBy(stage=source.from_stage, output=output), **shape)


def render_stage_spec(
    stage: TrainingStage, pipeline: TrainingPipeline, *, key: str, attempt: int, upstream: Mapping[str, Upstream]
) -> dict[str, Any]:
    """The resolved stage spec the trainer reads: inputs as concrete URIs, where to write, how to resume."""
    meta, spec = stage.metadata, stage.spec
    out = stage_output_uri(pipeline, meta["namespace"], stage, key)
    resolved = ResolvedStageSpec(
        namespace=meta["namespace"],
        pipeline=spec.pipeline,
        stage=meta["name"],
        type=spec.type,
        attempt=attempt,
        cache_key=key,
        seed=spec.seed,
        params=stage.params().to_wire(),
        inputs=ResolvedInputs(
            model=resolve_source(spec.inputs.model, upstream) if spec.inputs.model else None,
            data=[resolve_source(d, upstream) for d in spec.inputs.data],
            eval_data=[resolve_source(d, upstream) for d in spec.inputs.eval_data],
        ),
        output=OutputLocation(uri=out, checkpoint_uri=out + "checkpoints/", checkpoint_interval=spec.checkpoint_interval,
                              checkpoints_to_keep=spec.checkpoints_to_keep),
        storage=StorageLocation.model_validate(pipeline.spec.storage.model_dump(exclude={"secret_ref"})),
        metrics_port=METRICS_PORT,
        process_group_timeout_seconds=spec.process_group_timeout_seconds,
    )
    return resolved.to_wire()


def owner_reference(stage: TrainingStage) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingStage",
        "name": stage.metadata["name"],
        "uid": stage.metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(stage: TrainingStage, attempt: int, key: str) -> dict[str, str]:
    """Our labels only: never the parent's GitOps tracking labels, or Argo CD would prune the children."""
    return {
        **MANAGED_BY,
        PIPELINE_LABEL: stage.spec.pipeline,
        STAGE_LABEL: stage.metadata["name"],
        TYPE_LABEL: stage.spec.type,
        ATTEMPT_LABEL: str(attempt),
        KEY_LABEL: key,
    }


def render_configmap(stage: TrainingStage, resolved: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{job_name(stage.metadata['name'], resolved['attempt'])}-spec",
            "namespace": stage.metadata["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(stage)],
        },
        "data": {SPEC_FILE: json.dumps(resolved, indent=2, sort_keys=True)},
    }


def _env(stage: TrainingStage, pipeline: TrainingPipeline, attempt: int) -> list[dict[str, Any]]:
    storage = pipeline.spec.storage
    secret = storage.secret_ref
    env: list[dict[str, Any]] = [
        {"name": "GRADATIM_NAMESPACE", "value": stage.metadata["namespace"]},
        {"name": "GRADATIM_PIPELINE", "value": stage.spec.pipeline},
        {"name": "GRADATIM_STAGE", "value": stage.metadata["name"]},
        {"name": "GRADATIM_STAGE_TYPE", "value": stage.spec.type},
        {"name": "GRADATIM_ATTEMPT", "value": str(attempt)},
        # The container's CPU limit, for the trainer's thread count: torch sizes its pool by the node's cores, and
        # more threads than the limit allows spin against the CFS quota (and each other) far slower than fewer.
        {"name": "GRADATIM_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}},
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.access_key_id_key}}},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.secret_access_key_key}}},
        {"name": "AWS_DEFAULT_REGION", "value": storage.region},
        # Surface NCCL hangs as errors so a stuck rank fails the attempt instead of holding the GPUs.
        {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
        {"name": "NCCL_DEBUG", "value": "WARN"},
    ]
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    else:  # an endpoint kept in the Secret (e.g. an in-cluster store) is used when present
        env.append({"name": "AWS_ENDPOINT_URL", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": "AWS_ENDPOINT_URL", "optional": True}}})
    endpoint = stage.spec.inputs.model.endpoint if stage.spec.inputs.model is not None else None
    if endpoint is not None and endpoint.api_key_secret_ref is not None:
        ref = endpoint.api_key_secret_ref
        env.append({"name": ENDPOINT_API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key, **({"optional": True} if ref.optional else {})}}})
    overrides = {e.name: e.to_container() for e in [*pipeline.spec.env, *stage.spec.env]}  # the stage's win
    env = [e for e in env if e["name"] not in overrides]
    env.extend(overrides.values())
    return env


def _limits(resources: dict[str, Any]) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": str(resources["cpu"]), "memory": str(resources["memory"])}
    if resources["gpus_per_node"] > 0:
        limits[resources["gpu_resource_name"]] = str(resources["gpus_per_node"])
    return limits


def _pod_labels(stage: TrainingStage, attempt: int) -> dict[str, str]:
    return {**MANAGED_BY, **TRAINER_POD, PIPELINE_LABEL: stage.spec.pipeline, STAGE_LABEL: stage.metadata["name"], TYPE_LABEL: stage.spec.type,
            ATTEMPT_LABEL: str(attempt)}


TRAINER_COMMAND = ["torchrun", "-m", "gradatim.trainer", "--spec", f"{SPEC_DIR}/{SPEC_FILE}", "--workdir", SCRATCH_DIR]
SPEC_MOUNT = {"name": "stage-spec", "mountPath": SPEC_DIR, "readOnly": True}


def _replica(stage: TrainingStage, pipeline: TrainingPipeline, resources: dict[str, Any], configmap: str, attempt: int, replicas: int) -> dict[str, Any]:
    limits = _limits(resources)
    pod_spec: dict[str, Any] = {
        # No restartPolicy here: Kubeflow sets the pod's from the replica's (Never), and one set in both places
        # is where training-operator v1.9 has been seen to re-create a failed attempt's pod.
        "containers": [
            {
                "name": "pytorch",
                "image": stage.spec.image or pipeline.spec.image,
                "imagePullPolicy": pipeline.spec.image_pull_policy,
                "command": TRAINER_COMMAND,
                "env": _env(stage, pipeline, attempt),
                "ports": [{"name": "pytorchjob-port", "containerPort": 23456}, {"name": "metrics", "containerPort": METRICS_PORT}],
                "resources": {"requests": dict(limits), "limits": limits},
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, SPEC_MOUNT, {"name": "scratch", "mountPath": SCRATCH_DIR}],
                # The trainer writes its one-line TrainerError here; the log's tail stands in when it could not.
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": _volumes(resources, configmap),
    }
    priority = stage.spec.priority_class_name or pipeline.spec.priority_class_name
    if priority:
        pod_spec["priorityClassName"] = priority
    if pipeline.spec.service_account_name:
        pod_spec["serviceAccountName"] = pipeline.spec.service_account_name
    return {"replicas": replicas, "restartPolicy": "Never", "template": {"metadata": {"labels": _pod_labels(stage, attempt)}, "spec": pod_spec}}


def _volumes(resources: dict[str, Any], configmap: str) -> list[dict[str, Any]]:
    return [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(resources["shm_size"])}},
        {"name": "stage-spec", "configMap": {"name": configmap}},
        {"name": "scratch", "emptyDir": {"sizeLimit": str(resources["scratch_size"])}},
    ]


def render_pytorchjob(
    stage: TrainingStage, pipeline: TrainingPipeline, *, key: str, attempt: int, configmap: str, suspend: bool
) -> dict[str, Any]:
    """One attempt as a Kubeflow PyTorchJob: a Master and nodes-1 Workers, each `torchrun -m gradatim.trainer`.

    A failed pod fails the attempt (replica restartPolicy Never); the operator deletes the failed job and retries
    by starting a new attempt that resumes from the last checkpoint, so the whole gang restarts together. Shaped
    against the real training-operator v1.9: no `backoffLimit` (with one, it re-created a failed attempt's pod
    from a stale cache after writing Failed) and `cleanPodPolicy: Running` (a failed attempt's other pods stop;
    the failed ones stay for their logs until the job is deleted). No `activeDeadlineSeconds` either: v1.9 has no
    timer for it, so the operator enforces the stage's deadline itself, the same way for both backends.
    """
    resources = effective_resources(stage, pipeline)
    name = job_name(stage.metadata["name"], attempt)
    labels = child_labels(stage, attempt, key)
    queue = stage.spec.queue_name or pipeline.spec.queue_name
    if queue:
        labels[KUEUE_QUEUE_LABEL] = queue
    run_policy: dict[str, Any] = {"cleanPodPolicy": "Running", "suspend": suspend}
    priority = stage.spec.priority_class_name or pipeline.spec.priority_class_name
    if priority:
        run_policy["schedulingPolicy"] = {"priorityClass": priority}
    replicas = {"Master": _replica(stage, pipeline, resources, configmap, attempt, 1)}
    if resources["nodes"] > 1:
        replicas["Worker"] = _replica(stage, pipeline, resources, configmap, attempt, resources["nodes"] - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": name,
            "namespace": stage.metadata["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(stage)],
        },
        "spec": {
            "nprocPerNode": str(max(resources["gpus_per_node"], 1)),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


TRAINING_RUNTIME = "gradatim-torch"
TRAINER_GROUP = "trainer.kubeflow.org"


def render_cluster_training_runtime() -> dict[str, Any]:
    """Gradatim's ClusterTrainingRuntime for Kubeflow Trainer v2: torch distributed on one replicated job `node`,
    shaped as the PyTorchJob's pods are. What Trainer v2.3's runtimePatches cannot set per job (ports, the
    termination message, restart policy, backoff) is fixed here; the rest comes from each TrainJob."""
    container = {
        "name": "node",
        "image": "ghcr.io/gradatim/trainer:0.1.0",  # each TrainJob sets its own (trainer.image)
        "command": TRAINER_COMMAND,
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": SCRATCH_DIR}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = {"restartPolicy": "Never", "containers": [container],
           "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}, {"name": "scratch", "emptyDir": {}}]}
    return {
        "apiVersion": f"{TRAINER_GROUP}/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": TRAINING_RUNTIME, "labels": {"trainer.kubeflow.org/framework": "torch", **MANAGED_BY}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"replicatedJobs": [{
                "name": "node",
                "template": {
                    "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                    # A failed node fails the attempt (JobSet's default failurePolicy restarts nothing); the operator
                    # retries with a new attempt that resumes from the checkpoint, the whole gang together.
                    "spec": {"backoffLimit": 0, "template": {"spec": pod}},
                },
            }]}},
        },
    }


def render_trainjob(
    stage: TrainingStage, pipeline: TrainingPipeline, *, key: str, attempt: int, configmap: str, suspend: bool
) -> dict[str, Any]:
    """One attempt as a Kubeflow Trainer v2 TrainJob on `gradatim-torch`: the same container, env and volumes as
    the PyTorchJob's pods, through `trainer` and a runtime patch. Kueue admits it by `suspend` + queue label."""
    resources = effective_resources(stage, pipeline)
    limits = _limits(resources)
    labels = child_labels(stage, attempt, key)
    queue = stage.spec.queue_name or pipeline.spec.queue_name
    if queue:
        labels[KUEUE_QUEUE_LABEL] = queue
    pod_spec: dict[str, Any] = {
        "volumes": _volumes(resources, configmap),
        "containers": [{"name": "node", "volumeMounts": [SPEC_MOUNT]}],
    }
    if pipeline.spec.service_account_name:
        pod_spec["serviceAccountName"] = pipeline.spec.service_account_name
    patch = {"manager": "gradatim.io/operator", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
        "name": "node", "template": {"spec": {"template": {"metadata": {"labels": _pod_labels(stage, attempt)}, "spec": pod_spec}}}}]}}}}
    return {
        "apiVersion": f"{TRAINER_GROUP}/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": job_name(stage.metadata["name"], attempt),
            "namespace": stage.metadata["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(stage)],
        },
        "spec": {
            "runtimeRef": {"name": TRAINING_RUNTIME, "kind": "ClusterTrainingRuntime", "apiGroup": TRAINER_GROUP},
            "suspend": suspend,
            "trainer": {
                "image": stage.spec.image or pipeline.spec.image,
                "command": TRAINER_COMMAND,
                "numNodes": resources["nodes"],
                "numProcPerNode": max(resources["gpus_per_node"], 1),
                "resourcesPerNode": {"requests": dict(limits), "limits": limits},
                "env": _env(stage, pipeline, attempt),
            },
            "runtimePatches": [patch],
        },
    }


def render_job(kind: Any, stage: TrainingStage, pipeline: TrainingPipeline, *, key: str, attempt: int, configmap: str, suspend: bool) -> dict[str, Any]:
    """The attempt's job as the backend's kind (a `jobs.JobKind`)."""
    render = render_trainjob if kind.backend == "trainjob" else render_pytorchjob
    return render(stage, pipeline, key=key, attempt=attempt, configmap=configmap, suspend=suspend)


RUNTIME_MANIFEST_DIR = "manifests/trainer"


def runtime_manifests() -> dict[str, str]:
    """`manifests/trainer/`: the ClusterTrainingRuntime and its kustomization, generated by `make crds`."""
    import yaml

    header = "# Generated from gradatim/planner/render.py by `make crds`; do not edit.\n"
    runtime = f"{TRAINING_RUNTIME}.yaml"
    return {
        runtime: header + yaml.safe_dump(render_cluster_training_runtime(), sort_keys=False, width=120),
        "kustomization.yaml": header + yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                                      "resources": [runtime]}, sort_keys=False),
    }
