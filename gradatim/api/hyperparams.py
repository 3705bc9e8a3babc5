"""Typed hyperparameters, one block per stage type (`spec.<type>`). Defaults follow the Phi-4 reports."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gradatim.api.base import Model, Rule, rules

PHI4_REASONING_SYSTEM_MESSAGE = (
    "You are Phi, a language model trained by Microsoft to help users. Your role as an assistant involves "
    "thoroughly exploring questions through a systematic thinking process before providing the final precise "
    "and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, "
    "exploration, reassessment, reflection, backtracing, and iteration to develop well-considered thinking "
    "process. Please structure your response into two main sections: Thought and Solution using the specified "
    "format: <think> {Thought section} </think> {Solution section}. In the Thought section, detail your "
    "reasoning process in steps. Each step should include detailed considerations such as analysing questions, "
    "summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, "
    "refining any errors, and revisiting previous steps. In the Solution section, based on various attempts, "
    "explorations, and reflections from the Thought section, systematically present the final solution that "
    "you deem correct. The Solution section should be logical, accurate, and concise and detail necessary "
    "steps needed to reach the conclusion. Now, try to solve the following question through the above guidelines:"
)

NO_PACKING = Rule(
    "!self.packing",
    "packing is only supported for midtrain and sft stages; remove packing or set it to false",
    ".packing",
    "FieldValueForbidden",
)


class Sampling(Model):
    """How completions are sampled."""

    temperature: float = Field(default=0.8, ge=0.0, le=4.0)
    """Sampling temperature; 0 is greedy. Phi-4-reasoning uses 0.8."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    top_k: int = Field(default=50, ge=0, le=100000)
    """Top-k sampling; 0 turns it off."""
    max_new_tokens: int = Field(default=32768, ge=1, le=1048576)
    """Upper bound on generated tokens per completion."""


EngineName = Literal["auto", "vllm", "hf"]
HF_ENGINE_SINGLE_GPU = Rule("self.engine != 'hf' || self.tensorParallelSize == 1",
                            "tensorParallelSize splits a model across GPUs in the vLLM engine; set engine to vllm or auto, or tensorParallelSize to 1",
                            ".tensorParallelSize")


class Engine(Model):
    """Which engine generates, and how it fits on the GPUs."""

    engine: EngineName = "auto"
    """`vllm` (paged KV cache, continuous batching), `hf` (transformers' `generate`) or `auto`: vLLM when it is
    installed and the processes have GPUs, else transformers (on CPU vLLM's start-up outweighs a small run)."""
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    """vLLM: GPUs one engine splits the model across, within a node (a node's GPUs form gpusPerNode /
    tensorParallelSize engines; nodes add engines: data parallel)."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    """vLLM: share of each GPU's memory the engine takes for weights and its KV cache."""


class GenerationBudget(Engine):
    """Engine settings of the stages that sample offline (`generate`, `eval`)."""

    max_batch_tokens: int = Field(default=65536, ge=256, le=16777216)
    """Tokens (prompt plus new tokens, over every sequence) generated together: it bounds the KV cache, whatever the
    prompt count. transformers: sequences are batched up to it; vLLM: its per-step token budget
    (`max_num_batched_tokens`). About 200 KB of KV cache per token for a 14B model in bf16."""


class PassRateBand(Model, json_schema_extra=rules(Rule("self.min <= self.max", "min must not exceed max", ".min"))):
    """Keep only prompts whose pass rate lies in [min, max]: "at the edge of the model's ability"."""

    min: float = Field(default=0.0, ge=0.0, le=1.0)
    """Lowest pass rate kept (inclusive)."""
    max: float = Field(default=1.0, ge=0.0, le=1.0)
    """Highest pass rate kept (inclusive)."""


