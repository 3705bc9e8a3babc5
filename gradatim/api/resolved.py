"""The resolved stage spec: the contract between the operator (which writes it into the job's ConfigMap) and
the trainer (which reads it). Inputs are concrete (`fromStage` replaced by URIs); outputs have a place."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from gradatim.api.base import API_VERSION, Model
from gradatim.api.common import Endpoint, Fields, StageType
from gradatim.api.hyperparams import PARAMS_BY_TYPE

ENDPOINT_API_KEY_ENV = "GRADATIM_ENDPOINT_API_KEY"  # the endpoint's API key, from its Secret, in the trainer's environment

# Seconds the trainer waits at exit for one last scrape of its metrics (0: no wait). A pod runner that knows
# its Prometheus scrapes often sets it; on a cluster, set it in a stage's `env`.
FINAL_SCRAPE_ENV = "GRADATIM_METRICS_FINAL_SCRAPE_SECONDS"


class ProducedBy(Model):
    stage: str
    output: str


class ResolvedSource(Model):
    """A model or dataset the trainer can load: exactly one of hf, uri or builtin."""

    hf: str | None = None
    revision: str | None = None
    uri: str | None = None
    builtin: str | None = None
    endpoint: Endpoint | None = None
    name: str | None = None
    config: str | None = None
    split: str = "train"
    fields: Fields | None = None
    produced_by: ProducedBy | None = None

    @property
    def hub(self) -> tuple[str, str | None]:
        """(repository, revision) of an `hf` source."""
        repo, _, at = (self.hf or "").partition("@")
        return repo, self.revision or at or None

    @property
    def label(self) -> str:
        """A short name for metrics and reports."""
        if self.name:
            return self.name
        ref = self.hf or self.uri or self.builtin or (self.endpoint.model if self.endpoint else None) or "input"
        return ref.rstrip("/").rsplit("/", 1)[-1].replace(":", "-")


class ResolvedInputs(Model):
    model: ResolvedSource | None = None
    data: list[ResolvedSource] = Field(default_factory=list)
    eval_data: list[ResolvedSource] = Field(default_factory=list)




class OutputLocation(Model):
    uri: str
    """Prefix every output of this run goes under: `<uri><output name>/`, plus the run files (gradatim.api.runfiles)."""
    checkpoint_uri: str
    """Where resumable checkpoints go; the same for every attempt of the run, so a retry resumes."""
    checkpoint_interval: int | None = None
    """Optimiser steps between checkpoints; None: every 10% of the run."""
    checkpoints_to_keep: int = 2
    """How many of the newest complete checkpoints stay in S3."""


class StorageLocation(Model):
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"


class ResolvedStageSpec(Model):
    api_version: Literal["gradatim.io/v1alpha1"] = API_VERSION
    namespace: str
    pipeline: str
    stage: str
    type: StageType
    attempt: int
    cache_key: str
    seed: int = 0
    params: dict[str, Any]
    inputs: ResolvedInputs
    output: OutputLocation
    storage: StorageLocation
    metrics_port: int = 9090
    process_group_timeout_seconds: int = 1800
    """How long a collective waits for every process (`init_process_group(timeout=...)`)."""

    def typed_params(self) -> Any:
        """The hyperparameters, parsed as the stage type's block (defaults filled in)."""
        return PARAMS_BY_TYPE[self.type].model_validate(self.params)
