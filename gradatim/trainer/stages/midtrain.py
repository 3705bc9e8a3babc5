"""`midtrain`: distillation mid-training, causal-LM loss on whole chain-of-thought documents packed into full
sequences (best-fit), with no token attending across a document boundary."""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc
import torch
from transformers import Trainer, TrainingArguments

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.checkpoints import CheckpointSync, resume_point
from gradatim.trainer.hf import ReportingCallback, ShardingReport, final_loss, model_settings, save_model, sharded, training_arguments
from gradatim.trainer.packing import PackedCollator, pack
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import load_all, load_model
from gradatim.trainer.stages.sft import to_prompt_completion


class PackedTrainer(Trainer):
    """Counts the tokens of packed batches: the base class would count the elements of the 4D block mask."""

    def __init__(self, *args: Any, pad_token_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad_token_id = pad_token_id

    def _track_num_input_tokens(self, inputs):
        if self.args.include_num_input_tokens_seen == "no":
            return
        real = torch.as_tensor((inputs["input_ids"] != self.pad_token_id).sum(), device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += self.accelerator.gather(real).sum().item()


def as_chat(record: dict[str, Any]) -> dict[str, Any]:
    """A trace record as prompt and completion messages, the whole `<think>` trace kept."""
    return to_prompt_completion(record, None, think=True)


def chat_documents(rows: Any, tokenizer: Any) -> Any:
    """Each chat row (`as_chat`) as one token sequence, prompt and trace ending with the end-of-turn token, as a
    `datasets.Dataset` of `input_ids`. Batched and cached by `datasets`: the node's other ranks reuse the Arrow
    file local rank 0 wrote."""
    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        conversations = [[*prompt, *completion] for prompt, completion in zip(batch["prompt"], batch["completion"])]
        ids = tokenizer.apply_chat_template(conversations, tokenize=True)
        return {"input_ids": list(ids["input_ids"] if hasattr(ids, "keys") else ids)}

    return rows.map(tokenize, batched=True, batch_size=1000, remove_columns=rows.column_names, desc="tokenising")


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    model, tokenizer = load_model(spec.inputs.model, store, rt, spec.seed, **model_settings(params, rt))
    rows = load_all(spec.inputs.data, store, rt, spec.seed, to_row=as_chat)
    with rt.node_first():  # local rank 0 tokenises and packs; the node's other ranks load its cached Arrow files
        docs = chat_documents(rows, tokenizer)
        del rows  # from here on only the packs are read: let go of the earlier tables' memory maps
        packs = pack(docs, params.max_length, params.packing)
        documents = len(docs)
        del docs
    real_tokens = pc.sum(pc.list_flatten(packs.data.column("seq_lengths"))).as_py() or 0
    flash = getattr(model.config, "_attn_implementation", "") in ("flash_attention_2", "flash_attention_3")
    collator = PackedCollator(tokenizer.pad_token_id, block_mask=not flash)
    output_dir = rt.workdir / "midtrain"
    args = training_arguments(params, spec, rt, output_dir, TrainingArguments, model, remove_unused_columns=False)
    progress, sharding = ReportingCallback(reporter), ShardingReport(rt)
    trainer = sharded(PackedTrainer)(model=model, args=args, train_dataset=packs, data_collator=collator, pad_token_id=tokenizer.pad_token_id,
                                     callbacks=[progress, sharding, CheckpointSync(store, spec, rt)])
    result = trainer.train(resume_from_checkpoint=resume_point(store, spec, rt, output_dir))
    model_uri = save_model(trainer, tokenizer, store, spec, rt, output_dir)
    metrics = {
        "train_loss": final_loss(progress, result),
        "steps": float(trainer.state.global_step), "documents": float(documents), "sequences": float(len(packs)),
        "tokens": float(trainer.state.num_input_tokens_seen or 0),
        "packing_efficiency": real_tokens / (len(packs) * params.max_length) if packs else 0.0,
    }
    return reporter.results(metrics, {"model": model_uri}, sharding=sharding.per_rank)
