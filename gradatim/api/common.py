"""Types shared by TrainingPipeline and TrainingStage: resources, storage, inputs, quality gates."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from gradatim.api.base import DNS1123_LABEL, MAX_STAGE_NAME, KeyRef, Model, Quantity, Rule, SecretKeyRef, rules

StageType = Literal["generate", "decontaminate", "midtrain", "sft", "dpo", "grpo", "eval"]
STAGE_TYPES: tuple[StageType, ...] = ("generate", "decontaminate", "midtrain", "sft", "dpo", "grpo", "eval")
TRAINING_TYPES: tuple[StageType, ...] = ("midtrain", "sft", "dpo", "grpo")

class Resources(Model):
    """Compute for one stage. Each field left out on a stage comes from its pipeline."""

    nodes: int | None = Field(default=None, ge=1, le=1024)
    """Number of nodes (pods): one Kubeflow `Master` plus `nodes - 1` `Worker` replicas."""
    gpus_per_node: int | None = Field(default=None, ge=0, le=64)
    """GPUs per node; also the number of `torchrun` processes per node (`nprocPerNode`). 0 runs on CPU."""
    gpu_resource_name: str | None = Field(default=None, max_length=253, pattern=r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
    """Extended resource name the GPUs are requested by, e.g. `nvidia.com/gpu` or `amd.com/gpu`."""
    cpu: Quantity | None = None
    """CPU request and limit per node, e.g. `32` or `31500m`."""
    memory: Quantity | None = None
    """Memory request and limit per node, e.g. `512Gi`."""
    shm_size: Quantity | None = None
    """Size of the memory-backed `/dev/shm` volume; NCCL and data loaders need more than the default 64Mi."""
    scratch_size: Quantity | None = None
    """Size of the node-local scratch volume (an emptyDir at `/scratch`) where inputs are downloaded and tokenised
    once per pod; it must hold the input model, the datasets and their Arrow cache."""


class PipelineResources(Resources):
    """Default compute for the pipeline's stages; a stage overrides any field it sets."""

    nodes: int = Field(default=1, ge=1, le=1024)
    """Number of nodes (pods): one Kubeflow `Master` plus `nodes - 1` `Worker` replicas."""
    gpus_per_node: int = Field(default=8, ge=0, le=64)
    """GPUs per node; also the number of `torchrun` processes per node (`nprocPerNode`). 0 runs on CPU."""
    gpu_resource_name: str = Field(default="nvidia.com/gpu", max_length=253, pattern=r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
    """Extended resource name the GPUs are requested by, e.g. `nvidia.com/gpu` or `amd.com/gpu`."""
    cpu: Quantity = "32"
    """CPU request and limit per node, e.g. `32` or `31500m`."""
    memory: Quantity = "256Gi"
    """Memory request and limit per node, e.g. `512Gi`."""
    shm_size: Quantity = "64Gi"
    """Size of the memory-backed `/dev/shm` volume; NCCL and data loaders need more than the default 64Mi."""
    scratch_size: Quantity = "200Gi"
    """Size of the node-local scratch volume (an emptyDir at `/scratch`) where inputs are downloaded and tokenised
    once per pod; it must hold the input model, the datasets and their Arrow cache."""


class S3Storage(Model):
    """Where stage outputs go: `s3://<bucket>/<prefix><namespace>/<pipeline>/<stage>/<cache key>/`."""

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    """S3 bucket name."""
    prefix: str = Field(default="", max_length=512, pattern=r"^$|^[A-Za-z0-9!_.*'()/-]*/$")
    """Key prefix inside the bucket; empty, or ending in `/`."""
    endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s/]+(/.*)?$")
    """S3 endpoint URL for non-AWS stores (MinIO, SeaweedFS, Ceph); left out for AWS."""
    region: str = Field(default="us-east-1", min_length=1, max_length=64)
    """S3 region."""
    secret_ref: SecretKeyRef
    """Secret with the S3 credentials, mounted into trainer pods as environment variables."""


