"""The imperative shell around the planner for a run without Kubernetes: what `gradatim/operator/reconciler.py`
is to the API server, this is to one machine.

The objects live in memory: the stages and pipeline parsed from the recipe, with the status the planner gives
them, and the PyTorchJobs it creates (`LocalJobs`, which runs them with `JobProcesses`, the job runner's code, and
writes Kubeflow's conditions on them). Each `step` reads the world (jobs, results.json and progress.json in S3),
plans every stage in dependency order, acts, and aggregates the pipeline; the status is also written to
`status.json` in the state dir after every change, for readers after the run.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gradatim import s3
from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.local import kubeflow as kf
from gradatim.local.processes import JobProcesses, Resolvers
from gradatim.local.recipe import Recipe
from gradatim.operator.reconciler import storage_problem
from gradatim.planner.graph import cache_keys, topological_order
from gradatim.planner.jobs import JobState, job_state
from gradatim.planner.pipeline import plan_pipeline
from gradatim.planner.render import job_name, stage_output_uri
from gradatim.planner.stage import CreateJob, DeleteJob, Observed, Plan, SetJobSuspended, plan_stage

log = logging.getLogger("gradatim.local")

STATUS_FILE = "status.json"
FINISHED = ("Succeeded", "Failed")
ACTIVE = ("Running", "Retrying")  # stage phases after which something may still change without the user
S3_PATIENCE = 5  # steps in a row a stage's S3 reads may fail before the planner hears of it


class LocalJobs:
    """PyTorchJobs and their ConfigMaps held in memory, and run by `JobProcesses`: the API server's job objects
    and the Kubeflow operator acting on them. At most `parallel` jobs run at once; the others wait `Created`, as
    pods wait for a node."""

    def __init__(self, workdir: Path, secrets: Mapping[str, Mapping[str, bytes]], parallel: int = 1) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # name → PyTorchJob, in creation order
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.parallel = parallel
        resolvers = Resolvers(config_map=lambda ns, name: (self.configmaps.get(name) or {}).get("data"),
                              secret=lambda ns, name: secrets.get(name))
        self.processes = JobProcesses(workdir, resolvers)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def create(self, job: dict[str, Any], configmap: dict[str, Any], now: datetime) -> bool:
        """Creates the job; False when one of that name exists (adopted, as the operator adopts on AlreadyExists)."""
        name = job["metadata"]["name"]
        if name in self.objects:
            return False
        job = json.loads(json.dumps(job))
        job["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=kf._ts(now))
        self.configmaps[configmap["metadata"]["name"]] = configmap
        self.objects[name] = job
        return True

    def set_suspended(self, name: str, suspended: bool) -> None:
        if name in self.objects:
            self.objects[name]["spec"].setdefault("runPolicy", {})["suspend"] = suspended

    def delete(self, name: str) -> None:
        job = self.objects.pop(name, None)
        if job is not None:
            self.processes.forget(job["metadata"]["uid"])

    def sync(self, now: datetime) -> None:
        """Advances every job's processes and conditions; waiting jobs start, oldest first, as slots free up."""
        for job in self.objects.values():
            may_start = len(self.processes.jobs) < self.parallel
            job["status"] = self.processes.sync(job, now, may_start)

    def pods(self, name: str) -> tuple[dict[str, Any], ...]:
        """The job's pods with the status the kubelet would write, its containers' exit codes included."""
        job = self.objects.get(name)
        return tuple(self.processes.pods.get(job["metadata"]["uid"], [])) if job else ()

    def running(self) -> int:
        return len(self.processes.jobs)

    def logs(self, name: str) -> Path | None:
        job = self.objects.get(name)
        return self.processes.job_dir(job["metadata"]["namespace"], name) if job else None

    def stop_all(self) -> None:
        self.processes.stop_all()


