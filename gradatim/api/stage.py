"""TrainingStage: one step of a recipe, run as one Kubeflow PyTorchJob per attempt."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from gradatim.api.base import (
    DNS1123_LABEL,
    MAX_PIPELINE_NAME,
    MAX_STAGE_NAME,
    Condition,
    KeyRef,
    Model,
    Rule,
    conditions_field,
    rules,
)
from gradatim.api.common import STAGE_TYPES, TRAINING_TYPES, Inputs, QualityGate, Resources, StageType
from gradatim.api.hyperparams import (
    DecontaminateParams,
    DPOParams,
    EvalParams,
    GenerateParams,
    GRPOParams,
    MidtrainParams,
    SFTParams,
)

StagePhase = Literal["Pending", "Blocked", "Running", "Retrying", "Suspended", "Succeeded", "Cached", "Failed", "Invalid"]
Backend = Literal["auto", "pytorchjob", "trainjob"]
"""`pytorchjob`: a Kubeflow training-operator v1 PyTorchJob; `trainjob`: a Kubeflow Trainer v2 TrainJob on
Gradatim's ClusterTrainingRuntime; `auto`: PyTorchJob where its CRD is installed, else TrainJob."""
STAGE_PHASES: tuple[str, ...] = get_args(StagePhase)

# The headline metrics each type writes to results.json; a quality gate may only name one of these.
GATE_METRICS: dict[StageType, tuple[str, ...]] = {
    "generate": ("acceptance_rate", "pass_rate_mean", "kept_traces", "kept_prompts", "pairs"),
    "decontaminate": ("removed_fraction", "removed", "kept"),
    "midtrain": ("train_loss", "eval_loss"),
    "sft": ("train_loss", "eval_loss"),
    "dpo": ("train_loss", "reward_margin", "reward_accuracy"),
    "grpo": ("train_loss", "reward_mean", "correctness_mean", "completion_length_mean"),
    "eval": ("pass@1", "pass@1/<eval set name>", "completion_length_mean"),
}
RATIO_METRICS = ("acceptance_rate", "pass_rate_mean", "removed_fraction", "reward_accuracy", "correctness_mean")


class EnvVarSource(Model, json_schema_extra=rules(Rule("[has(self.secretKeyRef), has(self.configMapKeyRef)].filter(x, x).size() == 1", "set exactly one of secretKeyRef or configMapKeyRef"))):
    """Where a variable's value comes from: a key of a Secret or of a ConfigMap, read when the pod starts."""

    secret_key_ref: KeyRef | None = None
    """A key of a Secret: how credentials (HF_TOKEN, API keys) reach the trainer without appearing in the spec."""
    config_map_key_ref: KeyRef | None = None
    """A key of a ConfigMap."""


# Names that hold credentials: their values must come from a Secret, never sit in the spec in plain text.
CREDENTIAL_NAME = "(?i)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|CREDENTIAL)"


class EnvVar(
    Model,
    json_schema_extra=rules(
        Rule("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both", ".valueFrom", "FieldValueForbidden"),
        Rule(f"!has(self.value) || self.value == '' || !self.name.matches('{CREDENTIAL_NAME}')",
             "this variable holds a credential: keep it in a Secret and use valueFrom.secretKeyRef instead of value", ".value", "FieldValueForbidden"),
    ),
):
    """An environment variable for the trainer container (e.g. NCCL tuning, or HF_TOKEN from a Secret)."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str | None = Field(default=None, max_length=32768)
    """Variable value, in plain text; credentials must use `valueFrom`."""
    value_from: EnvVarSource | None = None
    """Read the value from a Secret or ConfigMap key when the pod starts (`HF_TOKEN` for gated Hub repositories)."""

    def to_container(self) -> dict[str, Any]:
        """As a container's env entry."""
        if self.value_from is None:
            return {"name": self.name, "value": self.value or ""}
        return {"name": self.name, "valueFrom": self.value_from.to_wire()}


