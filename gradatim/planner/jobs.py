"""The two Kubeflow job kinds a stage runs as, and how to read each one's state, as its own controller writes it.

- `PyTorchJob` (kubeflow.org/v1, training-operator v1.9): conditions Created, Running, Restarting, Suspended,
  Succeeded, Failed; `status.startTime` (reset on resume); suspend at `spec.runPolicy.suspend`.
- `TrainJob` (trainer.kubeflow.org/v1alpha1, Trainer v2.3, on JobSet): conditions Suspended, Complete, Failed;
  `status.jobsStatus` counts each replicated job's active pods; suspend at `spec.suspend`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any


class JobState(Enum):
    PENDING = "Pending"  # created, no pod running yet (or waiting for Kueue)
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobKind:
    backend: str  # the name in spec.backend and status.backend
    group: str
    version: str
    plural: str
    kind: str
    container: str  # the trainer container's name in each pod
    job_label: str  # the label the controller puts on each pod of the job, valued with the job's name

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


PYTORCHJOB = JobKind("pytorchjob", "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", "pytorch", "training.kubeflow.org/job-name")
TRAINJOB = JobKind("trainjob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", "node", "jobset.sigs.k8s.io/jobset-name")
KINDS = {k.backend: k for k in (PYTORCHJOB, TRAINJOB)}


def kind_of(job: Mapping[str, Any]) -> JobKind:
    return TRAINJOB if job.get("kind") == TRAINJOB.kind else PYTORCHJOB


def choose_backend(wanted: str, installed: frozenset[str]) -> str:
    """`auto` is PyTorchJob where its CRD is installed (the design Gradatim was asked for), TrainJob where only
    Trainer v2 is; an explicit choice stands (a missing CRD then fails the job's creation with the server's words)."""
    if wanted != "auto":
        return wanted
    return "trainjob" if "trainjob" in installed and "pytorchjob" not in installed else "pytorchjob"


def _true(conditions: list[Mapping[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def job_state(job: Mapping[str, Any]) -> JobState:
    """Terminal conditions first, never "the last condition": `Failed` is terminal in Kubeflow, and a job with
    a Master is `Succeeded` when the master is, whatever else the list holds."""
    status = job.get("status") or {}
    conditions = status.get("conditions") or []
    if _true(conditions, "Failed"):
        return JobState.FAILED
    if _true(conditions, "Succeeded") or _true(conditions, "Complete"):
        return JobState.SUCCEEDED
    if _true(conditions, "Suspended"):
        return JobState.SUSPENDED
    if _true(conditions, "Running") or _true(conditions, "Restarting"):
        return JobState.RUNNING
    if any((j.get("active") or 0) > 0 for j in status.get("jobsStatus") or []):
        return JobState.RUNNING
    return JobState.PENDING


def job_suspend_flag(job: Mapping[str, Any]) -> bool:
    spec = job.get("spec") or {}
    if kind_of(job) is TRAINJOB:
        return bool(spec.get("suspend"))
    return bool((spec.get("runPolicy") or {}).get("suspend"))


def suspend_patch(kind: JobKind, suspended: bool) -> dict[str, Any]:
    if kind is TRAINJOB:
        return {"spec": {"suspend": suspended}}
    return {"spec": {"runPolicy": {"suspend": suspended}}}


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def job_start_time(job: Mapping[str, Any]) -> datetime | None:
    """When the job last started: a PyTorchJob's status.startTime (reset on resume); a TrainJob's creation, or its
    last resume (Suspended turning False). None for a job still suspended (queued for Kueue)."""
    status = job.get("status") or {}
    if kind_of(job) is PYTORCHJOB:
        return _time(status.get("startTime"))
    if job_suspend_flag(job):
        return None
    resumed = [c.get("lastTransitionTime") for c in status.get("conditions") or [] if c.get("type") == "Suspended" and c.get("status") == "False"]
    return _time(resumed[-1] if resumed else (job.get("metadata") or {}).get("creationTimestamp"))


def job_message(job: Mapping[str, Any]) -> str:
    for c in reversed((job.get("status") or {}).get("conditions") or []):
        if c.get("type") == "Failed" and c.get("status") == "True":
            return c.get("message") or c.get("reason") or "failed"
    return "failed"