class LocalReconciler:
    def __init__(self, recipe: Recipe, store: Any, jobs: LocalJobs, state_dir: Path) -> None:
        self.namespace = recipe.namespace
        self.pipeline = recipe.pipeline
        self.stages = dict(recipe.stages)
        self.store = store
        self.jobs = jobs
        self.state_dir = Path(state_dir)
        self.keys = cache_keys(self.stages, self.pipeline.spec.image)  # the spec is fixed for the run's life
        self.order = topological_order(self.stages)
        self.live: dict[str, dict[str, float]] = {}  # a running stage's progress.json metrics, for the view
        self._s3_failures: dict[str, int] = {}
        self._saved = ""

    @property
    def name(self) -> str:
        return self.pipeline.metadata["name"]

    @property
    def phase(self) -> str | None:
        return self.pipeline.status.phase if self.pipeline.status else None

    def settled(self) -> bool:
        """Nothing more will happen: the pipeline finished, or no stage runs or waits to retry (the rest are
        blocked or suspended, which only an edit of the recipe changes)."""
        if self.phase in FINISHED:
            return True
        if self.pipeline.status is None or self._s3_failures:  # not yet planned, or a stage's reads are retrying
            return False
        return not any(s.status and s.status.phase in ACTIVE for s in self.stages.values())

    # -- the loop ---------------------------------------------------------------------------------------

    def step(self, now: datetime) -> None:
        """1. advance the jobs; 2. plan and act on every stage, dependencies first, so a stage starts in the step
        its last dependency finished; 3. aggregate the pipeline; 4. write the status down."""
        self.jobs.sync(now)
        for name in self.order:
            self.reconcile_stage(name, now)
        self.pipeline = self.pipeline.model_copy(update={"status": plan_pipeline(self.pipeline, self.stages, now)})
        self.save()

    def reconcile_stage(self, name: str, now: datetime) -> None:
        stage = self.stages[name]
        status = stage.status
        # The current attempt's job; with none recorded, the next attempt's.
        current = status.job_name if status and status.job_name else job_name(name, (status.attempt if status else 0) + 1)
        job = self.jobs.get(current)
        key = self.keys.get(name)
        results = progress = error = None
        problems: tuple[str, ...] = ()
        failed = job is not None and job_state(job) is JobState.FAILED
        if key is not None:
            out = stage_output_uri(self.pipeline, self.namespace, stage, key)
            try:
                results, progress = s3.read_run_files(self.store, out, running=job is not None)
                error = s3.read_error(self.store, out) if failed else None
                self._s3_failures.pop(name, None)
            except (BotoCoreError, ClientError) as err:
                self._s3_failures[name] = self._s3_failures.get(name, 0) + 1
                if self._s3_failures[name] < S3_PATIENCE:  # a blink of the store: look again next step
                    log.warning("Could not read S3 for stage %s (will retry): %s", name, err)
                    return
                problems = (storage_problem(self.pipeline, out, err),)
        pods = self.jobs.pods(current) if failed else ()
        plan = plan_stage(Observed(stage, self.pipeline, self.stages, job, results, progress, now, problems, error, pods))
        self._act(plan, now)
        self.stages[name] = stage.model_copy(update={"status": plan.status})
        running = plan.status.phase == "Running" and job is not None and job_state(job) is JobState.RUNNING
        self.live[name] = dict((progress or {}).get("metrics") or {}) if running else {}
        for event in plan.events:
            log.log(logging.WARNING if event.type == "Warning" else logging.INFO, "Stage %s/%s is %s (%s): %s",
                    self.namespace, name, plan.status.phase, event.reason, event.message)

    def _act(self, plan: Plan, now: datetime) -> None:
        ns = self.namespace
        for action in plan.actions:
            if isinstance(action, CreateJob):
                created = self.jobs.create(action.job, action.configmap, now)
                log.info("%s PyTorchJob %s/%s", "Created" if created else "Adopted", ns, action.job["metadata"]["name"])
            elif isinstance(action, SetJobSuspended):
                self.jobs.set_suspended(action.name, action.suspended)
                log.info("%s PyTorchJob %s/%s", "Suspended" if action.suspended else "Resumed", ns, action.name)
            elif isinstance(action, DeleteJob):
                self.jobs.delete(action.name)
                log.info("Deleted PyTorchJob %s/%s: %s", ns, action.name, action.why)

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


def read_status(state_dir: Path) -> tuple[str, TrainingPipeline, list[TrainingStage]]:
    """(namespace, pipeline, stages) as the last local run in `state_dir` left them, status included."""
    record = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    stages = [TrainingStage.model_validate(s) for s in record["stages"]]
    return record["namespace"], TrainingPipeline.model_validate(record["pipeline"]), stages
