"""The glue to transformers' Trainer shared by the training stages: arguments from the stage's params,
progress reporting, and checkpoints kept in S3 so that a new attempt resumes where the last one stopped."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from gradatim.api.hyperparams import TrainingParams
from gradatim.api.resolved import ResolvedStageSpec
from gradatim.s3 import S3Location
from gradatim.trainer.artifacts import download_dir, read_manifest, upload_dir
from gradatim.trainer.errors import ParamError
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime

log = logging.getLogger("gradatim.trainer")
CHECKPOINT = re.compile(r"checkpoint-(\d+)/$")


def accumulation_steps(params: TrainingParams, world_size: int) -> int:
    per_step = params.micro_batch_size * world_size
    if params.batch_size % per_step:
        raise ParamError("batchSize", f"{params.batch_size} is not a multiple of microBatchSize {params.micro_batch_size} x {world_size} processes; "
                         "change batchSize, microBatchSize or the number of nodes/GPUs")
    return params.batch_size // per_step


def training_arguments(params: TrainingParams, spec: ResolvedStageSpec, rt: Runtime, output_dir: Path, config_class: Any, **extra: Any) -> Any:
    """The transformers/TRL config for a training stage, from its typed params."""
    on_gpu = rt.device.type == "cuda"
    precision = params.precision if on_gpu else "fp32"  # CPUs train in fp32
    save_steps = spec.output.checkpoint_interval or 0
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
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=2,
        report_to=[],
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=not on_gpu,
        disable_tqdm=not rt.is_rank0,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
    )
    if params.sharding == "fsdp":
        kwargs["fsdp"] = "full_shard auto_wrap"
    kwargs.update(extra)
    return config_class(**kwargs)


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


def final_loss(progress: ReportingCallback, result: Any) -> float:
    """The last logged training loss (the Trainer's own figure is the mean over the whole run)."""
    return float(progress.last_loss if progress.last_loss is not None else result.training_loss)


class CheckpointSync(TrainerCallback):
    """Uploads every checkpoint the Trainer saves (model, optimizer, scheduler, RNG, data position) to S3."""

    def __init__(self, store: Any, checkpoint_uri: str, rt: Runtime) -> None:
        self.store, self.uri, self.rt = store, checkpoint_uri, rt

    def on_save(self, args, state, control, **kwargs):
        if self.rt.is_rank0:
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            upload_dir(self.store, local, f"{self.uri}checkpoint-{state.global_step}/")
            log.info("Uploaded checkpoint %d to %s", state.global_step, self.uri)


def latest_checkpoint(store: Any, checkpoint_uri: str) -> tuple[int, str] | None:
    """(step, uri) of the newest complete checkpoint under `checkpoint_uri`."""
    loc = S3Location.parse(checkpoint_uri)
    found = []
    paginator = store.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key, Delimiter="/"):
        for prefix in page.get("CommonPrefixes", []):
            match = CHECKPOINT.search(prefix["Prefix"])
            if match:
                found.append((int(match.group(1)), f"s3://{loc.bucket}/{prefix['Prefix']}"))
    for step, uri in sorted(found, reverse=True):
        if read_manifest(store, uri) is not None:
            return step, uri
    return None


def resume_point(store: Any, spec: ResolvedStageSpec, output_dir: Path) -> str | None:
    """Downloads the newest checkpoint of this run, if an earlier attempt left one, for `resume_from_checkpoint`."""
    latest = latest_checkpoint(store, spec.output.checkpoint_uri)
    if latest is None:
        return None
    step, uri = latest
    local = download_dir(store, uri, output_dir / f"checkpoint-{step}")
    log.info("Resuming from checkpoint %d (%s)", step, uri)
    return str(local)


def save_model(trainer: Any, tokenizer: Any, store: Any, spec: ResolvedStageSpec, rt: Runtime, output_dir: Path) -> str:
    """Saves the trained model and tokenizer (safetensors) and uploads them as the `model` output."""
    final = output_dir / "final"
    trainer.save_model(str(final))
    uri = spec.output.uri + "model/"
    if rt.is_rank0:
        tokenizer.save_pretrained(str(final))
        upload_dir(store, final, uri)
    rt.barrier()
    return uri


def dtype_for(precision: str, rt: Runtime) -> torch.dtype:
    if rt.device.type != "cuda":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
