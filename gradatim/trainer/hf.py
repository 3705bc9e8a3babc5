"""The glue to transformers' Trainer shared by the training stages: arguments from the stage's params (FSDP2,
kernels, model config), progress reporting, and the final model. Checkpoints: checkpoints.py."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from gradatim.api.hyperparams import TrainingParams
from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.artifacts import upload_dir
from gradatim.trainer.errors import ParamError
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime

log = logging.getLogger("gradatim.trainer")


def accumulation_steps(params: TrainingParams, world_size: int) -> int:
    per_step = params.micro_batch_size * world_size
    if params.batch_size % per_step:
        raise ParamError("batchSize", f"{params.batch_size} is not a multiple of microBatchSize {params.micro_batch_size} x {world_size} processes; "
                         "change batchSize, microBatchSize or the number of nodes/GPUs")
    return params.batch_size // per_step


def training_dtype(params: TrainingParams, rt: Runtime) -> torch.dtype:
    """The precision the model trains and is saved in: the spec's on GPUs, fp32 on CPUs."""
    return dtype_for(params.precision, rt)


def fsdp_config(params: TrainingParams, model: Any) -> dict[str, Any]:
    """accelerate's FSDP2 plugin settings (through transformers' `fsdp_config`): every decoder layer one unit,
    checkpoints sharded with torch.distributed.checkpoint (each process writes its own part)."""
    layers = sorted(set(getattr(model, "_no_split_modules", None) or []))
    if not layers:
        raise ValueError(f"sharding fsdp wraps each decoder layer, but {type(model).__name__} names no layer class "
                         "(transformers `_no_split_modules`); use sharding ddp for this model")
    return {
        "version": 2,
        "transformer_layer_cls_to_wrap": layers,
        "reshard_after_forward": params.fsdp.reshard_after_forward,
        "activation_checkpointing": params.fsdp.activation_checkpointing,
        "cpu_ram_efficient_loading": params.fsdp.cpu_ram_efficient_loading,
        "cpu_offload": params.fsdp.cpu_offload,
        "state_dict_type": "SHARDED_STATE_DICT",
    }


def checkpoint_every(spec: ResolvedStageSpec) -> int | float:
    """`save_steps`: the spec's interval, or 0.1 (transformers reads a float below 1 as that fraction of the
    run's steps), so that a run left without an interval still saves every 10%."""
    return spec.output.checkpoint_interval or 0.1


def training_arguments(params: TrainingParams, spec: ResolvedStageSpec, rt: Runtime, output_dir: Path, config_class: Any,
                       model: Any = None, **extra: Any) -> Any:
    """The transformers/TRL config for a training stage, from its typed params."""
    on_gpu = rt.device.type == "cuda"
    precision = params.precision if on_gpu else "fp32"  # CPUs train in fp32
    if params.fsdp.activation_checkpointing and params.gradient_checkpointing:
        raise ValueError("fsdp.activationCheckpointing replaces gradientCheckpointing; set gradientCheckpointing to false")
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=min(params.warmup_ratio, 0.999),  # a float below 1 is a ratio of the total steps
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        num_train_epochs=params.epochs,
        max_steps=params.max_steps or -1,
        per_device_train_batch_size=params.micro_batch_size,
        gradient_accumulation_steps=accumulation_steps(params, rt.world_size),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=params.gradient_checkpointing,
        logging_steps=1,
        save_strategy="steps",
        save_steps=checkpoint_every(spec),
        save_total_limit=2,  # on local disk; S3 keeps spec.output.checkpointsToKeep (CheckpointSync)
        report_to=[],
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=not on_gpu,
        disable_tqdm=not rt.is_rank0,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        ddp_timeout=spec.process_group_timeout_seconds,
        include_num_input_tokens_seen="non_padding",
        use_liger_kernel=params.liger_kernels,
    )
    if params.sharding == "fsdp" and rt.world_size > 1:
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = fsdp_config(params, model)
    kwargs.update(extra)
    return config_class(**kwargs)


def sharded(trainer_class: type) -> type:
    """`trainer_class` that also shards with FSDP2 on CPU processes (gloo), as it does on GPUs.

    accelerate only turns a multi-GPU run into an FSDP run; on CPUs it keeps MULTI_CPU and wraps the model in
    DDP, silently training unsharded. Its FSDP2 path itself (fully_shard, DCP checkpoints, full state dict
    gathering) works on gloo, so on CPU this switches the state to FSDP with the same plugin transformers
    built. GPUs take accelerate's own path unchanged. It also trains no step past the end when resumed at the end."""

    class Sharded(trainer_class):  # type: ignore[misc, valid-type]
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            from accelerate import FullyShardedDataParallelPlugin
            from accelerate.state import PartialState
            from accelerate.utils import DistributedType

            state = self.accelerator.state
            if self.args.fsdp_plugin_args is not None and state.distributed_type == DistributedType.MULTI_CPU:
                state.distributed_type = DistributedType.FSDP
                state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
                # As AcceleratorState does on GPUs: later `AcceleratorState()` calls copy the type from here.
                PartialState._shared_state["distributed_type"] = DistributedType.FSDP
                self.is_fsdp_enabled = True

        def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
            # transformers 5 checks for the end only after a step: a run resumed from the checkpoint written at
            # its last step (the pod was lost before the model was saved) would train one step past max_steps.
            if self.state.global_step >= self.state.max_steps:
                self.control.should_training_stop = True
                return
            super()._run_epoch(*args, **kwargs)

    Sharded.__name__ = Sharded.__qualname__ = f"Sharded{trainer_class.__name__}"
    return Sharded