def _type_block_rules() -> list[Rule]:
    out = []
    for t in STAGE_TYPES:
        out.append(Rule(f"self.type != '{t}' || has(self.{t})", f"{t} settings are required when type is {t} (write `{t}: {{}}` for the defaults)", f".{t}", "FieldValueRequired"))
        out.append(Rule(f"!has(self.{t}) || self.type == '{t}'", f"{t} settings are only allowed when type is {t}", f".{t}", "FieldValueForbidden"))
    return out


def _gate_rule() -> Rule:
    exact = " || ".join(
        f"(self.type == '{t}' && self.qualityGate.metric in {json.dumps([m for m in ms if '<' not in m])})" for t, ms in GATE_METRICS.items()
    )
    per_set = "(self.type == 'eval' && self.qualityGate.metric.matches('^pass@1/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$'))"
    allowed = "{" + ", ".join(f"'{t}': '{', '.join(ms)}'" for t, ms in GATE_METRICS.items()) + "}"
    return Rule(
        f"!has(self.qualityGate) || {exact} || {per_set}",
        "qualityGate.metric must be a headline metric of the stage's type",
        ".qualityGate.metric",
        "FieldValueInvalid",
        message_expression=f"'qualityGate.metric must be one of the metrics a ' + self.type + ' stage reports: ' + {allowed}[self.type]",
    )


def _ratio_gate_rule() -> Rule:
    ratio = " || ".join([f"self.qualityGate.metric == '{m}'" for m in RATIO_METRICS] + ["self.qualityGate.metric.startsWith('pass@1')"])
    return Rule(
        f"!has(self.qualityGate) || !({ratio}) || (self.qualityGate.threshold >= 0.0 && self.qualityGate.threshold <= 1.0)",
        "this metric is a ratio; qualityGate.threshold must be between 0 and 1",
        ".qualityGate.threshold",
    )


def _from_stage_rules() -> list[Rule]:
    listed = "is listed in dependsOn"
    return [
        Rule("!has(self.inputs.model) || !has(self.inputs.model.fromStage) || self.inputs.model.fromStage in self.dependsOn",
             f"inputs.model.fromStage must name a stage that {listed}", ".inputs.model.fromStage"),
        Rule("self.inputs.data.all(d, !has(d.fromStage) || d.fromStage in self.dependsOn)",
             f"every inputs.data[].fromStage must name a stage that {listed}", ".inputs.data"),
        Rule("self.inputs.evalData.all(d, !has(d.fromStage) || d.fromStage in self.dependsOn)",
             f"every inputs.evalData[].fromStage must name a stage that {listed}", ".inputs.evalData"),
    ]


def _input_rules() -> list[Rule]:
    return [
        Rule("self.type == 'decontaminate' || has(self.inputs.model)",
             "inputs.model is required: the policy to train, the teacher for generate, the model under test for eval", ".inputs.model", "FieldValueRequired"),
        Rule("self.type != 'decontaminate' || !has(self.inputs.model)",
             "decontaminate reads no model; remove inputs.model", ".inputs.model", "FieldValueForbidden"),
        Rule("self.type == 'eval' || self.inputs.data.size() > 0",
             "inputs.data is required for this type (training data, prompts or preference pairs)", ".inputs.data", "FieldValueRequired"),
        Rule("self.type != 'eval' || self.inputs.data.size() == 0",
             "eval scores inputs.evalData; move the eval sets there", ".inputs.data", "FieldValueForbidden"),
        Rule("!(self.type in ['eval', 'decontaminate']) || self.inputs.evalData.size() > 0",
             "inputs.evalData is required for eval and decontaminate", ".inputs.evalData", "FieldValueRequired"),
        Rule("!has(self.inputs.model) || !has(self.inputs.model.endpoint) || self.type == 'generate'",
             "an endpoint model can only generate (a teacher); to train or eval a model, give its weights with hf, uri or fromStage",
             ".inputs.model.endpoint", "FieldValueForbidden"),
        Rule("self.type in " + json.dumps(list(TRAINING_TYPES)) + " || !has(self.checkpointInterval)",
             "checkpointInterval is only used by training types (midtrain, sft, dpo, grpo)", ".checkpointInterval", "FieldValueForbidden"),
    ]


