"""What to do about one TrainingStage: a pure function of the stage, its pipeline, its siblings, its current
job, what S3 holds under its key, and the time. The operator and local mode both act on the plan it returns,
through the one shell (gradatim/reconcile/shell.py); `reads_for` tells that shell what to look at first.

`plan_stage` runs named steps in order (references, graph, content, storage, results, dependencies, the job,
the next attempt); the first to settle the phase ends the plan."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from gradatim.api.pipeline import TrainingPipeline
from gradatim.api.base import Condition
from gradatim.api.runfiles import RunProgress, RunResults, TrainerError, memory_knobs
from gradatim.api.stage import GateResult, Progress, TrainingStage, TrainingStageStatus
from gradatim.planner.conditions import condition, conditions_for
from gradatim.planner.graph import cache_keys, on_cycle
from gradatim.planner.jobs import KINDS, JobState, choose_backend, job_message, job_start_time, job_state, job_suspend_flag, kind_of
from gradatim.planner.observe import Reads, StorageFault, is_done, is_settled, reads_for
from gradatim.planner.render import (
    KEY_LABEL,
    KUEUE_QUEUE_LABEL,
    Upstream,
    job_name,
    missing_outputs,
    render_configmap,
    render_job,
    render_stage_spec,
    child_labels,
    effective_resources,
    unfit_inputs,
)

MAX_BACKOFF_SECONDS = 3600
# A stage whose S3 reads fail for a reason that may pass keeps its phase this long before it is Blocked: long
# enough for an S3 restart or failover, short enough that a real outage shows (kstatus: Stalled).
STORAGE_PATIENCE_SECONDS = 300.0
STORAGE_RETRY_SECONDS = 5.0
STORAGE_CONDITION = "StorageAvailable"  # False while S3 reads fail; its lastTransitionTime is when they began to
TORCHRUN_SIGKILL = re.compile(r"exitcode\s*:\s*-9\b")  # a worker's line in torchrun's ChildFailedError summary


@dataclass(frozen=True)
class Observed:
    """The world as the shell saw it, for one stage."""

    stage: TrainingStage
    pipeline: TrainingPipeline | None
    siblings: Mapping[str, TrainingStage]  # every stage of the pipeline, this one included
    job: dict[str, Any] | None  # the PyTorchJob named in status.jobName; with none named, the next attempt's, if it exists
    results: RunResults | None  # results.json under the stage's current key, when a run finished
    progress: RunProgress | None  # progress.json of the running attempt, when the trainer wrote one
    now: datetime
    problems: tuple[str, ...] = ()  # bad references the shell found (a missing Secret), naming the field
    error: TrainerError | None = None  # error.json under the stage's current key: why an attempt failed, if one did
    pods: tuple[dict[str, Any], ...] = ()  # the current job's pods, once it failed: their containers' exit codes
    keys: Mapping[str, str] | None = None  # the siblings' content keys, when the shell has them already
    storage_fault: StorageFault | None = None  # the S3 reads failed (what reads_for asked for)
    storage_patience_seconds: float = STORAGE_PATIENCE_SECONDS  # how long a transient fault is waited out
    installed_backends: frozenset[str] = frozenset({"pytorchjob"})  # the job CRDs the cluster serves, for `auto`
    events: tuple[dict[str, Any], ...] = ()  # the pending job's pod-creation events (reason, message, time), oldest first


@dataclass(frozen=True)
class CreateJob:
    job: dict[str, Any]
    configmap: dict[str, Any]


@dataclass(frozen=True)
class SetJobSuspended:
    name: str
    suspended: bool
    backend: str = "pytorchjob"


@dataclass(frozen=True)
class DeleteJob:
    name: str
    why: str
    backend: str = "pytorchjob"


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = CreateJob | SetJobSuspended | DeleteJob


@dataclass
class Plan:
    status: TrainingStageStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    reason: str = ""
    message: str = ""


def backoff_seconds(base: int, retries: int) -> int:
    return min(base * 2 ** max(retries - 1, 0), MAX_BACKOFF_SECONDS)


def _upstream_problem(dep: TrainingStage) -> str | None:
    st = dep.status
    if st is None or st.observed_generation != dep.metadata.get("generation"):
        return None
    name = dep.metadata["name"]
    if st.phase == "Failed" and st.gate is not None and not st.gate.passed:
        return f"dependency {name} failed its quality gate: {st.gate.message}"
    if st.phase in ("Failed", "Invalid"):
        why = next((c.message for c in st.conditions if c.type == "Stalled" and c.message), st.phase.lower())
        return f"dependency {name} failed: {why}"
    if st.phase == "Blocked":
        return f"dependency {name} is blocked"
    return None


def evaluate_gate(stage: TrainingStage, metrics: Mapping[str, float]) -> GateResult | None:
    gate = stage.spec.quality_gate
    if gate is None:
        return None
    value = metrics.get(gate.metric)
    if value is None:
        return GateResult(passed=False, message=f"results report no metric {gate.metric}")
    ops = {">": value > gate.threshold, ">=": value >= gate.threshold, "<": value < gate.threshold, "<=": value <= gate.threshold}
    passed = ops[gate.comparison]
    return GateResult(passed=passed, value=value, message=f"{gate.metric} = {value:.6g}, needs {gate.comparison} {gate.threshold:g}")


def _progress(progress: RunProgress | None) -> Progress | None:
    if progress is None:
        return None
    step, total, eta = progress.step, progress.total_steps, progress.eta_seconds
    text = f"{step}/{total}" if total else str(step)
    if progress.activity:  # work before the stage's own steps, such as training the builtin tiny-teacher
        text = f"{progress.activity[:40]} {text}"
    return Progress(
        step=step, total_steps=total, percent=min(100, int(100 * step / total)) if total else 0,
        eta_seconds=int(eta) if eta is not None else None, text=text,
        loss=progress.metrics.get("loss"), reward_mean=progress.metrics.get("reward_mean"),
    )


class _Planning:
    """The status being built for one stage, and `finish`, which settles its phase, conditions and event."""

    def __init__(self, o: Observed) -> None:
        self.o = o
        self.previous = o.stage.status or TrainingStageStatus()
        self.status = self.previous.model_copy(deep=True)
        self.generation = o.stage.metadata.get("generation")
        self.status.observed_generation = self.generation
        self.plan = Plan(status=self.status)
        self.extra_conditions: list[Condition] = []

    def finish(self, phase: str, reason: str, message: str) -> Plan:
        status, previous = self.status, self.previous
        status.phase = phase
        status.conditions = conditions_for(phase, reason, message, self.generation, self.o.now, previous.conditions) + self.extra_conditions
        self.plan.reason, self.plan.message = reason, message
        if previous.phase != phase:
            warn = phase in ("Failed", "Invalid", "Blocked") or reason == "BackingOff"  # a failed attempt warns, retried or not
            self.plan.events.append(Event("Warning" if warn else "Normal", reason, message))
        return self.plan


def plan_stage(o: Observed) -> Plan:
    """The steps in order; the first that settles the stage's phase ends the plan."""
    p = _Planning(o)
    plan = check_references(p) or check_graph(p)
    if plan is not None:
        return plan
    keys = o.keys if o.keys is not None else cache_keys(o.siblings, o.pipeline.spec.image)
    key = keys.get(o.stage.metadata["name"])
    if key is None:
        return p.finish("Blocked", "DependencyCycle", "spec.dependsOn: an upstream stage lies on a dependency cycle")
    job = track_content(p, key)
    return (
        keep_settled(p, key)
        or wait_for_storage(p)
        or record_results(p, job, key)
        or wait_for_dependencies(p, job, keys)
        or follow_job(p, job)
        or start_attempt(p, key)
    )


