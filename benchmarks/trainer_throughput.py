"""Trainer throughput, in one process, against baselines measured in the same run.

1. midtrain: real (non-padding) tokens/s of our best-fit packing with the block-diagonal mask, against the same
   documents unpacked and padded to each batch's longest (transformers' usual dynamic padding), one epoch each.
2. sft: tokens/s of our sft stage's trainer (SFTTrainer with our config, prompt-completion rows and the
   reporting callback), against a plain TRL SFTTrainer on the same model and data with TRL's defaults.

On a GPU it also reports model FLOP/s and MFU against the detected device's peak (our reporter's figures).

With `--sharding fsdp` our trainers shard with FSDP2 (as a stage with `sharding: fsdp` does); run it under
torchrun with several processes. The `1.5b` preset is a ~1.4B-parameter Llama-style model (hidden 2048, 28
layers, 16 heads, 8 KV heads) at 4K tokens per packed sequence: the GPU measurement. Without a GPU the script
measures the tiny preset's ratios and prints the command to run on one.

Usage: python benchmarks/trainer_throughput.py [--hidden 128 --layers 4 --docs 1200 --max-length 512]
       torchrun --nproc-per-node 8 benchmarks/trainer_throughput.py --preset 1.5b --sharding fsdp   # GPUs
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback, TrainerCallback, TrainingArguments  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from gradatim.api.hyperparams import MidtrainParams, SFTParams  # noqa: E402
from gradatim.api.resolved import ResolvedStageSpec  # noqa: E402
from gradatim.trainer import tiny  # noqa: E402
from gradatim.trainer.hf import ReportingCallback, sharded, training_arguments  # noqa: E402
from gradatim.trainer.packing import PackedCollator, pack  # noqa: E402
from gradatim.trainer.report import Reporter  # noqa: E402
from gradatim.trainer.runtime import Runtime  # noqa: E402
from gradatim.trainer.stages.midtrain import PackedTrainer, as_chat, chat_documents  # noqa: E402
from gradatim.trainer.stages.sft import to_prompt_completion  # noqa: E402
from gradatim.trainer.telemetry import Device  # noqa: E402


class Clock(TrainerCallback):
    """Wall time of the training loop alone (model load and data preparation excluded)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def spec_for(type_: str, params: dict) -> ResolvedStageSpec:
    return ResolvedStageSpec(namespace="bench", pipeline="bench", stage=type_, type=type_, attempt=1, cache_key="bench", params=params,
                             inputs={}, output={"uri": "s3://bench/out/", "checkpointUri": "s3://bench/ckpt/"}, storage={"bucket": "bench"})


def reporter_for(spec: ResolvedStageSpec, rt: Runtime) -> Reporter:
    return Reporter(spec, store=None, enabled=True, serve_metrics=False, device=rt.device, world_size=rt.world_size)


# A ~1.4B Llama-style shape (head dim 128, GQA); the tiny tokenizer's small vocabulary leaves nearly all of it
# in the decoder layers, which is what MFU measures.
PRESETS = {"tiny": {}, "1.5b": {"hidden": 2048, "layers": 28, "heads": 16, "kv_heads": 8, "max_length": 4096, "docs": 20000, "micro_batch": 1}}


def build(tokenizer, args, rt):
    def heads(config):
        config.num_attention_heads, config.num_key_value_heads = args.heads, args.kv_heads
        config.head_dim = config.hidden_size // args.heads
    model = tiny.build_model(tokenizer, seed=0, max_length=args.max_length, hidden=args.hidden, layers=args.layers,
                             adjust_config=heads if args.heads else None)
    return model.to(rt.device) if args.sharding == "ddp" else model  # FSDP places the shards itself


def midtrain(records, tokenizer, args, rt, workdir) -> dict[str, dict[str, float]]:
    out = {}
    for label, packing in (("packed", True), ("padded", False)):
        params = MidtrainParams(learning_rate=1e-3, epochs=1, batch_size=args.micro_batch * rt.world_size, micro_batch_size=args.micro_batch,
                                max_length=args.max_length, packing=packing, precision=args.precision, gradient_checkpointing=False,
                                sharding=args.sharding)
        model = build(tokenizer, args, rt)
        docs = chat_documents(Dataset.from_list([as_chat(r) for r in records]), tokenizer)
        packs = pack(docs, params.max_length, packing)
        spec = spec_for("midtrain", params.model_dump())
        reporter = reporter_for(spec, rt)
        clock = Clock()
        targs = training_arguments(params, spec, rt, workdir / f"midtrain-{label}", TrainingArguments, model, remove_unused_columns=False,
                                   disable_tqdm=True, save_strategy="no")
        trainer = sharded(PackedTrainer)(model=model, args=targs, train_dataset=packs, data_collator=PackedCollator(tokenizer.pad_token_id, block_mask=True),
                                pad_token_id=tokenizer.pad_token_id,
                          callbacks=[ReportingCallback(reporter), clock])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        real = sum(len(d) for d in docs["input_ids"])
        out[label] = {"tokens_per_second": real / clock.seconds, "seconds": clock.seconds, "sequences": len(packs), "steps": trainer.state.global_step,
                      "mfu": _last(reporter, "mfu_ratio"), "flops": _last(reporter, "model_flops_per_second")}
    return out