class TrainingStageSpec(Model, json_schema_extra=rules(*_type_block_rules(), *_input_rules(), *_from_stage_rules(), _gate_rule(), _ratio_gate_rule())):
    """Desired state of a TrainingStage."""

    pipeline: str = Field(
        min_length=1, max_length=MAX_PIPELINE_NAME, pattern=DNS1123_LABEL,
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "pipeline is immutable; create a new stage instead"}]},
    )
    """Name of the TrainingPipeline (same namespace) this stage belongs to; it supplies image, storage and defaults."""
    type: StageType = Field(json_schema_extra={"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "type is immutable; create a new stage instead"}]})
    """What the stage does: `generate` (teacher rollouts + rejection sampling), `decontaminate`, `midtrain` (packed), `sft` (unpacked), `dpo` (rollout DPO), `grpo` (RL with verifiable rewards) or `eval` (pass@1 over k samples)."""
    depends_on: list[Annotated[str, Field(min_length=1, max_length=MAX_STAGE_NAME, pattern=DNS1123_LABEL)]] = Field(
        default_factory=list, max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Stages of the same pipeline that must succeed (and pass their gates) before this one starts."""
    inputs: Inputs = Field(default_factory=Inputs)
    """The model and data the stage reads."""
    generate: GenerateParams | None = None
    """Settings for `type: generate`."""
    decontaminate: DecontaminateParams | None = None
    """Settings for `type: decontaminate`."""
    midtrain: MidtrainParams | None = None
    """Settings for `type: midtrain`."""
    sft: SFTParams | None = None
    """Settings for `type: sft`."""
    dpo: DPOParams | None = None
    """Settings for `type: dpo`."""
    grpo: GRPOParams | None = None
    """Settings for `type: grpo`."""
    eval: EvalParams | None = None
    """Settings for `type: eval`."""
    resources: Resources = Field(default_factory=Resources)
    """Compute per node; fields left out come from the pipeline."""
    image: str | None = Field(default=None, min_length=1, max_length=1024)
    """Trainer image for this stage; left out: the pipeline's."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    """Extra environment for the trainer container, added to the pipeline's."""
    checkpoint_interval: int | None = Field(default=None, ge=1, le=100000000)
    """Save a resumable checkpoint to S3 every this many optimiser steps (training types). Left out: every 10% of the run."""
    checkpoints_to_keep: int = Field(default=2, ge=1, le=1000)
    """How many of the newest complete checkpoints stay in S3 (training types); older ones are deleted once a newer
    one is complete."""
    process_group_timeout_seconds: int = Field(default=1800, ge=60, le=86400)
    """How long a process waits for the others in a collective (NCCL/gloo) before the job fails; long enough for
    the slowest rank's checkpoint write or evaluation pass."""
    retry_limit: int = Field(default=2, ge=0, le=100)
    """How many times a failed job is retried (each a new attempt resuming from the last checkpoint)."""
    retry_backoff_seconds: int = Field(default=30, ge=0, le=86400)
    """Wait before the first retry; doubles each attempt, up to an hour."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail an attempt that runs longer than this, counted from its job's start (time queued for admission does not
    count); the operator stops the job and retries as for any failure, on both backends."""
    quality_gate: QualityGate | None = None
    """A check on a headline metric that must pass before downstream stages start."""
    suspend: bool = False
    """Stop starting jobs for this stage and suspend a running one; set back to false to resume."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=DNS1123_LABEL)
    """Kueue LocalQueue for this stage's job; left out: the pipeline's."""
    priority_class_name: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """PriorityClass for this stage's pods; left out: the pipeline's."""
    backend: Backend | None = None
    """The Kubeflow job this stage runs as (`pytorchjob`, `trainjob` or `auto`); left out: the pipeline's."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Random seed for data order, sampling and initialisation."""


class Progress(Model):
    """How far the current attempt has got, from the trainer's reports."""

    step: int = Field(default=0, ge=0)
    """Steps done (optimiser steps, or prompts for generate and eval)."""
    total_steps: int = Field(default=0, ge=0)
    """Steps planned."""
    percent: int = Field(default=0, ge=0, le=100)
    """step / totalSteps, in percent."""
    eta_seconds: int | None = Field(default=None, ge=0)
    """Estimated seconds left."""
    text: str = Field(default="", max_length=64)
    """`step/total` for `kubectl get`, after the activity when the trainer names one (`training tiny-teacher 40/1800`)."""
    loss: float | None = None
    """The last reported training loss of the running attempt."""
    reward_mean: float | None = None
    """grpo: the last reported mean reward of the running attempt."""


class GateResult(Model):
    """The outcome of the quality gate."""

    passed: bool
    """Whether the metric met the threshold."""
    value: float | None = None
    """The metric's value; left out when the results did not report it."""
    message: str = Field(default="", max_length=1024)
    """What was compared."""


class TrainingStageStatus(Model):
    """Observed state of a TrainingStage, rebuilt from the world on every reconcile."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The `metadata.generation` this status describes."""
    phase: StagePhase | None = None
    """For humans: Pending, Blocked, Running, Retrying, Suspended, Succeeded, Cached, Failed or Invalid."""
    conditions: list[Condition] = conditions_field("`Ready`, `Reconciling` and `Stalled` (kstatus), plus `Succeeded` and `Blocked`.")
    attempt: int = Field(default=0, ge=0)
    """Number of the latest job, from 1, counted over the stage's life; 0 before the first job."""
    retries: int = Field(default=0, ge=0)
    """Failed attempts of the current run (since the cache key last changed)."""
    job_name: str | None = Field(default=None, max_length=63)
    """Name of the current attempt's job (a PyTorchJob or a TrainJob, as `backend` says)."""
    backend: Literal["pytorchjob", "trainjob"] | None = None
    """The kind of the current attempt's job: `pytorchjob` (Kubeflow training-operator v1) or `trainjob`
    (Kubeflow Trainer v2)."""
    cache_key: str | None = Field(default=None, max_length=128)
    """Content key of the stage: its spec with inputs resolved to the keys of the stages they come from."""
    progress: Progress | None = None
    """Step, total steps and ETA of the current attempt."""
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    """Headline metrics from the trainer's results.json (loss, pass@1, reward, ...)."""
    outputs: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Output name → URI, e.g. `model: s3://bucket/ns/pipe/stage/<key>/model/`."""
    checkpoint_uri: str | None = Field(default=None, max_length=2048)
    """Where the last resumable checkpoint is."""
    gate: GateResult | None = None
    """Outcome of the quality gate, once evaluated."""
    start_time: datetime | None = None
    """When the first attempt started."""
    completion_time: datetime | None = None
    """When the stage succeeded or failed for good."""
    next_retry_time: datetime | None = None
    """When the next attempt starts, while Retrying."""


class TrainingStage(
    Model,
    json_schema_extra=rules(
        Rule("!(self.metadata.name in self.spec.dependsOn)", "a stage cannot depend on itself; remove its own name from spec.dependsOn", ".spec.dependsOn"),
    ),
):
    """One step of a post-training recipe (generate, decontaminate, midtrain, sft, dpo, grpo or eval), run as a Kubeflow PyTorchJob."""

    api_version: Literal["gradatim.io/v1alpha1"] = "gradatim.io/v1alpha1"
    kind: Literal["TrainingStage"] = "TrainingStage"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TrainingStageSpec
    status: TrainingStageStatus | None = None

    def params(self) -> Any:
        """The hyperparameter block of this stage's type."""
        return getattr(self.spec, self.spec.type)