def check_references(p: _Planning) -> Plan | None:
    """Bad references the shell found (missing Secret, wrong bucket, refused credentials): the user must fix them."""
    o = p.o
    problems = list(o.problems)
    if o.storage_fault is not None and not o.storage_fault.transient:
        problems.append(o.storage_fault.message)
    if problems:
        return p.finish("Invalid", "InvalidReference", "; ".join(problems))
    return None


def check_graph(p: _Planning) -> Plan | None:
    """The pipeline exists and the stage's place in its graph is sound: dependencies exist, no cycle, inputs fit."""
    o, stage = p.o, p.o.stage
    name = stage.metadata["name"]
    if o.pipeline is None:
        return p.finish("Blocked", "PipelineNotFound", f"spec.pipeline: TrainingPipeline {stage.spec.pipeline!r} not found in namespace {stage.metadata.get('namespace')}; create it")
    missing = [d for d in stage.spec.depends_on if d not in o.siblings]
    if missing:
        return p.finish("Blocked", "DependencyNotFound", f"spec.dependsOn: no stage {', '.join(missing)} in pipeline {stage.spec.pipeline}")
    if cycle := on_cycle(name, o.siblings):
        return p.finish("Blocked", "DependencyCycle", f"spec.dependsOn: dependency cycle {' -> '.join(cycle)}")
    if unfit := unfit_inputs(stage, {d: o.siblings[d].spec.type for d in stage.spec.depends_on}):  # fromStage is in dependsOn
        return p.finish("Invalid", "InvalidInput", "; ".join(unfit))
    return None


