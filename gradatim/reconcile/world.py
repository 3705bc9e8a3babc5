"""What the reconcile shell reads and changes. Two implementations: `KubeWorld` (the operator: a watch cache of
stages, pipelines and jobs over the API server) and `LocalWorld` (`gradatim run`: the objects in memory)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from gradatim.api import TrainingPipeline, TrainingStage


class World(Protocol):
    # -- reads ------------------------------------------------------------------------------------------
    def stage(self, namespace: str, name: str) -> TrainingStage | None: ...

    def pipeline(self, namespace: str, name: str) -> TrainingPipeline | None: ...

    def pipeline_stages(self, namespace: str, pipeline: str) -> dict[str, TrainingStage]:
        """Every stage that names `pipeline`, by name."""
        ...

    def graph_version(self, namespace: str, pipeline: str) -> Hashable:
        """Changes whenever a stage of the pipeline comes, goes or gets a new spec (generation): the content keys
        are computed again only then."""
        ...

    def installed_backends(self) -> frozenset[str]:
        """The job kinds the cluster serves (`pytorchjob`, `trainjob`), for `spec.backend: auto`."""
        ...

    def job(self, namespace: str, name: str, backend: str) -> dict[str, Any] | None:
        """The PyTorchJob or TrainJob (as `backend` says), as the API server holds it."""
        ...

    def job_pods(self, namespace: str, stage: str, job: str, backend: str) -> list[dict[str, Any]]:
        """The job's pods with the status their kubelet wrote."""
        ...

    def job_events(self, namespace: str, job: str, backend: str) -> list[dict[str, Any]]:
        """Events about creating the job's pods (`reason`, `message`), oldest first: its controller's own, or for a
        TrainJob, the Job controller's on the node Job."""
        ...

    def storage(self, pipeline: TrainingPipeline) -> tuple[Any, list[str]]:
        """An S3 client with the pipeline's credentials, or the problems that prevent one, each naming the field."""
        ...

    # -- changes ----------------------------------------------------------------------------------------
    def adopt(self, stage: TrainingStage, pipeline: TrainingPipeline) -> None:
        """Makes the pipeline an owner of the stage (deleting the pipeline deletes its stages)."""
        ...

    def create_job(self, job: dict[str, Any], configmap: dict[str, Any]) -> bool:
        """Creates the ConfigMap and the job; False when the job existed and was adopted."""
        ...

    def set_job_suspended(self, namespace: str, name: str, suspended: bool, backend: str) -> None: ...

    def delete_job(self, namespace: str, name: str, backend: str) -> None:
        """Deletes the job; it stays, being deleted, until its pods are gone."""
        ...

    def write_stage_status(self, stage: TrainingStage, status: dict[str, Any]) -> None: ...

    def write_pipeline_status(self, pipeline: TrainingPipeline, status: dict[str, Any]) -> None: ...

    def post_event(self, stage: TrainingStage, type_: str, reason: str, message: str) -> None:
        """Best effort: the status already says it."""
        ...