class GenerateParams(
    Sampling,
    GenerationBudget,
    json_schema_extra=rules(
        Rule("!self.writePairs || self.samplesPerPrompt >= 2", "writePairs needs samplesPerPrompt >= 2 to find a correct and an incorrect rollout of one prompt", ".samplesPerPrompt"),
        HF_ENGINE_SINGLE_GPU,
    ),
):
    """Teacher rollouts with rejection sampling by a math verifier (`type: generate`)."""

    samples_per_prompt: int = Field(default=8, ge=1, le=1024)
    """Rollouts per prompt (k); Phi-4-mini-reasoning used about 8."""
    verifier: Literal["math-verify"] = "math-verify"
    """Checks each rollout's final answer against the prompt's gold answer."""
    pass_rate_band: PassRateBand | None = None
    """Keep only prompts whose pass rate over the k rollouts lies in this band (also written as a `prompts` output)."""
    write_pairs: bool = True
    """Also write DPO pairs (chosen = a correct rollout, rejected = an incorrect rollout of the same prompt)."""
    max_pairs_per_prompt: int = Field(default=1, ge=1, le=64)
    """Most preference pairs written per prompt."""
    system_message: str | None = Field(default=None, max_length=16384)
    """System message put before each prompt; left out: the model's chat template decides."""
    chunk_size: int = Field(default=256, ge=1, le=1048576)
    """Prompts per chunk: each engine writes its results to S3 a chunk at a time, and a retried stage skips the
    chunks already written (it redoes at most one chunk per engine)."""