def track_content(p: _Planning, key: str) -> dict[str, Any] | None:
    """The job of the run for this content key, if any. New content starts a fresh run (any job of the old one is
    obsolete); a job created before a restart lost the status write is adopted as the attempt it is."""
    o, status, name = p.o, p.status, p.o.stage.metadata["name"]
    if status.cache_key != key:
        if status.job_name and o.job is not None and job_state(o.job) in (JobState.RUNNING, JobState.PENDING, JobState.SUSPENDED):
            p.plan.actions.append(DeleteJob(status.job_name, "the stage's spec changed", kind_of(o.job).backend))
        status.cache_key, status.job_name, status.retries = key, None, 0
        status.metrics, status.outputs, status.gate, status.progress = {}, {}, None, None
        status.checkpoint_uri, status.next_retry_time, status.completion_time = None, None, None
        job: dict[str, Any] | None = None
    else:
        job = o.job if status.job_name else None
    if status.job_name is None and o.job is not None and _is_next_attempt(o.job, name, status.attempt + 1, key):
        # Adopted rather than started again (AlreadyExists) or, once finished, mistaken for a cache hit.
        status.attempt += 1
        status.job_name = o.job["metadata"]["name"]
        status.backend = kind_of(o.job).backend
        status.start_time = status.start_time or o.now
        job = o.job
    return job


def keep_settled(p: _Planning, key: str) -> Plan | None:
    """A stage finished for this spec and key keeps its status: `reads_for` read nothing for it."""
    if not is_settled(p.o.stage, key):
        return None
    ready = next((c for c in p.previous.conditions if c.type == "Ready"), None)
    return p.finish(p.previous.phase, ready.reason if ready else p.previous.phase, ready.message if ready else "")


