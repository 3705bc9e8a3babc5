"""`dpo`: rollout DPO with TRL on (correct, incorrect) rollouts of one prompt; the input model is also the
frozen reference."""

from __future__ import annotations

import copy
from typing import Any

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.hf import CheckpointSync, ReportingCallback, dtype_for, final_loss, resume_point, save_model, training_arguments
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import SourceError, load_all, load_model


def to_preference(record: dict[str, Any], system_message: str | None = None) -> dict[str, Any]:
    if not all(k in record for k in ("prompt", "chosen", "rejected")):
        raise SourceError(f"inputs.data: record {record.get('id', '?')} needs prompt, chosen and rejected fields (the `pairs` output of generate)")
    system = [{"role": "system", "content": system_message}] if system_message else []
    return {
        "prompt": [*system, {"role": "user", "content": record["prompt"]}],
        "chosen": [{"role": "assistant", "content": record["chosen"]}],
        "rejected": [{"role": "assistant", "content": record["rejected"]}],
    }


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    model, tokenizer = load_model(spec.inputs.model, store, rt.workdir, spec.seed, dtype_for(params.precision, rt))
    rows = [to_preference(r, params.system_message) for r in load_all(spec.inputs.data, store, rt.workdir, spec.seed)]
    if not rows:
        raise SourceError("inputs.data holds no preference pairs; the generate stage found no prompt with both a correct and an incorrect rollout")
    output_dir = rt.workdir / "dpo"
    losses, weights = [params.loss_type], [1.0]
    if params.sft_weight > 0:
        losses, weights = [*losses, "sft"], [*weights, params.sft_weight]
    args = training_arguments(params, spec, rt, output_dir, DPOConfig, beta=params.beta, loss_type=losses, loss_weights=weights,
                              max_length=params.max_length)
    progress = ReportingCallback(reporter)
    reference = copy.deepcopy(model).eval()  # the input model, frozen
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[progress, CheckpointSync(store, spec.output.checkpoint_uri, rt)])
    result = trainer.train(resume_from_checkpoint=resume_point(store, spec, output_dir))
    model_uri = save_model(trainer, tokenizer, store, spec, rt, output_dir)
    last = next((h for h in reversed(trainer.state.log_history) if "rewards/margins" in h), {})
    metrics = {"train_loss": final_loss(progress, result),
               "reward_margin": float(last.get("rewards/margins", 0.0)), "reward_accuracy": float(last.get("rewards/accuracies", 0.0)),
               "chosen_logps": float(last.get("logps/chosen", 0.0)), "rejected_logps": float(last.get("logps/rejected", 0.0)),
               "pairs": float(len(rows)), "steps": float(trainer.state.global_step)}
    return reporter.results(metrics, {"model": model_uri})
