"""The imperative shell around the planner, shared by the operator and `gradatim run`: read what the planner
asks for, plan, act, write status. State lives in the objects' status, never here (the content keys below are a
memo of a pure function, not state)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.api.stage import TrainingStageStatus
from gradatim.planner.graph import cache_keys
from gradatim.planner.jobs import KINDS, choose_backend
from gradatim.planner.pipeline import plan_pipeline
from gradatim.planner.render import job_name, stage_output_uri
from gradatim.planner.stage import (
    STORAGE_PATIENCE_SECONDS, CreateJob, DeleteJob, Observed, Plan, SetJobSuspended, plan_stage, reads_for,
)
from gradatim.reconcile.world import World
from gradatim.storage.runfiles import STORAGE_ERRORS, RunFiles, read_run_files, storage_fault

log = logging.getLogger("gradatim.reconcile")

POLL_RUNNING_SECONDS = 5.0
MEMO_LIMIT = 10_000  # content keys remembered, roughly one per live stage  # how often a running or suspended stage is looked at again (progress, the job's end)


@dataclass(frozen=True, order=True)
class Key:
    kind: str  # "stage" or "pipeline"
    namespace: str
    name: str


@dataclass
class StageOutcome:
    """What one stage reconcile saw and did, for the caller's metrics, queue and view."""

    stage: TrainingStage | None  # with the status written; None when the stage is gone
    previous: TrainingStageStatus | None = None
    changed: bool = False  # the status was written
    created_job: bool = False
    dependency_latency: float | None = None  # seconds from the last dependency's completion to this job's creation
    storage_error: bool = False
    follow_up: list[Key] = field(default_factory=list)
    requeue_after: float | None = None