def wait_for_storage(p: _Planning) -> Plan | None:
    """S3 could not be read for a reason that may pass (unreachable, timeouts, 5xx): the stage keeps its phase and
    says what is retried; only after `storage_patience_seconds` of it is the stage Blocked (kstatus: Stalled)."""
    o, previous = p.o, p.previous
    fault = o.storage_fault
    if fault is None:
        return None
    since = next((c.last_transition_time for c in previous.conditions if c.type == STORAGE_CONDITION and c.status == "False"), None) or o.now
    waited = (o.now - since).total_seconds()
    p.extra_conditions = [condition(STORAGE_CONDITION, False, "StorageUnavailable", fault.message, p.generation, o.now, previous.conditions)]
    # Messages name fixed times, not a running count, so a long fault does not rewrite the status every second.
    p.plan.requeue_after = STORAGE_RETRY_SECONDS
    if waited >= o.storage_patience_seconds:
        return p.finish("Blocked", "StorageUnavailable", f"{fault.message} (since {since:%Y-%m-%d %H:%M:%S} UTC; still retrying)")
    phase = previous.phase if previous.phase in ("Pending", "Running", "Retrying", "Suspended") else "Pending"
    return p.finish(phase, "StorageUnavailable", f"retrying S3 since {since:%H:%M:%S} UTC (Blocked after {o.storage_patience_seconds:.0f} s): {fault.message}")


def record_results(p: _Planning, job: dict[str, Any] | None, key: str) -> Plan | None:
    """A finished run under this key: the trainer's results are the record, whatever became of the job."""
    o, status = p.o, p.status
    if o.results is None or (job is not None and job_state(job) not in (JobState.SUCCEEDED, JobState.FAILED)):
        return None
    status.metrics = dict(o.results.metrics)
    status.outputs = dict(o.results.outputs)
    status.gate = evaluate_gate(o.stage, status.metrics)
    status.completion_time = status.completion_time or o.now
    status.next_retry_time = None
    last = _progress(o.progress) or status.progress
    if last is not None:
        total = last.total_steps or last.step
        status.progress = Progress(step=total, total_steps=total, percent=100, eta_seconds=0, text=f"{total}/{total}")
    if status.gate is not None and not status.gate.passed:
        return p.finish("Failed", "QualityGateFailed", f"spec.qualityGate: {status.gate.message}")
    if status.job_name is None:
        return p.finish("Cached", "CacheHit", f"outputs for cache key {key} already exist")
    return p.finish("Succeeded", "JobSucceeded", f"job {status.job_name} succeeded")


def wait_for_dependencies(p: _Planning, job: dict[str, Any] | None, keys: Mapping[str, str]) -> Plan | None:
    """A dependency that failed or is blocked blocks this stage; one not yet done makes it wait (unless its job
    already runs)."""
    o = p.o
    deps = [o.siblings[d] for d in o.stage.spec.depends_on]
    for dep in deps:
        if problem := _upstream_problem(dep):
            return p.finish("Blocked", "DependencyFailed", problem)
    waiting = [d.metadata["name"] for d in deps if not is_done(d, keys.get(d.metadata["name"]))]
    if waiting and job is None:
        return p.finish("Pending", "WaitingForDependencies", f"waiting for {', '.join(waiting)}")
    return None


