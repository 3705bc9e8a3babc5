"""Reading a Kubeflow PyTorchJob's state from its conditions, as Kubeflow's own controller writes them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any


class JobState(Enum):
    PENDING = "Pending"  # created, no pod running yet (or waiting for Kueue)
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


def _true(conditions: list[Mapping[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def job_state(job: Mapping[str, Any]) -> JobState:
    """Terminal conditions first, never "the last condition": `Failed` is terminal in Kubeflow, and a job with
    a Master is `Succeeded` when the master is, whatever else the list holds."""
    conditions = (job.get("status") or {}).get("conditions") or []
    if _true(conditions, "Failed"):
        return JobState.FAILED
    if _true(conditions, "Succeeded"):
        return JobState.SUCCEEDED
    if _true(conditions, "Suspended"):
        return JobState.SUSPENDED
    if _true(conditions, "Running") or _true(conditions, "Restarting"):
        return JobState.RUNNING
    return JobState.PENDING