class DecontaminateParams(Model):
    """Remove training examples that overlap eval sets (`type: decontaminate`)."""

    ngram_size: int = Field(default=13, ge=1, le=64)
    """n of the word n-grams compared after normalisation (13 as in GPT-3's decontamination)."""
    threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    """Remove an example when at least this fraction of an eval item's n-grams appear in it (or of its own, for short examples)."""
    fields: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(default_factory=lambda: ["prompt"], min_length=1, max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"})
    """Text fields of each example that are compared."""


BATCH_DIVISIBLE = Rule("self.batchSize % self.microBatchSize == 0", "batchSize must be a multiple of microBatchSize", ".batchSize")
ONE_ACTIVATION_CHECKPOINTING = Rule(
    "!(has(self.fsdp) && self.fsdp.activationCheckpointing && self.gradientCheckpointing)",
    "fsdp.activationCheckpointing replaces gradientCheckpointing; set gradientCheckpointing to false",
    ".gradientCheckpointing",
)
# Hugging Face attention kernels: the built-in names, or a kernels-hub repo id such as `kernels-community/flash-attn3`.
ATTENTION = r"^(sdpa|eager|flex_attention|flash_attention_2|flash_attention_3|[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(:[A-Za-z0-9_]+)?)$"


class FSDPSettings(Model):
    """FSDP2 (PyTorch `fully_shard`) settings; used when `sharding` is `fsdp`. Every decoder layer is one FSDP
    unit, and checkpoints are saved sharded (each process writes and uploads its own part)."""

    reshard_after_forward: bool = True
    """Free each layer's gathered parameters after its forward pass and gather them again for backward (ZeRO-3);
    false keeps them until backward: less communication, more memory (ZeRO-2 style)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (PyTorch's checkpoint wrapper around every
    FSDP unit) instead of the model's own gradient checkpointing; set gradientCheckpointing to false with it."""
    cpu_ram_efficient_loading: bool = True
    """Only the first process reads the full weights; the others build the model without memory and receive
    their shards from it. Saves host RAM when many processes share a node."""
    cpu_offload: bool = False
    """Keep parameters, gradients and optimiser state in CPU memory between uses (slow; for models that do not
    fit in GPU memory even sharded)."""


class RopeScaling(Model):
    """RoPE scaling, as transformers' `rope_scaling` (see its model configs)."""

    rope_type: Literal["linear", "dynamic", "yarn", "longrope", "llama3"]
    """The scaling method."""
    factor: float = Field(gt=0.0, le=1024.0)
    """How much longer the context becomes."""
    original_max_position_embeddings: int | None = Field(default=None, ge=1, le=16777216)
    """Context length the model was pre-trained with (yarn, longrope, llama3)."""


class ModelConfigOverrides(Model):
    """Changes to the model's config applied when it is loaded, e.g. for a longer context: Phi-4-reasoning
    doubles the RoPE base (250k to 500k) to train at 32K tokens."""

    rope_theta: float | None = Field(default=None, gt=0.0)
    """RoPE base frequency."""
    rope_scaling: RopeScaling | None = None
    """RoPE scaling (yarn, linear, ...)."""
    max_position_embeddings: int | None = Field(default=None, ge=16, le=16777216)
    """Longest context the model accepts."""


class TrainingParams(Model, json_schema_extra=rules(BATCH_DIVISIBLE, ONE_ACTIVATION_CHECKPOINTING)):
    """Optimisation settings shared by the training types."""

    learning_rate: float = Field(default=1e-5, gt=0.0, le=1.0)
    """Peak learning rate (AdamW)."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    """Fraction of steps spent warming up."""
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    """Gradient clipping norm."""
    epochs: float = Field(default=1.0, gt=0.0, le=1000.0)
    """Passes over the data; ignored when maxSteps is set."""
    max_steps: int | None = Field(default=None, ge=1, le=100000000)
    """Stop after this many optimiser steps."""
    batch_size: int = Field(default=128, ge=1, le=1048576)
    """Global batch size in sequences (for grpo: completions) per optimiser step, across all processes."""
    micro_batch_size: int = Field(default=1, ge=1, le=65536)
    """Sequences per process per forward pass; gradient accumulation makes up the rest."""
    max_length: int = Field(default=16384, ge=16, le=1048576)
    """Longest sequence in tokens; longer examples are truncated (packed sequences are filled to it)."""
    packing: bool = False
    """Pack several examples into one sequence (midtrain, sft only); documents never attend to each other."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Training precision (fp32 on CPU)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    sharding: Literal["ddp", "fsdp"] = "ddp"
    """`ddp` replicates the model on every process; `fsdp` shards parameters, gradients and optimiser state
    across them (PyTorch FSDP2, settings in `fsdp`)."""
    fsdp: FSDPSettings = Field(default_factory=FSDPSettings)
    """FSDP2 settings, used when sharding is `fsdp`."""
    attention: str | None = Field(default=None, max_length=256, pattern=ATTENTION)
    """Attention kernel: `sdpa`, `eager`, `flex_attention`, `flash_attention_2`, `flash_attention_3` (the last two
    need the flash-attn package in the image), or a Hugging Face kernels-hub id such as
    `kernels-community/flash-attn3`. Left out: transformers' default (sdpa where the model supports it)."""
    liger_kernels: bool = False
    """Use Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) to save memory and
    time; GPU only, and the image needs the liger-kernel package."""
    config_overrides: ModelConfigOverrides | None = None
    """Changes to the model's config when loading it (RoPE base, RoPE scaling, context length)."""


class MidtrainParams(TrainingParams):
    """Distillation mid-training on packed chain-of-thought (`type: midtrain`)."""

    packing: bool = True
    """Pack several examples into one sequence; documents never attend to each other."""
    epochs: float = Field(default=5.0, gt=0.0, le=1000.0)
    """Passes over the data; ignored when maxSteps is set."""


class SFTParams(TrainingParams):
    """Unpacked chat SFT on reasoning traces; the loss is on the assistant turn only (`type: sft`)."""

    system_message: str | None = Field(default=PHI4_REASONING_SYSTEM_MESSAGE, max_length=16384)
    """System message in every example; the Phi-4-reasoning message by default."""
    think_format: bool = True
    """Wrap the reasoning in `<think>…</think>` before the final solution."""
    epochs: float = Field(default=5.0, gt=0.0, le=1000.0)
    """Passes over the data; ignored when maxSteps is set."""


class DPOParams(TrainingParams, json_schema_extra=rules(BATCH_DIVISIBLE, ONE_ACTIVATION_CHECKPOINTING, NO_PACKING)):
    """Rollout DPO on (correct, incorrect) pairs of one prompt; the input model is also the reference (`type: dpo`)."""

    beta: float = Field(default=0.1, gt=0.0, le=100.0)
    """Strength of the implicit KL constraint to the reference model."""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "apo_zero", "apo_down", "sppo_hard"] = "sigmoid"
    """DPO loss variant, as TRL names them; `sigmoid` is the original DPO loss."""
    sft_weight: float = Field(default=0.0, ge=0.0, le=100.0)
    """Weight of a negative log-likelihood loss on the chosen completions, added to the preference loss (TRL's
    `sft` loss type, as in RPO); 0: none. It keeps the chosen answers from losing likelihood along with the rejected
    ones, which few or noisy pairs are prone to."""
    learning_rate: float = Field(default=5e-7, gt=0.0, le=1.0)
    """Peak learning rate (5e-7 for Phi-4-mini-reasoning's rollout DPO)."""
    system_message: str | None = Field(default=None, max_length=16384)
    """System message before each prompt: the one the rollouts were sampled with, so the pairs are scored in
    the context that produced them; left out: the model's chat template decides."""