def follow_job(p: _Planning, job: dict[str, Any] | None) -> Plan | None:
    """The current attempt: failed (retried after a back-off, or failed for good), suspended, or running. None when
    there is no attempt to follow and the next may start."""
    o, status, previous, stage = p.o, p.status, p.previous, p.o.stage
    suspended = stage.spec.suspend or o.pipeline.spec.suspend
    kueue = bool(stage.spec.queue_name or o.pipeline.spec.queue_name)
    retrying = previous.phase == "Retrying" and status.job_name is not None and previous.job_name == status.job_name
    if job is None:
        if suspended:
            return p.finish("Suspended", "Suspended", "suspended by spec.suspend" if stage.spec.suspend else "suspended by the pipeline's spec.suspend")
        if retrying and o.pods:  # its job is gone, its pods are still stopping: never two gangs on one prefix
            p.plan.requeue_after = 1.0
            return p.finish("Retrying", "DeletingFailedJob", f"{_failure_told(previous)}; waiting for the {len(o.pods)} pod(s) of job "
                            f"{status.job_name} to stop before attempt {status.attempt + 1}")
        if retrying and status.next_retry_time and o.now < status.next_retry_time:  # the failed attempt's job is gone
            p.plan.requeue_after = (status.next_retry_time - o.now).total_seconds()
            return p.finish("Retrying", "BackingOff", f"{_failure_told(previous)}; retry {status.retries}/{stage.spec.retry_limit} at "
                            f"{status.next_retry_time.isoformat()}")
        return None
    state = job_state(job)
    overdue = past_deadline(stage, job, o.now) if state in (JobState.RUNNING, JobState.PENDING) else None
    if overdue is not None:
        state, failure = JobState.FAILED, f"job {status.job_name} {overdue}"
    elif state is JobState.SUCCEEDED:  # succeeded, but no results.json under the key
        state, failure = JobState.FAILED, f"job {status.job_name} succeeded but wrote no results.json"
    else:
        failure = f"job {status.job_name} failed: {failure_cause(o, status.attempt)}"
    if state is JobState.FAILED:
        if previous.phase not in ("Retrying", "Failed") or previous.job_name != status.job_name:
            status.retries += 1
            status.next_retry_time = o.now + timedelta(seconds=backoff_seconds(stage.spec.retry_backoff_seconds, status.retries))
        if status.retries > stage.spec.retry_limit:
            status.completion_time = status.completion_time or o.now
            status.next_retry_time = None
            if overdue is not None:  # stop it: nothing else will (the failed pods of other failures stay for their logs)
                p.plan.actions.append(DeleteJob(status.job_name, "past spec.activeDeadlineSeconds", kind_of(job).backend))
            return p.finish("Failed", "RetryLimitExceeded", f"{failure}; retry limit {stage.spec.retry_limit} reached (spec.retryLimit)")
        # The failed attempt's job goes before the next starts: its pods stop, and no controller can bring one back
        # beside the next attempt, writing to the same prefix. What the pods said is in this status message.
        p.plan.actions.append(DeleteJob(status.job_name, f"attempt {status.attempt} failed; the next one resumes from its checkpoint", kind_of(job).backend))
        if suspended:
            return p.finish("Suspended", "Suspended", "suspended before the next attempt")
        if status.next_retry_time and o.now < status.next_retry_time:
            p.plan.requeue_after = (status.next_retry_time - o.now).total_seconds()
            return p.finish("Retrying", "BackingOff", f"{failure}; retry {status.retries}/{stage.spec.retry_limit} at {status.next_retry_time.isoformat()}")
        # Back-off over, but the job still exists: start the next attempt once it is gone.
        p.plan.requeue_after = 1.0
        return p.finish("Retrying", "DeletingFailedJob", f"{failure}; waiting for job {status.job_name} to be deleted before attempt {status.attempt + 1}")
    if suspended:
        if kueue:  # Kueue owns runPolicy.suspend; stop the attempt instead and resume later from its checkpoint
            p.plan.actions.append(DeleteJob(status.job_name, "suspended while managed by Kueue", kind_of(job).backend))
            status.job_name = None
        elif not job_suspend_flag(job):
            p.plan.actions.append(SetJobSuspended(status.job_name, True, kind_of(job).backend))
        return p.finish("Suspended", "Suspended", "suspended by spec.suspend")
    if not kueue and job_suspend_flag(job):
        p.plan.actions.append(SetJobSuspended(status.job_name, False, kind_of(job).backend))
    status.progress = _progress(o.progress) or status.progress
    if o.progress is not None and o.progress.checkpoint_uri:
        status.checkpoint_uri = o.progress.checkpoint_uri
    if stage.spec.active_deadline_seconds and (started := job_start_time(job)) is not None:  # act on time, not at the resync
        left = stage.spec.active_deadline_seconds - (o.now - started).total_seconds()
        p.plan.requeue_after = max(1.0, left + 1.0)
    if state is JobState.PENDING and (refused := pods_refused(o.events)):
        p.plan.requeue_after = 10.0  # the controller keeps trying; a created ServiceAccount or quota lets it through
        return p.finish("Blocked", "PodCreationFailed", f"job {status.job_name} cannot create its pods: {refused}")
    if state in (JobState.PENDING, JobState.SUSPENDED) and kueue:  # created suspended, for Kueue to admit
        return p.finish("Running", "WaitingForAdmission", f"job {status.job_name} is waiting for Kueue admission")
    return p.finish("Running", "JobRunning", f"job {status.job_name} is {state.value.lower()}")


