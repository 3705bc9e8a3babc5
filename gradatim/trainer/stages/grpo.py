"""`grpo`: TRL GRPO with the rewards of the stage's spec, each a separate TRL reward function so that TRL
logs every part (correctness scaled by length, repetition, format) and weighs them as the spec says."""

from __future__ import annotations

import os
from typing import Any

from trl import GRPOConfig, GRPOTrainer

from gradatim.api.hyperparams import GRPOParams
from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer import rewards
from gradatim.trainer.checkpoints import CheckpointSync, resume_point
from gradatim.trainer.generation import pick_engine
from gradatim.trainer.hf import ReportingCallback, ShardingReport, final_loss, model_settings, save_model, sharded, training_arguments
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import SourceError, load_all, load_model, model_dir


def reward_functions(params: GRPOParams, tokenizer: Any) -> list[Any]:
    """Correctness (length-aware, with the format overrides), repetition and format, as TRL reward functions.
    They score the completion ids decoded as our sampler decodes them: TRL's own text skips special tokens, and
    `<think>`/`</think>` are special tokens in many reasoning tokenizers (ours among them), so every completion
    would read as unformatted."""
    cfg = params.rewards
    eos_token_id = tokenizer.eos_token_id

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False).replace(tokenizer.eos_token, "").replace(tokenizer.pad_token or "\0", "").strip()

    def finished(ids: list[int]) -> bool:
        return eos_token_id in ids or len(ids) < params.max_completion_length

    def correctness(prompts, completions, completion_ids, answer, **_):
        return [rewards.score(text(ids), ids, str(gold), finished(ids), cfg).accuracy for ids, gold in zip(completion_ids, answer)]

    def repetition(prompts, completions, completion_ids, **_):
        return [rewards.repetition_penalty(ids, cfg.repetition_penalty) for ids in completion_ids]

    def format(prompts, completions, completion_ids, **_):  # noqa: A001 (TRL logs the function's name)
        return [1.0 if rewards.well_formed(text(ids), think=True) and finished(ids) else 0.0 for ids in completion_ids]

    return [correctness, repetition, format]


def to_prompt(record: dict[str, Any], system_message: str | None) -> dict[str, Any]:
    if record.get("prompt") is None or record.get("answer") is None:
        raise SourceError(f"record {record.get('id', '?')} needs prompt and answer fields (a verifiable problem)")
    messages = ([{"role": "system", "content": system_message}] if system_message else []) + [{"role": "user", "content": record["prompt"]}]
    return {"prompt": messages, "answer": str(record["answer"])}


def rollout_engine(params: GRPOParams, rt: Runtime) -> dict[str, Any]:
    """TRL's settings for the rollouts: vLLM (colocated in each training process, asleep while the policy trains, or
    a `trl vllm-serve` server), with the policy's current weights loaded into it before every generation; or
    transformers' `generate` on the (possibly FSDP-sharded) policy itself."""
    if pick_engine(params.engine, rt.device, "grpo.engine") != "vllm":
        return {"use_vllm": False}
    settings: dict[str, Any] = {"use_vllm": True, "vllm_mode": params.vllm_mode, "vllm_gpu_memory_utilization": params.gpu_memory_utilization,
                                "vllm_tensor_parallel_size": params.tensor_parallel_size, "vllm_max_model_length": params.max_length}
    if rt.device.type != "cuda":
        # vLLM's CPU build (the tests): TRL's engine in this process, where its weight sync reaches the model; TRL
        # passes no KV cache size, and vLLM would otherwise claim 90% of the host's RAM. TRL's engine runs in
        # bfloat16, where its per-parameter weight sync works (float32 linear layers are repacked on CPUs).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if params.vllm_mode == "server":
        settings["vllm_server_base_url"] = params.vllm_server_url
    else:
        settings["vllm_enable_sleep_mode"] = params.vllm_sleep_mode and rt.device.type == "cuda"  # sleep mode frees GPU memory only
    return settings


