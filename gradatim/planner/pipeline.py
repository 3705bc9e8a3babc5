"""A TrainingPipeline's status, aggregated from its stages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from gradatim.api.pipeline import StageSummary, TrainingPipeline, TrainingPipelineStatus
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


def plan_pipeline(pipeline: TrainingPipeline, stages: Mapping[str, TrainingStage], now: datetime) -> TrainingPipelineStatus:
    previous = pipeline.status or TrainingPipelineStatus()
    generation = pipeline.metadata.get("generation")
    order = topological_order(stages)
    phases = {n: (stages[n].status.phase if stages[n].status and stages[n].status.phase else "Pending") for n in order}
    done = [n for n, p in phases.items() if p in ("Succeeded", "Cached")]
    running = [n for n, p in phases.items() if p in ("Running", "Retrying")]
    failed = [n for n, p in phases.items() if p in ("Failed", "Invalid")]
    blocked = [n for n, p in phases.items() if p == "Blocked"]

    if not stages:
        phase, reason, message = "Pending", "NoStages", "no TrainingStage names this pipeline yet"
    elif failed:
        phase, reason, message = "Failed", "StageFailed", "; ".join(f"{n}: {_message(stages[n])}" for n in failed)
    elif running:
        phase, reason, message = "Running", "StagesRunning", f"running {', '.join(running)}"
    elif blocked:
        phase, reason, message = "Blocked", "StageBlocked", "; ".join(f"{n}: {_message(stages[n])}" for n in blocked)
    elif len(done) == len(stages):
        phase, reason, message = "Succeeded", "AllStagesDone", f"all {len(stages)} stages done"
    elif pipeline.spec.suspend or any(p == "Suspended" for p in phases.values()):
        phase, reason, message = "Suspended", "Suspended", "suspended"
    else:
        phase, reason, message = "Pending", "WaitingForStages", f"{len(done)}/{len(stages)} stages done"

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
            for n in order
        ],
        start_time=min(starts) if starts else None,
        completion_time=max(ends) if phase in ("Succeeded", "Failed") and ends else None,
    )
