"""What the shell looks at for one stage. The planner decides what to observe as well as what to do: a stage that
is done reads nothing, a running one only its progress, a failed attempt its error record and pods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gradatim.api.stage import TrainingStage
from gradatim.planner.jobs import JobState, job_state

SETTLED = ("Succeeded", "Cached", "Failed")


@dataclass(frozen=True)
class Reads:
    results: bool = False
    """results.json under the stage's key: a cache hit, or how the current attempt ended."""
    progress: bool = False
    """progress.json: the running attempt's step, loss and checkpoint."""
    error: bool = False
    """error.json: why the current attempt failed, in the trainer's words."""
    pods: bool = False
    """The current job's pods: their exit codes and termination messages (an OOM kill leaves no other trace)."""
    events: bool = False
    """The job's pod-creation events: a pod its controller could not create (no such ServiceAccount or
    PriorityClass, over quota) is told only there, and the job would wait forever."""

    @property
    def storage(self) -> bool:
        return self.results or self.progress or self.error


@dataclass(frozen=True)
class StorageFault:
    """A failed S3 read, in words naming the pipeline field to check."""

    message: str
    transient: bool
    """True for what may pass by itself (unreachable, timeouts, 5xx, throttling); False for what a user must fix
    (no such bucket, refused credentials)."""


def is_done(stage: TrainingStage, key: str | None) -> bool:
    """Succeeded (or cached) for its current spec and key, with its gate passed."""
    st = stage.status
    return (
        st is not None
        and st.phase in ("Succeeded", "Cached")
        and st.cache_key == key
        and st.observed_generation == stage.metadata.get("generation")
        and (st.gate is None or st.gate.passed)
    )


def is_settled(stage: TrainingStage, key: str | None) -> bool:
    """Finished (succeeded, cached or failed) for its current spec and content key: nothing under its key will
    change, so its status stands without reading anything."""
    st = stage.status
    return (st is not None and key is not None and st.phase in SETTLED and st.cache_key == key
            and st.observed_generation == stage.metadata.get("generation"))


def reads_for(stage: TrainingStage, job: Mapping[str, Any] | None, keys: Mapping[str, str], siblings: Mapping[str, TrainingStage]) -> Reads:
    """What to read for `stage`, whose current job is `job`; `keys` are the content keys of its pipeline's stages."""
    st, key = stage.status, keys.get(stage.metadata["name"])
    if key is None or is_settled(stage, key):
        return Reads()
    if job is None and st is not None and st.phase == "Retrying" and st.job_name and st.cache_key == key:
        return Reads(results=True, pods=True)  # the failed attempt's job is deleted: are its pods gone too?
    if job is None:
        # A run of this content may have finished before (a cache hit); worth a look once the stage could start.
        # Until then its dependencies are not done, and when they are, it is reconciled again.
        deps = [siblings.get(d) for d in stage.spec.depends_on]
        waiting = any(d is None or not is_done(d, keys.get(d.metadata["name"])) for d in deps)
        return Reads() if waiting else Reads(results=True)
    if st is None or st.cache_key != key:
        return Reads(results=True)  # new content: a run of it may have finished before
    state = job_state(job)
    if state is JobState.RUNNING:
        return Reads(progress=True)
    if state is JobState.SUCCEEDED:
        return Reads(results=True, progress=True)  # progress: the last step count, for the final status
    if state is JobState.FAILED:
        return Reads(results=True, error=True, pods=True)
    if state is JobState.PENDING:
        return Reads(events=True)
    return Reads()  # suspended: nothing new
