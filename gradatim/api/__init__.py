"""The CRD types (group gradatim.io, version v1alpha1): the single source of truth for `crds/`."""

from gradatim.api.base import API_VERSION, GROUP, VERSION, Condition
from gradatim.api.pipeline import TrainingPipeline, TrainingPipelineSpec, TrainingPipelineStatus
from gradatim.api.stage import TrainingStage, TrainingStageSpec, TrainingStageStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "TrainingPipeline",
    "TrainingPipelineSpec",
    "TrainingPipelineStatus",
    "TrainingStage",
    "TrainingStageSpec",
    "TrainingStageStatus",
]