def arguments(params: GRPOParams, spec: ResolvedStageSpec, rt: Runtime, output_dir: Any, model: Any = None) -> GRPOConfig:
    """TRL's GRPOConfig from the stage's params."""
    cfg = params.rewards
    return training_arguments(
        params, spec, rt, output_dir, GRPOConfig, model, **rollout_engine(params, rt),
        num_generations=params.num_generations, beta=params.beta, epsilon=params.epsilon, epsilon_high=params.epsilon_high,
        max_completion_length=params.max_completion_length, temperature=params.temperature,
        entropy_coef=params.entropy_coef, top_entropy_quantile=params.top_entropy_quantile,
        reward_weights=[cfg.correctness, cfg.repetition, cfg.format], log_completions=False,
    )


def sync_by_inplace_reload(generation: Any) -> None:
    """vLLM for CPUs repacks each linear layer's weight for oneDNN after loading and drops the checkpoint-format
    parameter, so TRL's colocated sync (`model.load_weights`, a tensor at a time) has nothing to load into. vLLM's own
    in-place reload loads the policy's tensors and repacks them; TRL still gathers them under vLLM's names."""
    worker = generation.llm.llm_engine.model_executor.driver_worker

    def sync_weights() -> None:
        worker.reload_weights(weights_iterator=generation._iter_named_params())
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    model, tokenizer = load_model(spec.inputs.model, store, rt, spec.seed, **model_settings(params, rt, reference_copy=True))
    rows = load_all(spec.inputs.data, store, rt, spec.seed, to_row=lambda r: to_prompt(r, params.system_message))
    if len(rows) == 0:
        raise SourceError("inputs.data holds no prompts")
    output_dir = rt.workdir / "grpo"
    args = arguments(params, spec, rt, output_dir, model)
    if args.use_vllm:  # TRL's engine loads the model from model.name_or_path: make it a local directory
        model.name_or_path = model.config._name_or_path = str(model_dir(spec.inputs.model, store, rt, spec.seed))
    progress, sharding = ReportingCallback(reporter), ShardingReport(rt)
    trainer = sharded(GRPOTrainer)(model=model, reward_funcs=reward_functions(params, tokenizer), args=args,
                                   train_dataset=rows, processing_class=tokenizer,
                                   callbacks=[progress, sharding, CheckpointSync(store, spec, rt)])
    if args.use_vllm and params.vllm_mode == "colocate" and rt.device.type == "cpu":
        sync_by_inplace_reload(trainer.vllm_generation)
    result = trainer.train(resume_from_checkpoint=resume_point(store, spec, rt, output_dir))
    model_uri = save_model(trainer, tokenizer, store, spec, rt, output_dir)
    history = [h for h in trainer.state.log_history if "reward" in h]
    last = history[-1] if history else {}
    metrics = {
        "train_loss": final_loss(progress, result),
        "reward_mean": float(last.get("reward", 0.0)), "reward_std": float(last.get("reward_std", 0.0)),
        "correctness_mean": float(last.get("rewards/correctness/mean", 0.0)),
        "completion_length_mean": float(last.get("completions/mean_length", 0.0)),
        "steps": float(trainer.state.global_step), "prompts": float(len(rows)),
    }
    gaps = [h["sampling/sampling_logp_difference/mean"] for h in history if "sampling/sampling_logp_difference/mean" in h]
    if gaps:  # vLLM's log-probs of its own samples against the policy's: the rollouts came from the current weights
        metrics["rollout_logp_gap_mean"] = float(sum(gaps) / len(gaps))
        metrics["rollout_logp_gap_max"] = float(max(h.get("sampling/sampling_logp_difference/max", 0.0) for h in history))
    return reporter.results(metrics, {"model": model_uri}, sharding=sharding.per_rank, engine="vllm" if args.use_vllm else "hf", rewardHistory=[{k: v for k, v in h.items() if k.startswith(("reward", "completions", "step", "sampling"))} for h in history])
