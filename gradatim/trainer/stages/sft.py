"""`sft`: unpacked chat SFT with TRL. The loss is on the assistant turn only (prompt-completion data), which
ends with the end-of-turn token, so the model learns where to stop."""

from __future__ import annotations

import re
from typing import Any

from trl import SFTConfig, SFTTrainer

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.checkpoints import CheckpointSync, resume_point
from gradatim.trainer.errors import ParamError
from gradatim.trainer.hf import ReportingCallback, ShardingReport, final_loss, model_settings, save_model, sharded, training_arguments
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import SourceError, load_all, load_model

THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def to_prompt_completion(record: dict[str, Any], system_message: str | None, think: bool) -> dict[str, Any]:
    """A conversational prompt-completion row from a trace record (`prompt` with `completion` or `solution`)."""
    if record.get("messages"):
        *head, last = record["messages"]
        prompt, completion = head, last["content"]
    else:
        completion = record.get("completion") or record.get("solution")
        if record.get("prompt") is None or completion is None:
            raise SourceError(f"inputs.data: record {record.get('id', '?')} needs prompt and completion (or solution) fields")
        prompt = [{"role": "user", "content": record["prompt"]}]
    if system_message and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": system_message}, *prompt]
    if not think:
        completion = THINK.sub("", completion)
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    model, tokenizer = load_model(spec.inputs.model, store, rt, spec.seed, **model_settings(params, rt))
    rows = load_all(spec.inputs.data, store, rt, spec.seed, to_row=lambda r: to_prompt_completion(r, params.system_message, params.think_format))
    output_dir = rt.workdir / "sft"
    args = training_arguments(params, spec, rt, output_dir, SFTConfig, model, max_length=params.max_length, packing=params.packing)
    progress, sharding = ReportingCallback(reporter), ShardingReport(rt)
    trainer = sharded(SFTTrainer)(
        model=model, args=args, train_dataset=rows, processing_class=tokenizer,
        callbacks=[progress, sharding, CheckpointSync(store, spec, rt)],
    )
    if len(trainer.train_dataset) == 0:
        raise ParamError("maxLength", f"no example fits in {params.max_length} tokens with the system message; raise maxLength or shorten systemMessage")
    result = trainer.train(resume_from_checkpoint=resume_point(store, spec, rt, output_dir))
    model_uri = save_model(trainer, tokenizer, store, spec, rt, output_dir)
    metrics = {"train_loss": final_loss(progress, result),
               "steps": float(trainer.state.global_step), "examples": float(len(rows)),
               "tokens": float(trainer.state.num_input_tokens_seen or 0)}
    return reporter.results(metrics, {"model": model_uri}, sharding=sharding.per_rank)