def sft(records, tokenizer, args, rt, workdir) -> dict[str, dict[str, float]]:
    out = {}
    params = SFTParams(learning_rate=1e-3, epochs=1, batch_size=args.micro_batch * rt.world_size, micro_batch_size=args.micro_batch,
                       max_length=args.max_length, precision=args.precision, gradient_checkpointing=False, system_message=None,
                       sharding=args.sharding)
    rows = [to_prompt_completion(r, None, think=True) for r in records]
    # TRL's own FSDP needs GPUs (on CPU processes accelerate trains it as DDP): a sharded CPU run has no baseline.
    labels = ("gradatim",) if args.sharding == "fsdp" and rt.device.type != "cuda" else ("gradatim", "trl")
    for label in labels:
        model = build(tokenizer, args, rt)
        clock = Clock()
        if label == "gradatim":
            spec = spec_for("sft", params.model_dump())
            reporter = reporter_for(spec, rt)
            config = training_arguments(params, spec, rt, workdir / "sft-gradatim", SFTConfig, model, max_length=params.max_length, packing=False,
                                        disable_tqdm=True, save_strategy="no")
            callbacks = [ReportingCallback(reporter), clock]
            trainer_class = sharded(SFTTrainer)
        else:
            reporter = None
            bf16 = rt.device.type == "cuda" and args.precision == "bf16"
            # TRL's own FSDP2 switch, as a user of plain TRL would set it
            fsdp = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"fsdp_version": 2}} if args.sharding == "fsdp" else {}
            config = SFTConfig(output_dir=str(workdir / "sft-trl"), per_device_train_batch_size=args.micro_batch, num_train_epochs=1,
                               learning_rate=1e-3, max_length=args.max_length, bf16=bf16, use_cpu=rt.device.type != "cuda",
                               report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, include_num_input_tokens_seen="non_padding",
                               gradient_checkpointing=False, **fsdp)  # as ours: the ratio then measures our config and callbacks, not recomputation
            callbacks = [clock]
            trainer_class = SFTTrainer
        trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # no log dict per step on stdout
        trainer.train()
        tokens = float(trainer.state.num_input_tokens_seen)
        out[label] = {"tokens_per_second": tokens / clock.seconds, "seconds": clock.seconds, "steps": trainer.state.global_step,
                      "mfu": _last(reporter, "mfu_ratio") if reporter else math.nan,
                      "flops": _last(reporter, "model_flops_per_second") if reporter else math.nan}
    return out


def _last(reporter: Reporter, gauge: str) -> float:
    return float(reporter.gauges[gauge]._value.get())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="a model shape and workload; flags below override it")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=0, help="attention heads (0: the tiny model's 4)")
    parser.add_argument("--kv-heads", type=int, default=0)
    parser.add_argument("--docs", type=int, default=1200)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--sharding", default="ddp", choices=["ddp", "fsdp"])
    args = parser.parse_args()
    given = {a.lstrip("-").replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
    for key, value in PRESETS[args.preset].items():
        if key not in given:
            setattr(args, key, value)
    logging.basicConfig(level=logging.WARNING)

    rt = Runtime.from_env()
    say = print if rt.is_rank0 else (lambda *a, **k: None)
    tokenizer = tiny.build_tokenizer()
    records = [p.record() | {"solution": p.solution()} for p in tiny.tiny_math("train", args.docs)]
    workdir = Path(tempfile.mkdtemp(prefix="gradatim-bench-"))
    params_m = sum(p.numel() for p in build(tokenizer, args, Runtime.single(workdir)).parameters()) / 1e6
    say(f"device {Device.detect(rt.device).name} x {rt.world_size} ({args.sharding}); model {params_m:.1f}M parameters "
        f"(hidden {args.hidden}, {args.layers} layers); {args.docs} documents; max length {args.max_length}; micro-batch {args.micro_batch}")

    mid = midtrain(records, tokenizer, args, rt, workdir)
    for label, r in mid.items():
        say(f"midtrain {label:8s}: {r['tokens_per_second']:10.0f} real tokens/s  {r['seconds']:7.1f} s  {r['sequences']:5d} sequences  "
            f"{r['steps']:4d} steps  MFU {r['mfu']:.3f}  {r['flops'] / 1e12:.2f} TFLOP/s")
    say(f"midtrain packed / padded: x{mid['packed']['tokens_per_second'] / mid['padded']['tokens_per_second']:.2f} real tokens/s")

    st = sft(records, tokenizer, args, rt, workdir)
    for label, r in st.items():
        say(f"sft {label:8s}: {r['tokens_per_second']:10.0f} tokens/s  {r['seconds']:7.1f} s  {r['steps']:4d} steps  MFU {r['mfu']:.3f}")
    if "trl" in st:
        say(f"sft gradatim / plain TRL SFTTrainer: x{st['gradatim']['tokens_per_second'] / st['trl']['tokens_per_second']:.2f} tokens/s")
    if rt.device.type != "cuda":
        say("No GPU here, so no MFU. On a GPU machine: torchrun --nproc-per-node <GPUs> benchmarks/trainer_throughput.py --preset 1.5b "
            "--sharding fsdp  (one GPU: python benchmarks/trainer_throughput.py --preset 1.5b)")
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
