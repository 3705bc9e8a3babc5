"""`midtrain`: distillation mid-training, causal-LM loss on whole chain-of-thought documents packed into full
sequences (best-fit), with no token attending across a document boundary."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.checkpoints import CheckpointSync, resume_point
from gradatim.trainer.hf import ReportingCallback, ShardingReport, final_loss, model_settings, save_model, sharded, training_arguments
from gradatim.trainer.packing import PackedCollator, pack_best_fit, split_long
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import load_all, load_model
from gradatim.trainer.stages.sft import to_prompt_completion


class Packs(Dataset):
    def __init__(self, packs: list[list[list[int]]]) -> None:
        self.packs = packs

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> list[list[int]]:
        return self.packs[i]


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


def documents(records: list[dict[str, Any]], tokenizer: Any) -> list[list[int]]:
    """Each record as one chat-formatted token sequence (prompt and trace), ending with the end-of-turn token."""
    docs = []
    for record in records:
        row = to_prompt_completion(record, None, think=True)
        ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
        docs.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return docs


def build_packs(docs: list[list[int]], max_length: int, packing: bool) -> list[list[list[int]]]:
    docs = split_long(docs, max_length)
    if not packing:
        return [[d] for d in docs]
    return [[docs[i] for i in pack] for pack in pack_best_fit([len(d) for d in docs], max_length)]


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    model, tokenizer = load_model(spec.inputs.model, store, rt.workdir, spec.seed, **model_settings(params, rt))
    records = load_all(spec.inputs.data, store, rt.workdir, spec.seed)
    docs = documents(records, tokenizer)
    packs = build_packs(docs, params.max_length, params.packing)
    real_tokens = sum(len(d) for d in docs)
    flash = getattr(model.config, "_attn_implementation", "") in ("flash_attention_2", "flash_attention_3")
    collator = PackedCollator(tokenizer.pad_token_id, block_mask=not flash)
    output_dir = rt.workdir / "midtrain"
    args = training_arguments(params, spec, rt, output_dir, TrainingArguments, model, remove_unused_columns=False)
    progress, sharding = ReportingCallback(reporter), ShardingReport(rt)
    trainer = sharded(PackedTrainer)(model=model, args=args, train_dataset=Packs(packs), data_collator=collator, pad_token_id=tokenizer.pad_token_id,
                      callbacks=[progress, sharding, CheckpointSync(store, spec, rt)])
    result = trainer.train(resume_from_checkpoint=resume_point(store, spec, rt, output_dir))
    model_uri = save_model(trainer, tokenizer, store, spec, rt, output_dir)
    metrics = {
        "train_loss": final_loss(progress, result),
        "steps": float(trainer.state.global_step), "documents": float(len(docs)), "sequences": float(len(packs)),
        "tokens": float(trainer.state.num_input_tokens_seen or 0),
        "packing_efficiency": real_tokens / (len(packs) * params.max_length) if packs else 0.0,
    }
    return reporter.results(metrics, {"model": model_uri}, sharding=sharding.per_rank)