class Shell:
    def __init__(self, world: World, storage_patience_seconds: float = STORAGE_PATIENCE_SECONDS) -> None:
        self.world = world
        self.storage_patience_seconds = storage_patience_seconds
        # Memos of a pure function (cache_keys), not state: losing them changes no decision.
        self._key_memo: dict[tuple, str] = {}
        self._keys: dict[tuple[str, str], tuple[Any, dict[str, str]]] = {}

    def content_keys(self, namespace: str, pipeline: TrainingPipeline, siblings: dict[str, TrainingStage]) -> dict[str, str]:
        """`cache_keys` of the pipeline's stages, computed again only when the world says its graph changed, and
        then hashing only stages new or edited: with a thousand stages, hashing them all on every reconcile would
        dominate."""
        name = pipeline.metadata["name"]
        version = (self.world.graph_version(namespace, name), pipeline.spec.image)
        known = self._keys.get((namespace, name))
        if known is not None and known[0] == version:
            return known[1]
        if len(self._key_memo) > 4 * MEMO_LIMIT:  # generations of deleted or edited stages pile up: start afresh
            self._key_memo.clear()
        keys = cache_keys(siblings, pipeline.spec.image, self._key_memo)
        self._keys[(namespace, name)] = (version, keys)
        return keys

    # -- stages -----------------------------------------------------------------------------------------

    def reconcile_stage(self, namespace: str, name: str, now: datetime) -> StageOutcome:
        world = self.world
        stage = world.stage(namespace, name)
        if stage is None:
            return StageOutcome(None)
        pipeline = world.pipeline(namespace, stage.spec.pipeline)
        if pipeline is not None:
            world.adopt(stage, pipeline)
        siblings = world.pipeline_stages(namespace, stage.spec.pipeline)
        siblings[name] = stage
        status = stage.status
        # The current attempt's job; with none recorded, the next attempt's, which a restart may have left behind.
        installed = world.installed_backends()
        if status and status.job_name:
            current, backend = status.job_name, status.backend or "pytorchjob"
        else:
            wanted = stage.spec.backend or (pipeline.spec.backend if pipeline is not None else "auto")
            current, backend = job_name(name, (status.attempt if status else 0) + 1), choose_backend(wanted, installed)
        job = world.job(namespace, current, backend)
        keys = self.content_keys(namespace, pipeline, siblings) if pipeline is not None else None
        reads = reads_for(stage, job, keys, siblings) if keys is not None else None
        files, problems, fault = RunFiles(), [], None
        if reads is not None and reads.storage:
            store, problems = world.storage(pipeline)
            if store is not None:
                out = stage_output_uri(pipeline, namespace, stage, keys[name])
                try:
                    files = read_run_files(store, out, results=reads.results, progress=reads.progress, error=reads.error)
                except STORAGE_ERRORS as err:
                    fault = storage_fault(pipeline, out, err)
                    log.warning("Could not read S3 for stage %s/%s: %s", namespace, name, fault.message)
        pods: tuple[dict[str, Any], ...] = ()
        if reads is not None and reads.pods:  # the current job's, or a deleted failed attempt's (still stopping?)
            pods = tuple(world.job_pods(namespace, name, job["metadata"]["name"] if job is not None else current, backend))
        events = tuple(world.job_events(namespace, current, backend)) if reads is not None and reads.events and job is not None else ()
        plan = plan_stage(Observed(
            stage, pipeline, siblings, job, files.results, files.progress, now, tuple(problems), files.error, pods,
            keys=keys, storage_fault=fault, storage_patience_seconds=self.storage_patience_seconds, installed_backends=installed,
            events=events,
        ))
        log.debug("Planned stage %s/%s: %s %s: %s", namespace, name, plan.status.phase, plan.reason, plan.message)
        outcome = StageOutcome(stage, previous=status, storage_error=fault is not None)
        self._act(stage, plan, siblings, now, outcome)
        outcome.changed = self._write_status(stage, plan)
        outcome.stage = stage.model_copy(update={"status": plan.status})
        if outcome.changed:
            outcome.follow_up = [Key("pipeline", namespace, stage.spec.pipeline)]
            outcome.follow_up += [Key("stage", namespace, n) for n, s in siblings.items() if name in s.spec.depends_on]
        requeue = plan.requeue_after
        if plan.status.phase in ("Running", "Suspended") or problems or fault is not None:
            requeue = min(requeue or POLL_RUNNING_SECONDS, POLL_RUNNING_SECONDS)
        outcome.requeue_after = requeue
        return outcome

    def _act(self, stage: TrainingStage, plan: Plan, siblings: dict[str, TrainingStage], now: datetime, outcome: StageOutcome) -> None:
        ns = stage.metadata["namespace"]
        for action in plan.actions:
            if isinstance(action, CreateJob):
                created = self.world.create_job(action.job, action.configmap)
                log.info("%s %s %s/%s", "Created" if created else "Adopted", action.job["kind"], ns, action.job["metadata"]["name"])
                if created:
                    outcome.created_job = True
                    outcome.dependency_latency = _dependency_latency(stage, siblings, now)
            elif isinstance(action, SetJobSuspended):
                self.world.set_job_suspended(ns, action.name, action.suspended, action.backend)
                log.info("%s %s %s/%s", "Suspended" if action.suspended else "Resumed", KINDS[action.backend].kind, ns, action.name)
            elif isinstance(action, DeleteJob):
                self.world.delete_job(ns, action.name, action.backend)
                log.info("Deleted %s %s/%s: %s", KINDS[action.backend].kind, ns, action.name, action.why)

    def _write_status(self, stage: TrainingStage, plan: Plan) -> bool:
        new = plan.status.to_wire()
        if stage.status is not None and new == stage.status.to_wire():
            return False
        self.world.write_stage_status(stage, new)
        if (stage.status.phase if stage.status else None) != plan.status.phase:
            log.info("Stage %s/%s is %s: %s", stage.metadata["namespace"], stage.metadata["name"], plan.status.phase, plan.message)
        for event in plan.events:
            try:
                self.world.post_event(stage, event.type, event.reason, event.message)
            except Exception as err:  # an event is best effort; status already says it
                log.warning("Could not post event for %s/%s: %s", stage.metadata["namespace"], stage.metadata["name"], err)
        return True

    # -- pipelines --------------------------------------------------------------------------------------

    def reconcile_pipeline(self, namespace: str, name: str, now: datetime) -> None:
        """Aggregates the pipeline's status from its stages."""
        pipeline = self.world.pipeline(namespace, name)
        if pipeline is None:
            return
        stages = self.world.pipeline_stages(namespace, name)
        status = plan_pipeline(pipeline, stages, now, self.content_keys(namespace, pipeline, stages))
        if pipeline.status is None or status.to_wire() != pipeline.status.to_wire():
            self.world.write_pipeline_status(pipeline, status.to_wire())


def _dependency_latency(stage: TrainingStage, siblings: dict[str, TrainingStage], now: datetime) -> float | None:
    finished = [siblings[d].status.completion_time for d in stage.spec.depends_on if siblings[d].status and siblings[d].status.completion_time]
    if finished and len(finished) == len(stage.spec.depends_on):
        return max(0.0, (now - max(finished)).total_seconds())
    return None
