"""Files a trainer attempt leaves for the operator under its output URI: `progress.json` while it runs,
`results.json` when it finished, `error.json` when it failed. The trainer writes them through these types and the
planner reads them through the same ones."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from gradatim.api.base import Model

RESULTS_FILE = "results.json"  # under OutputLocation.uri: the finished run's headline metrics; written last
PROGRESS_FILE = "progress.json"  # under OutputLocation.uri: the running attempt's step, loss or reward, ETA


class RunFile(Model):
    # Read back by an operator that may be older or newer than the trainer that wrote the file: fields it does not
    # know are ignored rather than refused.
    model_config = ConfigDict(extra="ignore")


class RunProgress(RunFile):
    """How far a running attempt has got (progress.json, rewritten every few seconds)."""

    step: int = 0
    total_steps: int = 0
    eta_seconds: float | None = None
    checkpoint_uri: str | None = None
    """Where the attempt's resumable checkpoints go."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """The step's gauges: loss, learning_rate, reward_mean, tokens_per_second, ..."""
    activity: str | None = None
    """Work before the stage's own steps, such as training the builtin tiny-teacher."""


class RunResults(RunFile):
    """A finished run (results.json). Its presence under the stage's cache key is what marks the run complete."""

    metrics: dict[str, float] = Field(default_factory=dict)
    """Headline metrics: loss, pass@1, reward, acceptance rate; what a quality gate may name."""
    outputs: dict[str, str] = Field(default_factory=dict)
    """Output name → URI (`model`, `traces`, ...), for the stages downstream."""
    duration_seconds: float | None = None
    attempt: int | None = None
    cache_key: str | None = None
    history: list[dict[str, float]] = Field(default_factory=list)
    """Per logged step: loss, learning rate, throughput, ... for the report's curves."""
    reward_history: list[dict[str, float]] = Field(default_factory=list)
    """grpo: per logged step, the reward parts and completion lengths."""
    sharding: list[dict[str, Any]] = Field(default_factory=list)
    """Training types: what each rank held of the model (how it was sharded)."""
    engine: str | None = None
    """The generation engine that ran: hf, vllm or endpoint."""
    cpu_kernels: str | None = None
    """A CPU run: the kernels it computed with (gradatim/trainer/kernels.py). Another machine gives the same numbers
    where this line reads the same up to the CPU's name."""

ERROR_FILE = "error.json"  # under OutputLocation.uri: why the last failed attempt failed (rank 0 writes it)
# Where a container's termination message goes; the kubelet reads it into the pod's terminated state.
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_ENV = "GRADATIM_TERMINATION_LOG"  # overrides TERMINATION_LOG: tests, the pod runner and `gradatim run`
TERMINATION_MESSAGE_LIMIT = 4096  # bytes; the kubelet keeps no more of a termination message

ErrorKind = Literal["InvalidInput", "MissingInput", "ModelLoad", "Storage", "Endpoint", "OutOfMemory", "InvalidParams", "Unexpected"]


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
        return f"lower {stage_type}.maxBatchTokens (or gpuMemoryUtilization with the vLLM engine)"
    if stage_type == "decontaminate":
        return "split inputs.data into smaller datasets"
    return f"lower {stage_type}.microBatchSize or {stage_type}.maxLength, or set {stage_type}.sharding: fsdp"


CHUNKS_DIR = "chunks/"  # under OutputLocation.uri: one GenerateChunk record per finished chunk of a generate stage


class GenerateChunk(Model):
    """One finished chunk of a generate stage's prompts. Written after the chunk's part files, so its presence is
    what marks the chunk done: a retried stage skips it, and the last step builds each output's manifest from
    these records."""

    chunk: int
    """Which chunk: prompts [chunk × chunkSize, (chunk + 1) × chunkSize) of the stage's data, in order."""
    prompts: int
    samples: int
    correct: int
    """Samples math-verify judged correct."""
    pass_rate_sum: float
    """Sum over the chunk's prompts of their pass rate (for the stage's mean)."""
    kept_traces: int
    kept_prompts: int
    pairs: int
    prompt_tokens: int
    completion_tokens: int
    requests: int
    """Engine batches, or endpoint requests."""
    retries: int = 0
    """Endpoint requests sent again (timeouts, lost connections, 429, 5xx)."""
    seconds: float
    engine: str
    """The engine that generated it: hf, vllm or endpoint."""
    attempt: int
    files: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Each part file the chunk wrote, by its path under the stage's output (`traces/part-000003.jsonl`), with its
    size and sha256 for the output's manifest."""

    @staticmethod
    def name(chunk: int) -> str:
        return f"{CHUNKS_DIR}chunk-{chunk:06d}.json"