class LengthAwareReward(
    Model,
    json_schema_extra=rules(
        Rule("self.positiveControlLength < self.maxLength", "positiveControlLength must be below maxLength", ".positiveControlLength"),
    ),
):
    """Correctness scaled by completion length: short-and-right scores highest, wrong-and-short lowest (Phi-4-reasoning-plus)."""

    enabled: bool = True
    """Scale by length; false: plain correctness, +1 right and -1 wrong."""
    max_length: int = Field(default=31744, ge=2, le=1048576)
    """L_max: a correct answer at this length scores `correctMin`."""
    positive_control_length: int = Field(default=25600, ge=1, le=1048576)
    """L_pos: correct answers up to this length score `correctMax`; beyond it the reward decays by a cosine."""
    negative_control_length: int = Field(default=3702, ge=1, le=1048576)
    """L_neg: wrong answers rise from `incorrectMin` at length 0 to `incorrectMax` at this length."""
    correct_max: float = 1.0
    """Reward of a short correct answer."""
    correct_min: float = 0.5
    """Reward of a correct answer at maxLength."""
    incorrect_max: float = -0.5
    """Reward of a wrong answer at or beyond negativeControlLength."""
    incorrect_min: float = -1.0
    """Reward of a very short wrong answer."""


class RepetitionPenalty(Model):
    """A penalty (<= 0) for repeated n-grams in a completion."""

    ngram_size: int = Field(default=5, ge=1, le=64)
    """n of the token n-grams counted."""
    max_repeats: int = Field(default=5, ge=1, le=1000)
    """An n-gram seen more often than this counts as repeated."""


class Rewards(Model, json_schema_extra=rules(Rule("self.correctness + self.repetition + self.format > 0.0", "at least one reward weight must be positive", ".correctness"))):
    """The GRPO reward: a weighted sum of its parts (weights 8/13 and 1/13 in Phi-4-reasoning-plus)."""

    correctness: float = Field(default=0.6153846153846154, ge=0.0, le=100.0)
    """Weight of the verifiable correctness reward (math-verify against the gold answer, gold first)."""
    length_aware: LengthAwareReward = Field(default_factory=LengthAwareReward)
    """How correctness is scaled by completion length."""
    repetition: float = Field(default=0.07692307692307693, ge=0.0, le=100.0)
    """Weight of the repetition penalty."""
    repetition_penalty: RepetitionPenalty = Field(default_factory=RepetitionPenalty)
    """How repetition is measured."""
    format: float = Field(default=0.0, ge=0.0, le=100.0)
    """Weight of the format check (a closed `<think>` block followed by an answer)."""