def model_settings(params: TrainingParams, rt: Runtime, reference_copy: bool = False) -> dict[str, Any]:
    """`load_model` keyword arguments: the training dtype and a change to the model's config (attention
    kernel, RoPE, context length) applied before the weights are loaded. With FSDP's CPU-RAM-efficient loading,
    the processes other than the first build the model on the meta device and get their shards from it; not
    when the stage copies the loaded model as its frozen reference (`reference_copy`: dpo, grpo), which needs
    real weights on every process."""
    if params.sharding == "fsdp" and params.fsdp.cpu_ram_efficient_loading and rt.world_size > 1 and not reference_copy:
        # transformers reads these when loading (`is_fsdp_enabled`); TrainingArguments would set them too late.
        os.environ["ACCELERATE_USE_FSDP"] = "true"
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"

    def adjust(config: Any) -> None:
        apply_config_overrides(config, params)

    changes = params.attention is not None or params.config_overrides is not None
    return {"dtype": training_dtype(params, rt), "adjust_config": adjust if changes else None}


def apply_config_overrides(config: Any, params: TrainingParams) -> None:
    """Sets the attention kernel and the spec's `configOverrides` on a transformers config (in place)."""
    if params.attention:
        config._attn_implementation = params.attention
    o = params.config_overrides
    if o is None:
        return
    if o.max_position_embeddings is not None:
        config.max_position_embeddings = o.max_position_embeddings
    if o.rope_theta is None and o.rope_scaling is None:
        return
    # transformers 5 keeps RoPE settings in one `rope_parameters` dict (rope_type, rope_theta, factor, ...).
    rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
    if o.rope_theta is not None:
        rope["rope_theta"] = o.rope_theta
    if o.rope_scaling is not None:
        rope.update(o.rope_scaling.model_dump(exclude_none=True))
    config.rope_parameters = rope


# transformers/TRL log keys -> trainer gauges (docs/metrics.md).
LOG_GAUGES = {
    "loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm",
    "reward": "reward_mean", "reward_std": "reward_std", "completions/mean_length": "completion_tokens_mean",
    "rewards/margins": "dpo_reward_margin", "rewards/accuracies": "dpo_reward_accuracy",
}
REWARD_PART = re.compile(r"^rewards/([a-z_]+)/mean$")  # GRPO: one per reward function


class ReportingCallback(TrainerCallback):
    """Progress, loss, learning rate, grad norm, rewards and token throughput into the Reporter after every log."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self._tokens_seen = 0.0
        self._samples_seen = 0
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.reporter.set_model(model)
        # A resumed run's state carries the checkpoint's log: one resumed at its end still has a last loss.
        self.last_loss = next((float(e["loss"]) for e in reversed(state.log_history) if "loss" in e), None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs and "reward" not in logs:
            return  # the end-of-training summary repeats the last step
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        tokens = float(logs.get("num_tokens", state.num_input_tokens_seen or 0) or 0)
        new_tokens = max(0.0, tokens - self._tokens_seen)
        self._tokens_seen = max(self._tokens_seen, tokens)
        samples = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        new_samples, self._samples_seen = max(0, samples - self._samples_seen), max(samples, self._samples_seen)
        for key, value in logs.items():
            if (m := REWARD_PART.match(key)) and isinstance(value, (int, float)):
                self.reporter.reward_part(m.group(1), float(value))
        gauges = {LOG_GAUGES[k]: float(v) for k, v in logs.items() if k in LOG_GAUGES and isinstance(v, (int, float))}
        self.reporter.progress(state.global_step, state.max_steps, tokens=int(new_tokens), samples=new_samples, **gauges)


class ShardingReport(TrainerCallback):
    """How much of the model each process holds once training starts (FSDP: its shard), gathered on the first
    process, logged and kept for the results (`sharding`)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.per_rank: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.distributed.tensor import DTensor

        params = list(model.parameters())
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        placements = sorted({str(p.placements) for p in params if isinstance(p, DTensor)})
        mine = {"rank": self.rt.rank, "localElements": local, "elements": sum(p.numel() for p in params),
                "fraction": local / max(1, sum(p.numel() for p in params)), "placements": placements}
        if self.rt.world_size == 1:
            self.per_rank = [mine]
        else:
            import torch.distributed as dist

            parts: list[Any] | None = [None] * self.rt.world_size if self.rt.is_rank0 else None
            dist.gather_object(mine, parts, dst=0)
            self.per_rank = parts or []
        for part in self.per_rank:
            log.info("Rank %d holds %d of %d parameter elements (%.1f%%), placements %s", part["rank"], part["localElements"],
                     part["elements"], 100 * part["fraction"], ", ".join(part["placements"]) or "none (replicated)")


def final_loss(progress: ReportingCallback, result: Any) -> float:
    """The last logged training loss (the Trainer's own figure is the mean over the whole run)."""
    return float(progress.last_loss if progress.last_loss is not None else result.training_loss)


def save_model(trainer: Any, tokenizer: Any, store: Any, spec: ResolvedStageSpec, rt: Runtime, output_dir: Path) -> str:
    """Saves the trained model in its training precision (bf16 on GPUs unless the spec says otherwise, fp32 on
    CPUs) as safetensors with its tokenizer, and uploads them as the `model` output. Under FSDP every process
    takes part in gathering the full state dict, which the first process writes."""
    params = spec.typed_params()
    dtype = training_dtype(params, rt)
    # FSDP keeps fp32 master weights under bf16 mixed precision, and so would a save of them.
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    final = output_dir / "final"
    uri = spec.output.uri + "model/"
    if rt.is_rank0:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.config.dtype = dtype
        model.save_pretrained(str(final), state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(str(final))
        upload_dir(store, final, uri)
    rt.barrier()
    return uri


def dtype_for(precision: str, rt: Runtime) -> torch.dtype:
    if rt.device.type != "cuda":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