SOURCE_RULES = (
    Rule("!has(self.output) || has(self.fromStage)", "output selects an output of fromStage; set fromStage too", ".output", "FieldValueForbidden"),
    Rule("!has(self.revision) || has(self.hf)", "revision pins a Hugging Face Hub id; set hf too", ".revision", "FieldValueForbidden"),
    # has(self.hf) first: without it a revision with no hf also failed to evaluate ("no such key: hf") beside the rule above
    Rule("!has(self.revision) || !has(self.hf) || !self.hf.contains('@')", "give the revision once: in revision or after @ in hf", ".revision",
         "FieldValueForbidden"),
)


class Source(
    Model,
    json_schema_extra=rules(
        Rule(
            "[has(self.hf), has(self.uri), has(self.fromStage), has(self.builtin)].filter(x, x).size() == 1",
            "set exactly one of hf, uri, fromStage or builtin",
        ),
        *SOURCE_RULES,
    ),
):
    """A model or dataset: exactly one of `hf`, `uri`, `fromStage` or `builtin`."""

    hf: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?(@[A-Za-z0-9_.-]+)?$")
    """Hugging Face Hub id, optionally with a revision after `@`: `microsoft/Phi-4-mini-instruct@main`. A gated
    repository needs `HF_TOKEN` in the pipeline's `env`, from a Secret (`valueFrom.secretKeyRef`)."""
    revision: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_./-]+$")
    """Revision of the `hf` repository: a branch, tag or commit sha. Pin a commit for a reproducible run."""
    uri: str | None = Field(default=None, min_length=1, max_length=2048, pattern=r"^(s3://[a-z0-9][a-z0-9.-]*[a-z0-9]/\S*|/\S*)$")
    """An `s3://bucket/key/` URI or an absolute path inside the trainer container (e.g. a mounted volume)."""
    from_stage: str | None = Field(default=None, min_length=1, max_length=MAX_STAGE_NAME, pattern=DNS1123_LABEL)
    """Name of a stage of the same pipeline whose output this is; it must also be listed in `dependsOn`."""
    output: str | None = Field(default=None, max_length=63, pattern=r"^[a-z][a-z0-9-]*$")
    """Which output of `fromStage`: `model`, `traces`, `pairs`, `prompts`, `data`. Left out: the main output of its type."""
    builtin: str | None = Field(default=None, max_length=128, pattern=r"^[a-z][a-z0-9-]*(:[a-z0-9-]+)*$")
    """A generator shipped in the trainer image, for tests and the quickstart: e.g. `tiny-math:train`, `tiny-model`."""


def _column() -> Any:
    return Field(default=None, min_length=1, max_length=256)


class Fields(
    Model,
    json_schema_extra=rules(
        Rule("!has(self.choices) || has(self.answer)", "multiple choice needs answer: the column holding the correct choice (its text, index or letter)", ".answer", "FieldValueRequired"),
    ),
):
    """Which column of the dataset holds what, for datasets published with their own names (MATH-500 and AIME use
    `problem`; GPQA uses `Question`, `Correct Answer`, `Incorrect Answer 1..3`). Left out: Gradatim's own names."""

    prompt: str | None = _column()
    """Column with the problem or prompt (default `prompt`)."""
    answer: str | None = _column()
    """Column with the gold answer (default `answer`). With `choices`: the correct choice, as its text, its index
    among the choices (0-based) or its letter."""
    completion: str | None = _column()
    """Column with a worked solution or reasoning trace, for training data (default `completion`, else `solution`)."""
    id: str | None = _column()
    """Column with a stable record id (default `id`; else the record's index)."""
    choices: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(default=None, min_length=1, max_length=26)
    """Multiple choice: the columns holding the options (GPQA: `Correct Answer`, `Incorrect Answer 1`, ...), or one
    column holding a list of options (MMLU: `choices`). The options are shuffled per record (seeded by its id), rendered
    under the prompt as `A) ...`, and a completion is graded by the letter it answers."""