class GRPOParams(
    TrainingParams,
    Engine,
    json_schema_extra=rules(
        HF_ENGINE_SINGLE_GPU,
        Rule("self.vllmMode != 'server' || has(self.vllmServerUrl)", "vllmMode server needs vllmServerUrl: the `trl vllm-serve` server's URL", ".vllmServerUrl", "FieldValueRequired"),
        Rule("!has(self.vllmServerUrl) || self.vllmMode == 'server'", "vllmServerUrl is only read in vllmMode server", ".vllmServerUrl", "FieldValueForbidden"),
        BATCH_DIVISIBLE,
        ONE_ACTIVATION_CHECKPOINTING,
        NO_PACKING,
        Rule("self.batchSize % self.numGenerations == 0", "batchSize (completions per step) must be a multiple of numGenerations", ".batchSize"),
        Rule("!has(self.epsilonHigh) || self.epsilonHigh >= self.epsilon", "epsilonHigh must be at least epsilon", ".epsilonHigh"),
    ),
):
    """GRPO with verifiable, length-aware and repetition rewards (`type: grpo`)."""

    num_generations: int = Field(default=8, ge=2, le=1024)
    """Group size G: completions sampled per prompt and compared with each other."""
    beta: float = Field(default=0.001, ge=0.0, le=10.0)
    """KL coefficient to the reference model; 0 loads no reference model."""
    epsilon: float = Field(default=0.2, gt=0.0, le=1.0)
    """Lower clip range of the policy ratio."""
    epsilon_high: float | None = Field(default=None, gt=0.0, le=1.0)
    """Upper clip range (DAPO's clip-higher); left out: equal to epsilon."""
    max_completion_length: int = Field(default=31744, ge=1, le=1048576)
    """Longest completion in tokens."""
    temperature: float = Field(default=1.0, gt=0.0, le=4.0)
    """Rollout sampling temperature."""
    entropy_coef: float = Field(default=0.0, ge=0.0, le=10.0)
    """Weight of an entropy bonus added to the loss (TRL's `entropy_coef`: the mean per-token entropy of the
    policy, for every loss type); 0: none. Keeps the policy from collapsing onto few answers early."""
    top_entropy_quantile: float = Field(default=1.0, ge=0.0, le=1.0)
    """Train only on the tokens whose entropy lies in this top fraction at each position (TRL's
    `top_entropy_quantile`, after "Beyond the 80/20 rule": 0.2 keeps the forking tokens); 1.0: every token."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """vLLM engine: `colocate` runs it inside each training process, sharing the GPU (sleeping while the policy
    trains); `server` sends rollouts to a `trl vllm-serve` server on GPUs of its own."""
    vllm_server_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s/]+(/\S*)?$")
    """vllmMode server: the server's base URL, e.g. `http://grpo-vllm.ml.svc:8000`."""
    vllm_sleep_mode: bool = True
    """vllmMode colocate: free the engine's weights and KV cache while the policy trains (vLLM sleep mode)."""
    learning_rate: float = Field(default=5e-8, gt=0.0, le=1.0)
    """Peak learning rate (5e-8 for Phi-4-reasoning-plus)."""
    batch_size: int = Field(default=512, ge=1, le=1048576)
    """Completions per optimiser step across all processes (64 prompts × G=8 in Phi-4-reasoning-plus)."""
    rewards: Rewards = Field(default_factory=Rewards)
    """How completions are scored."""
    system_message: str | None = Field(default=None, max_length=16384)
    """System message before each prompt; left out: the model's chat template decides."""


class EvalParams(
    Sampling,
    GenerationBudget,
    json_schema_extra=rules(
        Rule("self.samplesPerProblem == 1 || self.temperature > 0.0", "with temperature 0 every sample is the same; set samplesPerProblem to 1 or a temperature above 0", ".temperature"),
        HF_ENGINE_SINGLE_GPU,
    ),
):
    """pass@1 averaged over k samples per problem, per eval set, with a confidence interval (`type: eval`)."""

    samples_per_problem: int = Field(default=5, ge=1, le=1024)
    """k: samples per problem; pass@1 is the mean correctness over all of them."""
    confidence_level: float = Field(default=0.95, gt=0.0, lt=1.0)
    """Confidence level of the reported interval."""
    system_message: str | None = Field(default=None, max_length=16384)
    """System message before each problem; left out: the model's chat template decides."""


PARAMS_BY_TYPE = {
    "generate": GenerateParams, "decontaminate": DecontaminateParams, "midtrain": MidtrainParams,
    "sft": SFTParams, "dpo": DPOParams, "grpo": GRPOParams, "eval": EvalParams,
}
"""The hyperparameter block of each stage type (`spec.<type>`)."""
