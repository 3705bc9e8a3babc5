"""`sft`: unpacked chat SFT with TRL. The loss is on the assistant turn only (prompt-completion data), which
ends with the end-of-turn token, so the model learns where to stop."""

from __future__ import annotations

import re
from typing import Any

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.errors import ParamError
from gradatim.trainer.hf import CheckpointSync, ReportingCallback, dtype_for, final_loss, resume_point, save_model, training_arguments
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import SourceError, load_all, load_model

THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def to_prompt_completion(record: dict[str, Any], system_message: str | None, think: bool) -> dict[str, Any]:
    """A conversational prompt-completion row from a trace record (`prompt` with `completion` or `solution`)."""
    if "messages" in record:
        *head, last = record["messages"]
        prompt, completion = head, last["content"]
    else:
        completion = record.get("completion") or record.get("solution")
        if "prompt" not in record or completion is None:
            raise SourceError(f"inputs.data: record {record.get('id', '?')} needs prompt and completion (or solution) fields")
        prompt = [{"role": "user", "content": record["prompt"]}]
    if system_message and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": system_message}, *prompt]
    if not think:
        completion = THINK.sub("", completion)
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    model, tokenizer = load_model(spec.inputs.model, store, rt.workdir, spec.seed, dtype_for(params.precision, rt))
    records = load_all(spec.inputs.data, store, rt.workdir, spec.seed)
    rows = [to_prompt_completion(r, params.system_message, params.think_format) for r in records]
    output_dir = rt.workdir / "sft"
    args = training_arguments(params, spec, rt, output_dir, SFTConfig, max_length=params.max_length, packing=params.packing)
    progress = ReportingCallback(reporter)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        callbacks=[progress, CheckpointSync(store, spec.output.checkpoint_uri, rt)],
    )
    if len(trainer.train_dataset) == 0:
        raise ParamError("maxLength", f"no example fits in {params.max_length} tokens with the system message; raise maxLength or shorten systemMessage")
    result = trainer.train(resume_from_checkpoint=resume_point(store, spec, output_dir))
    model_uri = save_model(trainer, tokenizer, store, spec, rt, output_dir)
    metrics = {"train_loss": final_loss(progress, result),
               "steps": float(trainer.state.global_step), "examples": float(len(rows)),
               "tokens": float(trainer.state.num_input_tokens_seen or 0)}
    return reporter.results(metrics, {"model": model_uri})
