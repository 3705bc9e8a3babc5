"""Kubeflow training-operator v1 semantics, as pure functions, for `gradatim run` only: a local run has no
cluster and no controllers. On the embedded control plane the real training-operator runs (see controllers.py).

Copied in behaviour (not code) from kubeflow/training-operator, branch release-1.9:
- conditions and their reasons: pkg/util/status.go (`UpdateJobConditions`, `setCondition`, `NewReason`):
  https://github.com/kubeflow/training-operator/blob/release-1.9/pkg/util/status.go
  `Failed` is terminal; `Running` and `Restarting` replace each other; setting `Succeeded` or `Failed` flips
  `Running` to False; reasons are `<Kind><Reason>` (`PyTorchJobCreated`, `PyTorchJobRunning`, ...).
- when a job with a Master is done: pkg/controller.v1/pytorch/pytorchjob_controller.go `UpdateJobStatus`:
  https://github.com/kubeflow/training-operator/blob/release-1.9/pkg/controller.v1/pytorch/pytorchjob_controller.go
  Succeeded when the master replica succeeded; with restartPolicy Never a failed replica fails the job.
- suspend and deadline: pkg/controller.v1/common/job.go:
  https://github.com/kubeflow/training-operator/blob/release-1.9/pkg/controller.v1/common/job.go
  suspend deletes pods, sets `Running=False` and `Suspended=True`; resume sets `Suspended=False` with reason
  `PyTorchJobResumed` and resets `startTime`; an exceeded `activeDeadlineSeconds` fails the job.
- the env each replica gets: pkg/controller.v1/pytorch/envvar.go and master.go:
  https://github.com/kubeflow/training-operator/blob/release-1.9/pkg/controller.v1/pytorch/envvar.go
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

KIND = "PyTorchJob"
DEFAULT_PORT = 23456


def reason(what: str) -> str:
    return f"{KIND}{what}"


def _ts(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def has_condition(status: Mapping[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in status.get("conditions") or [])


def set_condition(status: dict[str, Any], type_: str, value: bool, why: str, message: str, now: datetime) -> dict[str, Any]:
    """A copy of `status` with the condition set as Kubeflow's `setCondition` would."""
    status = copy.deepcopy(status)
    conditions = status.setdefault("conditions", [])
    if has_condition(status, "Failed"):
        return status  # terminal
    new_status = "True" if value else "False"
    old = next((c for c in conditions if c["type"] == type_), None)
    if old is not None and old["status"] == new_status and old.get("reason") == why and old.get("message") == message:
        return status
    cond = {"type": type_, "status": new_status, "reason": why, "message": message, "lastUpdateTime": _ts(now),
            "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == new_status else _ts(now)}
    drop = {type_}
    if type_ in ("Running", "Restarting") and value:
        drop |= {"Running", "Restarting"}
    status["conditions"] = [c for c in conditions if c["type"] not in drop] + [cond]
    if type_ in ("Succeeded", "Failed") and value:
        for c in status["conditions"]:
            if c["type"] == "Running" and c["status"] == "True":
                c.update(status="False", lastTransitionTime=_ts(now), lastUpdateTime=_ts(now))
    return status


def nproc_per_node(job: Mapping[str, Any]) -> int:
    """`spec.nprocPerNode` as an integer; `auto`, `cpu` and `gpu` count as 1 for WORLD_SIZE, as in Kubeflow."""
    value = str((job.get("spec") or {}).get("nprocPerNode") or "auto")
    return int(value) if value.isdigit() else 1


def replica_counts(job: Mapping[str, Any]) -> dict[str, int]:
    specs = (job.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    return {rtype: int(spec.get("replicas", 1)) for rtype, spec in specs.items()}


def replica_env(job: Mapping[str, Any], rtype: str, index: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The env Kubeflow injects into every container of a replica; the master address is our loopback."""
    counts = replica_counts(job)
    total = sum(counts.values())
    rank = index if rtype == "Master" else index + counts.get("Master", 0)
    env = {
        "PYTHONUNBUFFERED": "1",
        "MASTER_ADDR": master_addr,
        "PET_MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "PET_MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(total * nproc_per_node(job)),
        "RANK": str(rank),
        "PET_NODE_RANK": str(rank),
        "PET_NNODES": str(total),
    }
    nproc = (job.get("spec") or {}).get("nprocPerNode")
    if nproc is not None:
        env["PET_NPROC_PER_NODE"] = str(nproc)
    return env


def should_restart(job: Mapping[str, Any], rtype: str, exit_code: int | None) -> bool:
    """Whether a replica that exited with `exit_code` is restarted rather than failing the job:
    `OnFailure` and `Always` restart; `ExitCode` restarts on 128-255 (signals, retryable) and fails on 1-127."""
    spec = ((job.get("spec") or {}).get("pytorchReplicaSpecs") or {}).get(rtype) or {}
    policy = spec.get("restartPolicy", "OnFailure")  # PyTorchJob's default
    if policy in ("OnFailure", "Always"):
        return True
    if policy == "ExitCode":
        return exit_code is not None and (exit_code < 0 or exit_code >= 128)
    return False


def pod_name(job_name: str, rtype: str, index: int) -> str:
    return f"{job_name}-{rtype.lower()}-{index}"


def run_policy(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return (job.get("spec") or {}).get("runPolicy") or {}


def messages(name: str) -> dict[str, str]:
    return {
        "Created": f"PyTorchJob {name} is created.",
        "Running": f"PyTorchJob {name} is running.",
        "Succeeded": f"PyTorchJob {name} is successfully completed.",
        "Suspended": f"PyTorchJob {name} is suspended.",
        "Resumed": f"PyTorchJob {name} is resumed.",
        "Deadline": f"Job {name} has failed because it was active longer than specified deadline",
        "Backoff": f"Job {name} has failed because it has reached the specified backoff limit",
    }
