"""The reconcile shell's world for a run without Kubernetes (`gradatim run`): what the API server and the watch
cache are to the operator, memory is to one machine. The same shell (gradatim/reconcile/shell.py) plans and acts.

The objects live in memory: the stages and pipeline parsed from the recipe, with the status the shell writes on
them, and the PyTorchJobs it creates (`LocalJobs`, which runs their pods with the pod runner's kubelet code and
writes the job conditions a stage reads on them). Each `LocalRun.step` advances the jobs and reconciles every stage in
dependency order, then the pipeline; the status is also written to `status.json` in the state dir after every
change, for readers after the run.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gradatim.api import TrainingPipeline, TrainingPipelineStatus, TrainingStage, TrainingStageStatus
from gradatim.local.jobs import LocalJobs
from gradatim.local.recipe import Recipe
from gradatim.planner.graph import topological_order
from gradatim.planner.stage import STORAGE_CONDITION, STORAGE_PATIENCE_SECONDS
from gradatim.reconcile.shell import Shell

log = logging.getLogger("gradatim.local")

STATUS_FILE = "status.json"
FINISHED = ("Succeeded", "Failed")
ACTIVE = ("Running", "Retrying")  # stage phases after which something may still change without the user


def _as_pytorchjob(obj):
    spec = obj.spec
    return obj if spec.backend in (None, "auto", "pytorchjob") else obj.model_copy(update={"spec": spec.model_copy(update={"backend": "pytorchjob"})})


class LocalWorld:
    """`gradatim.reconcile.world.World` in memory: the recipe's pipeline and stages, with the status the shell
    writes on them, the jobs `LocalJobs` runs, and the S3 of the run."""

    def __init__(self, recipe: Recipe, store: Any, jobs: LocalJobs) -> None:
        self.namespace = recipe.namespace
        # Every stage runs as local processes in the PyTorchJob's shape, whatever spec.backend says (it picks the
        # Kubeflow job kind on a cluster).
        self.pipeline_object = _as_pytorchjob(recipe.pipeline)
        self.stages = {n: _as_pytorchjob(s) for n, s in recipe.stages.items()}
        self.store = store
        self.jobs = jobs

    def stage(self, namespace: str, name: str) -> TrainingStage | None:
        return self.stages.get(name)

    def pipeline(self, namespace: str, name: str) -> TrainingPipeline | None:
        return self.pipeline_object if name == self.pipeline_object.metadata["name"] else None

    def pipeline_stages(self, namespace: str, pipeline: str) -> dict[str, TrainingStage]:
        return {n: s for n, s in self.stages.items() if s.spec.pipeline == pipeline}

    def graph_version(self, namespace: str, pipeline: str) -> int:
        return 0  # the recipe's specs are fixed for the run's life

    def installed_backends(self) -> frozenset[str]:
        return frozenset({"pytorchjob"})

    def job(self, namespace: str, name: str, backend: str) -> dict[str, Any] | None:
        return self.jobs.get(name)

    def job_pods(self, namespace: str, stage: str, job: str, backend: str) -> list[dict[str, Any]]:
        return list(self.jobs.pods(job))

    def job_events(self, namespace: str, job: str, backend: str) -> list[dict[str, Any]]:
        return []  # local processes start or fail; nothing stands between

    def storage(self, pipeline: TrainingPipeline) -> tuple[Any, list[str]]:
        return self.store, []

    def adopt(self, stage: TrainingStage, pipeline: TrainingPipeline) -> None:
        """Nothing to own: the run's objects live and go together."""

    def create_job(self, job: dict[str, Any], configmap: dict[str, Any]) -> bool:
        return self.jobs.create(job, configmap, datetime.now(timezone.utc))

    def set_job_suspended(self, namespace: str, name: str, suspended: bool, backend: str) -> None:
        self.jobs.set_suspended(name, suspended)

    def delete_job(self, namespace: str, name: str, backend: str) -> None:
        self.jobs.delete(name)

    def write_stage_status(self, stage: TrainingStage, status: dict[str, Any]) -> None:
        name = stage.metadata["name"]
        self.stages[name] = self.stages[name].model_copy(update={"status": TrainingStageStatus.model_validate(status)})

    def write_pipeline_status(self, pipeline: TrainingPipeline, status: dict[str, Any]) -> None:
        self.pipeline_object = self.pipeline_object.model_copy(update={"status": TrainingPipelineStatus.model_validate(status)})

    def post_event(self, stage: TrainingStage, type_: str, reason: str, message: str) -> None:
        """Events go to the run's log."""
        log.log(logging.WARNING if type_ == "Warning" else logging.INFO, "Stage %s/%s: %s: %s",
                self.namespace, stage.metadata["name"], reason, message)


class LocalRun:
    """A recipe's pipeline run on this machine through the one shell, a step at a time."""

    def __init__(self, recipe: Recipe, store: Any, jobs: LocalJobs, state_dir: Path, storage_patience_seconds: float = STORAGE_PATIENCE_SECONDS) -> None:
        self.world = LocalWorld(recipe, store, jobs)
        self.shell = Shell(self.world, storage_patience_seconds)
        self.namespace = recipe.namespace
        self.name = recipe.name
        self.jobs = jobs
        self.state_dir = Path(state_dir)
        self.order = topological_order(recipe.stages)
        self._saved = ""

    @property
    def pipeline(self) -> TrainingPipeline:
        return self.world.pipeline_object

    @property
    def stages(self) -> dict[str, TrainingStage]:
        return self.world.stages

    @property
    def phase(self) -> str | None:
        return self.pipeline.status.phase if self.pipeline.status else None

    def settled(self) -> bool:
        """Nothing more will happen: the pipeline finished, or no stage runs or waits to retry (the rest are
        blocked or suspended, which only an edit of the recipe changes)."""
        if self.phase in FINISHED:
            return True
        if self.pipeline.status is None:
            return False
        return not any(s.status and (s.status.phase in ACTIVE or _retrying_storage(s.status)) for s in self.stages.values())

    def step(self, now: datetime) -> None:
        """1. advance the jobs; 2. reconcile every stage, dependencies first, so a stage starts in the step its
        last dependency finished; 3. aggregate the pipeline; 4. write the status down."""
        self.jobs.sync(now)
        for name in self.order:
            self.shell.reconcile_stage(self.namespace, name, now)
        self.shell.reconcile_pipeline(self.namespace, self.name, now)
        self.save()

    # -- the record -------------------------------------------------------------------------------------

    def save(self) -> None:
        """`status.json`: the pipeline and stages as the API server would hold them, and the jobs; rewritten
        (atomically) when anything changed."""
        record = {
            "namespace": self.namespace,
            "pipeline": self.pipeline.to_wire(),
            "stages": [self.stages[n].to_wire() for n in self.order],
            "jobs": list(self.jobs.objects.values()),
        }
        text = json.dumps(record, indent=2, sort_keys=True)
        if text == self._saved:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATUS_FILE + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.state_dir / STATUS_FILE)
        self._saved = text


def _retrying_storage(status: TrainingStageStatus) -> bool:
    """S3 reads failing, not yet for long enough to block the stage: they may pass."""
    return status.phase != "Blocked" and any(c.type == STORAGE_CONDITION and c.status == "False" for c in status.conditions)


def read_status(state_dir: Path) -> tuple[str, TrainingPipeline, list[TrainingStage]]:
    """(namespace, pipeline, stages) as the last local run in `state_dir` left them, status included."""
    record = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    stages = [TrainingStage.model_validate(s) for s in record["stages"]]
    return record["namespace"], TrainingPipeline.model_validate(record["pipeline"]), stages
