"""A TrainingPipeline's status, aggregated from its stages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from gradatim.api.pipeline import STAGE_SUMMARY_LIMIT, StageSummary, TrainingPipeline, TrainingPipelineStatus
from gradatim.api.stage import TrainingStage
from gradatim.planner.conditions import conditions_for
from gradatim.planner.graph import topological_order


def _message(stage: TrainingStage) -> str:
    st = stage.status
    if st is None:
        return ""
    for type_ in ("Stalled", "Reconciling"):
        found = next((c.message for c in st.conditions if c.type == type_ and c.status == "True" and c.message), None)
        if found:
            return found[:1024]
    return ""


# Which stages a pipeline's status lists first when it cannot list them all: those that need attention.
LISTING_ORDER = {"Failed": 0, "Invalid": 0, "Blocked": 1, "Retrying": 2, "Running": 2, "Suspended": 3, "Pending": 4, "Succeeded": 5, "Cached": 5}
MESSAGE_LIMIT = 4096  # of a condition message that lists stages; the stages' own statuses hold the rest


def listed(order: list[str], phases: Mapping[str, str]) -> list[str]:
    """The stages the status lists, in dependency order: all of them, or the STAGE_SUMMARY_LIMIT that most need attention."""
    if len(order) <= STAGE_SUMMARY_LIMIT:
        return order
    position = {n: i for i, n in enumerate(order)}
    keep = set(sorted(order, key=lambda n: (LISTING_ORDER.get(phases[n], 4), position[n]))[:STAGE_SUMMARY_LIMIT])
    return [n for n in order if n in keep]


def stage_list(parts: list[str]) -> str:
    """`; `-joined parts, cut to MESSAGE_LIMIT with a count of those left out."""
    out: list[str] = []
    for i, part in enumerate(parts):
        if sum(len(p) + 2 for p in out) + len(part) > MESSAGE_LIMIT - 40:
            return "; ".join(out) + f"; and {len(parts) - i} more"
        out.append(part)
    return "; ".join(out)


def _phase(stage: TrainingStage, key: str | None) -> str:
    """The stage's phase, as far as the pipeline is concerned: done under an old content key (an upstream spec
    changed and the stage was not reconciled since) is not done."""
    st = stage.status
    if st is None or st.phase is None:
        return "Pending"
    if st.phase in ("Succeeded", "Cached") and key is not None and st.cache_key != key:
        return "Pending"
    return st.phase


def plan_pipeline(pipeline: TrainingPipeline, stages: Mapping[str, TrainingStage], now: datetime, keys: Mapping[str, str] | None = None) -> TrainingPipelineStatus:
    """The pipeline's status from its stages'; with `keys` (the stages' content keys), a stage done under an old
    key counts as pending."""
    previous = pipeline.status or TrainingPipelineStatus()
    generation = pipeline.metadata.get("generation")
    order = topological_order(stages)
    keys = keys or {}
    phases = {n: _phase(stages[n], keys.get(n)) for n in order}
    done = [n for n, p in phases.items() if p in ("Succeeded", "Cached")]
    running = [n for n, p in phases.items() if p in ("Running", "Retrying")]
    failed = [n for n, p in phases.items() if p in ("Failed", "Invalid")]
    blocked = [n for n, p in phases.items() if p == "Blocked"]

    if not stages:
        phase, reason, message = "Pending", "NoStages", "no TrainingStage names this pipeline yet"
    elif failed:
        phase, reason, message = "Failed", "StageFailed", stage_list([f"{n}: {_message(stages[n])}" for n in failed])
    elif running:
        phase, reason, message = "Running", "StagesRunning", "running " + stage_list(running).replace("; ", ", ")
    elif blocked:
        phase, reason, message = "Blocked", "StageBlocked", stage_list([f"{n}: {_message(stages[n])}" for n in blocked])
    elif len(done) == len(stages):
        phase, reason, message = "Succeeded", "AllStagesDone", f"all {len(stages)} stages done"
    elif pipeline.spec.suspend or any(p == "Suspended" for p in phases.values()):
        phase, reason, message = "Suspended", "Suspended", "suspended"
    else:
        phase, reason, message = "Pending", "WaitingForStages", f"{len(done)}/{len(stages)} stages done"

    shown = listed(order, phases)
    starts = [s.status.start_time for s in stages.values() if s.status and s.status.start_time]
    ends = [s.status.completion_time for s in stages.values() if s.status and s.status.completion_time]
    return TrainingPipelineStatus(
        observed_generation=generation,
        phase=phase,
        conditions=conditions_for(phase, reason, message, generation, now, previous.conditions),
        progress=f"{len(done)}/{len(stages)}",
        stages_total=len(stages),
        stages_done=len(done),
        current_stage=",".join(running)[:1024],
        stages=[
            StageSummary(name=n, type=stages[n].spec.type, phase=phases[n], attempt=stages[n].status.attempt if stages[n].status else 0, message=_message(stages[n]))
            for n in shown
        ],
        stages_not_listed=len(order) - len(shown),
        start_time=min(starts) if starts else None,
        completion_time=max(ends) if phase in ("Succeeded", "Failed") and ends else None,
    )