POD_CREATED = ("SuccessfulCreatePod", "SuccessfulCreate")  # training-operator's, the Job controller's
POD_REFUSED = ("FailedCreatePod", "FailedCreate")


def pods_refused(events: tuple[dict[str, Any], ...]) -> str | None:
    """The API server's words for the last pod the job's controller could not create, unless a pod was created
    after it (events outlive the cause)."""
    last = None
    for event in events:
        if event.get("reason") in POD_REFUSED:
            last = event.get("message") or event["reason"]
        elif event.get("reason") in POD_CREATED:
            last = None
    return last


def _failure_told(previous: TrainingStageStatus) -> str:
    """Why the attempt failed, as the status said when it was first seen failing (its job may be gone since)."""
    ready = next((c for c in previous.conditions if c.type == "Ready"), None)
    return re.split(r"; (?:retry \d|waiting for)", ready.message)[0] if ready and ready.message else "the attempt failed"


def past_deadline(stage: TrainingStage, job: Mapping[str, Any], now: datetime) -> str | None:
    """Why the attempt is over its `spec.activeDeadlineSeconds`, counted from the job's start (time queued for
    admission does not count), or None. Enforced here for both backends: training-operator v1.9 only checks its
    own deadline when some other event touches the job."""
    limit = stage.spec.active_deadline_seconds
    started = job_start_time(job) if limit else None
    if started is None or (now - started).total_seconds() < limit:
        return None
    return f"ran past spec.activeDeadlineSeconds ({limit} s since {started:%H:%M:%S} UTC) and was stopped"


def start_attempt(p: _Planning, key: str) -> Plan:
    """The next attempt: its resolved spec in a ConfigMap and its job (PyTorchJob or TrainJob), reading the
    upstream outputs."""
    o, status, stage = p.o, p.status, p.o.stage
    name = stage.metadata["name"]
    kueue = bool(stage.spec.queue_name or o.pipeline.spec.queue_name)
    backend = choose_backend(stage.spec.backend or o.pipeline.spec.backend, o.installed_backends)
    if backend == "trainjob" and (stage.spec.priority_class_name or o.pipeline.spec.priority_class_name):
        field = "spec.priorityClassName" if stage.spec.priority_class_name else "the pipeline's spec.priorityClassName"
        return p.finish("Invalid", "InvalidInput", f"{field}: a TrainJob cannot set its pods' PriorityClass (Kubeflow Trainer v2.3's "
                        "runtimePatches have no such field); set spec.backend: pytorchjob, or let Kueue prioritise the queue")
    status.backend = backend
    status.attempt += 1
    status.job_name = job_name(name, status.attempt)
    status.start_time = status.start_time or o.now
    status.next_retry_time = None
    status.progress = None
    deps = [o.siblings[d] for d in stage.spec.depends_on]
    upstream = {d.metadata["name"]: Upstream(d.spec.type, dict(d.status.outputs)) for d in deps}
    if lost := missing_outputs(stage, upstream):
        return p.finish("Blocked", "MissingUpstreamOutput", f"spec.inputs: upstream results have no output {', '.join(lost)}")
    resolved = render_stage_spec(stage, o.pipeline, key=key, attempt=status.attempt, upstream=upstream)
    configmap = render_configmap(stage, resolved, child_labels(stage, status.attempt, key))
    job = render_job(KINDS[status.backend], stage, o.pipeline, key=key, attempt=status.attempt, configmap=configmap["metadata"]["name"], suspend=kueue)
    p.plan.actions.append(CreateJob(job, configmap))
    what = "retry" if status.retries else "run"
    return p.finish("Running", "JobCreated", f"created job {status.job_name} ({what}, attempt {status.attempt})")


