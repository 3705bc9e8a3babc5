"""TrainingPipeline: shared defaults for a recipe's stages, and their aggregate status."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from gradatim.api.base import DNS1123_LABEL, Condition, Model, conditions_field
from gradatim.api.common import PipelineResources, S3Storage
from gradatim.api.stage import Backend, EnvVar, StagePhase

PipelinePhase = Literal["Pending", "Running", "Blocked", "Suspended", "Succeeded", "Failed", "Invalid"]

DEFAULT_IMAGE = "ghcr.io/gradatim/trainer:0.1.0"


class TrainingPipelineSpec(Model):
    """Desired state of a TrainingPipeline: what its stages share."""

    image: str = Field(default=DEFAULT_IMAGE, min_length=1, max_length=1024)
    """Trainer image every stage runs (`torchrun -m gradatim.trainer`), unless a stage sets its own."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Pull policy for the trainer image."""
    storage: S3Storage
    """S3 bucket, prefix and credentials where stages hand their models and data to each other."""
    resources: PipelineResources = Field(default_factory=PipelineResources)
    """Default compute per stage; a stage overrides any field it sets."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    """Environment for every trainer container (e.g. `NCCL_SOCKET_IFNAME`)."""
    service_account_name: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """ServiceAccount the trainer pods run as."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=DNS1123_LABEL)
    """Kueue LocalQueue the stages' jobs are submitted to (label `kueue.x-k8s.io/queue-name`)."""
    priority_class_name: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """PriorityClass of the trainer pods."""
    suspend: bool = False
    """Stop starting jobs and suspend running ones in every stage; set back to false to resume."""
    backend: Backend = "auto"
    """The Kubeflow job each stage runs as: `pytorchjob` (training-operator v1), `trainjob` (Trainer v2, on
    Gradatim's ClusterTrainingRuntime `gradatim-torch`) or `auto` (PyTorchJob where its CRD is installed, else
    TrainJob). A stage may set its own."""


STAGE_SUMMARY_LIMIT = 256  # summaries in a pipeline's status: a status object must stay well under etcd's 1.5 MiB


class StageSummary(Model):
    """One stage as the pipeline sees it."""

    name: str = Field(max_length=63)
    """Stage name."""
    type: str = Field(max_length=32)
    """Stage type."""
    phase: StagePhase | None = None
    """Stage phase."""
    attempt: int = Field(default=0, ge=0)
    """Current attempt."""
    message: str = Field(default="", max_length=1024)
    """Why, when blocked or failed."""


class TrainingPipelineStatus(Model):
    """Observed state of a TrainingPipeline, aggregated from its stages."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The `metadata.generation` this status describes."""
    phase: PipelinePhase | None = None
    """For humans: Pending, Running, Blocked, Suspended, Succeeded, Failed or Invalid."""
    conditions: list[Condition] = conditions_field("`Ready`, `Reconciling` and `Stalled` (kstatus), plus `Succeeded`.")
    progress: str = Field(default="", max_length=32)
    """Stages done out of all, e.g. `3/7`."""
    stages_total: int = Field(default=0, ge=0)
    """Number of stages that name this pipeline."""
    stages_done: int = Field(default=0, ge=0)
    """Stages Succeeded or Cached."""
    current_stage: str = Field(default="", max_length=1024)
    """The running stage (comma-separated when several run at once)."""
    stages: list[StageSummary] = Field(default_factory=list, max_length=STAGE_SUMMARY_LIMIT)
    """The stages in dependency order: every stage up to 256; beyond that the 256 that need attention most (failed,
    blocked, running, waiting, then done), and `stagesNotListed` says how many were left out. The counts are exact."""
    stages_not_listed: int = Field(default=0, ge=0)
    """Stages left out of `stages` (a pipeline of more than 256); `kubectl get tstage -l` lists them all."""
    start_time: datetime | None = None
    """When the first stage started."""
    completion_time: datetime | None = None
    """When the last stage finished."""


class TrainingPipeline(Model):
    """A multi-stage post-training recipe: shared image, S3 storage and defaults for its TrainingStages, and their aggregate status."""

    api_version: Literal["gradatim.io/v1alpha1"] = "gradatim.io/v1alpha1"
    kind: Literal["TrainingPipeline"] = "TrainingPipeline"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TrainingPipelineSpec
    status: TrainingPipelineStatus | None = None
