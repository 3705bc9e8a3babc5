"""Files a trainer attempt leaves for the operator, beside RESULTS_FILE and PROGRESS_FILE: the record of why it
failed. The trainer writes it through this type and the planner reads it through the same one."""

from __future__ import annotations

from typing import Literal

from gradatim.api.base import Model

ERROR_FILE = "error.json"  # under OutputLocation.uri: why the last failed attempt failed (rank 0 writes it)
# Where a container's termination message goes; the kubelet reads it into the pod's terminated state.
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_ENV = "GRADATIM_TERMINATION_LOG"  # overrides TERMINATION_LOG: tests and the local job runner
TERMINATION_MESSAGE_LIMIT = 4096  # bytes; the kubelet keeps no more of a termination message

ErrorKind = Literal["InvalidInput", "MissingInput", "ModelLoad", "Storage", "OutOfMemory", "InvalidParams", "Unexpected"]


class TrainerError(Model):
    """Why a trainer attempt failed, in one line that names the field or input and the fix."""

    message: str
    """One line: the field or input, what is wrong, what to change."""
    field: str | None = None
    """The spec field to change, e.g. `inputs.model` or `sft.microBatchSize`; None when unknown."""
    kind: ErrorKind
    """What sort of failure, for machines."""
    rank: int = 0
    """The torchrun rank that failed."""
    attempt: int
    """The attempt (job) that failed; a retry's record replaces it."""
    exit_code: int | None = None
    """The exit status the trainer process ended with."""

    def termination_message(self) -> str:
        """The record as JSON within the kubelet's limit: the message is shortened until it fits."""
        def dump(message: str) -> str:
            return self.model_copy(update={"message": message}).model_dump_json(by_alias=True, exclude_none=True)

        def fits(n: int) -> bool:
            return len(dump(self.message[:n] + " ...").encode()) <= TERMINATION_MESSAGE_LIMIT

        text = dump(self.message)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        low, high = 0, len(self.message)  # the longest head that fits (JSON escapes make some characters longer)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(mid) else (low, mid - 1)
        return dump(self.message[:low] + " ...")

def memory_knobs(stage_type: str) -> str:
    """The spec fields that shrink a stage type's memory use, as advice."""
    if stage_type == "grpo":
        return "lower grpo.microBatchSize or grpo.maxCompletionLength, or set grpo.sharding: fsdp"
    if stage_type in ("generate", "eval"):
        return f"lower {stage_type}.batchSize or {stage_type}.maxNewTokens"
    if stage_type == "decontaminate":
        return "split inputs.data into smaller datasets"
    return f"lower {stage_type}.microBatchSize or {stage_type}.maxLength, or set {stage_type}.sharding: fsdp"