def _is_next_attempt(job: Mapping[str, Any], stage: str, attempt: int, key: str) -> bool:
    meta = job.get("metadata") or {}
    return meta.get("name") == job_name(stage, attempt) and (meta.get("labels") or {}).get(KEY_LABEL) == key


def terminated_states(pods: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The trainer container's terminated state in each pod that ended in failure, rank 0's pod first (a
    PyTorchJob's Master, a TrainJob's node 0)."""
    states = []
    for pod in sorted(pods, key=lambda p: not re.search(r"-(master-0|node-0-0-\w+)$", p.get("metadata", {}).get("name", ""))):
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue  # stopped by its controller after another pod failed (cleanPodPolicy: Running): not a cause
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            if container.get("name") not in (k.container for k in KINDS.values()):
                continue
            term = (container.get("state") or {}).get("terminated") or (container.get("lastState") or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                states.append(term)
    return states


def _from_termination_message(message: str) -> TrainerError | str:
    """A termination message as the trainer's TrainerError record, or the last log line the kubelet kept
    instead (FallbackToLogsOnError)."""
    try:
        return TrainerError.model_validate_json(message)
    except ValueError:
        lines = [line.strip() for line in message.splitlines() if any(ch.isalnum() for ch in line)]  # not torchrun's ==== rules
        return f"{lines[-1][:500] if lines else 'no message'} (the pod log's last line)"


def failure_cause(o: Observed, attempt: int) -> str:
    """Why the current attempt failed, in the words most useful to a user: a kill for memory (which leaves no
    record), the trainer's own records (error.json from rank 0, termination messages from every pod; a known
    cause beats an Unexpected one, as rank 0 often only hears that a peer went away), the log's tail, else
    Kubeflow's condition."""
    states = terminated_states(o.pods)
    # 137 is SIGKILL: the kernel's OOM killer (a pod its controller was deleting was stopped, not killed; see
    # terminated_states), unless a runner says it stopped the replica itself ("Killed").
    killed = next((t for t in states if t.get("reason") == "OOMKilled" or (t.get("exitCode") == 137 and t.get("reason") != "Killed")), None)
    # torchrun outlives a worker the OOM killer chose alone, and its failure summary in the log's tail says so.
    worker = next((t for t in states if TORCHRUN_SIGKILL.search(t.get("message") or "")), None)
    if killed is not None or worker is not None:
        how = f"exit {killed.get('exitCode')}, {killed.get('reason') or 'SIGKILL'}" if killed else "a torchrun worker got SIGKILL"
        memory = effective_resources(o.stage, o.pipeline)["memory"] if o.pipeline is not None else "?"
        return f"the trainer was killed for memory ({how}): raise spec.resources.memory (now {memory}) or {memory_knobs(o.stage.spec.type)}"
    said = [_from_termination_message(t["message"]) for t in states if t.get("message")]
    records = [r for r in [o.error, *said] if isinstance(r, TrainerError) and r.attempt == attempt]
    if records:
        return next((r for r in records if r.kind != "Unexpected"), records[0]).message
    if said:
        return str(said[0])
    if states:
        term = states[0]
        return f"{job_message(o.job or {})} (exit {term.get('exitCode')}, {term.get('reason') or 'Error'}); see the pod log"
    return job_message(o.job or {})




__all__ = ["Observed", "Plan", "CreateJob", "SetJobSuspended", "DeleteJob", "Event", "plan_stage", "is_done", "reads_for", "Reads",
           "StorageFault", "KUEUE_QUEUE_LABEL"]