class Endpoint(Model):
    """A model served behind an OpenAI-compatible API (vLLM, SGLang, TGI, a hosted provider): a teacher too large to
    load inside the stage, such as DeepSeek-R1."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^\s/]+(/\S*)?$")
    """Base URL of the API, ending before `/chat/completions`, e.g. `http://r1.teachers.svc:8000/v1`."""
    model: str = Field(min_length=1, max_length=256)
    """The model name the server serves, as its `/v1/models` lists it."""
    api_key_secret_ref: KeyRef | None = None
    """Secret key holding the API key, sent as a bearer token; left out: no key."""
    max_concurrency: int = Field(default=32, ge=1, le=4096)
    """Requests in flight at once, across all of the stage's processes."""
    timeout_seconds: int = Field(default=1800, ge=1, le=86400)
    """Longest wait for one response; a 32K-token reasoning trace takes minutes."""
    max_retries: int = Field(default=8, ge=0, le=100)
    """Retries of one request on a timeout, a lost connection, 408, 409, 429 or 5xx, with exponential backoff."""
    samples_per_request: int = Field(default=0, ge=0, le=1024)
    """Completions asked for in one request (`n`); 0: all of a prompt's samples at once. Set 1 for servers that
    ignore `n`; either way missing completions are asked for again."""


class ModelSource(
    Source,
    json_schema_extra=rules(
        Rule(
            "[has(self.hf), has(self.uri), has(self.fromStage), has(self.builtin), has(self.endpoint)].filter(x, x).size() == 1",
            "set exactly one of hf, uri, fromStage, builtin or endpoint",
        ),
        *SOURCE_RULES,
    ),
):
    """A model: exactly one of `hf`, `uri`, `fromStage`, `builtin` or (for `generate`) `endpoint`."""

    endpoint: Endpoint | None = None
    """A teacher behind an OpenAI-compatible API, for `generate` only: prompts are sent as chat messages and the
    replies (with a reasoning model's `reasoning_content` put back inside `<think>`) are verified as any rollout."""


class Dataset(Source):
    """A dataset input; `name` labels its results (e.g. one eval set)."""

    name: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
    """Short name used in metrics and reports, e.g. `math500`. Defaults to the source's last path segment."""
    config: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """The dataset's configuration (subset), as `load_dataset(id, name=...)` takes it, e.g. `gpqa_diamond`."""
    split: str = Field(default="train", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-\[\]:%]+$")
    """Which split to read (`train`, `test`, `validation`, or a slice like `train[:1000]`); MATH-500 has only `test`."""
    fields: Fields | None = None
    """Which columns hold the prompt, answer, completion, id and choices, when they are not named as Gradatim names them."""


class Inputs(
    Model,
    json_schema_extra=rules(
        Rule(
            "self.evalData.all(a, !has(a.name) || self.evalData.exists_one(b, has(b.name) && b.name == a.name))",
            "evalData names must be unique",
            ".evalData",
        ),
    ),
):
    """What a stage reads. Which entries a type requires is checked against `type`."""

    model: ModelSource | None = None
    """The model: the policy to train, the teacher for `generate`, the model under test for `eval`."""
    data: list[Dataset] = Field(default_factory=list, max_length=32)
    """Training data, prompts (for `generate` and `grpo`) or preference pairs (for `dpo`), concatenated in order."""
    eval_data: list[Dataset] = Field(default_factory=list, max_length=32)
    """Eval sets: scored by `eval`, removed from `data` by `decontaminate`, used for validation by training types."""


GateComparison = Literal[">", ">=", "<", "<="]


class QualityGate(Model):
    """A check on one of the stage's headline metrics; when it fails the stage fails and blocks its downstream stages."""

    metric: str = Field(min_length=1, max_length=128, pattern=r"^[a-z][a-z0-9_@.:/-]*$")
    """Headline metric from the stage's results: e.g. `pass@1` or `pass@1/math500` (eval), `train_loss` (training), `acceptance_rate` (generate), `removed_fraction` (decontaminate)."""
    comparison: GateComparison = ">="
    """How the metric compares with the threshold for the gate to pass."""
    threshold: float
    """The value the metric is compared with."""
