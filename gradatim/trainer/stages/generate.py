"""`generate`: teacher rollouts with rejection sampling. k samples per prompt, each checked by math-verify
against the gold answer; correct traces are kept, per-prompt pass rates recorded, prompts whose pass rate
lies in a band selected ("at the edge of the model's ability"), and (correct, incorrect) pairs of one prompt
written for rollout DPO."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradatim.api.hyperparams import GenerateParams
from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.artifacts import upload_dir
from gradatim.trainer.generation import Completion, chat_prompt, sample
from gradatim.trainer.report import Reporter
from gradatim.trainer.rewards import grade
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import load_all, load_model, write_jsonl
from gradatim.trainer.stages.eval import gather


@dataclass(frozen=True)
class Selection:
    traces: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    stats: list[dict[str, Any]]


def select(records: Sequence[dict[str, Any]], groups: Sequence[Sequence[Completion]], verdicts: Sequence[Sequence[bool]],
           params: GenerateParams, seed: int) -> Selection:
    rng = random.Random(seed)
    traces, pairs, prompts, stats = [], [], [], []
    band = params.pass_rate_band
    for record, group, correct in zip(records, groups, verdicts):
        rate = sum(correct) / len(correct)
        base = {"id": record.get("id"), "prompt": record["prompt"], "answer": str(record["answer"])}
        stats.append(base | {"pass_rate": rate, "samples": len(correct)})
        good = [c for c, ok in zip(group, correct) if ok and c.finished]
        bad = [c for c, ok in zip(group, correct) if not ok]
        traces += [base | {"completion": c.text, "pass_rate": rate} for c in good]
        if band is None or band.min <= rate <= band.max:
            prompts.append(base | {"pass_rate": rate})
        if params.write_pairs and good and bad:
            good, bad = rng.sample(good, len(good)), rng.sample(bad, len(bad))
            count = min(params.max_pairs_per_prompt, len(good) * len(bad))
            # Every incorrect rollout once before any repeats; correct ones are reused when they are fewer.
            pairs += [base | {"chosen": good[i % len(good)].text, "rejected": bad[i % len(bad)].text} for i in range(count)]
    return Selection(traces, pairs, prompts, stats)


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    model, tokenizer = load_model(spec.inputs.model, store, rt, spec.seed,
                                  on_teacher_step=lambda step, steps, loss: reporter.preparing("training tiny-teacher", step, steps, loss))
    model.to(rt.device)
    records = load_all(spec.inputs.data, store, rt, spec.seed)
    mine = list(range(rt.rank, len(records), rt.world_size))
    my_records = records.select(mine).to_list()
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n * rt.world_size
        reporter.progress(min(done, len(records)), len(records), samples=n * params.samples_per_prompt * rt.world_size)

    prompts = [chat_prompt(tokenizer, r["prompt"], params.system_message) for r in my_records]
    groups = sample(model, tokenizer, prompts, params.samples_per_prompt, params, params.batch_size, spec.seed + rt.rank, advance)
    rows = [{"index": i, "group": [c.__dict__ for c in g], "correct": [grade(r, c.text) for c in g]}
            for i, r, g in zip(mine, my_records, groups)]
    rows = gather(rows, rt)
    outputs: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if rt.is_rank0:
        ordered = records.select([r["index"] for r in rows]).to_list()
        chosen = select(ordered, [[Completion(**c) for c in r["group"]] for r in rows], [r["correct"] for r in rows], params, spec.seed)
        for name, items in (("traces", chosen.traces), ("pairs", chosen.pairs), ("prompts", chosen.prompts), ("stats", chosen.stats)):
            write_jsonl(items, rt.workdir / name / "part-00000.jsonl")
            outputs[name] = spec.output.uri + name + "/"
            upload_dir(store, rt.workdir / name, outputs[name])
        samples = sum(len(r["correct"]) for r in rows)
        metrics = {
            "acceptance_rate": sum(sum(r["correct"]) for r in rows) / max(1, samples),
            "pass_rate_mean": statistics.fmean(s["pass_rate"] for s in chosen.stats) if chosen.stats else 0.0,
            "kept_traces": float(len(chosen.traces)), "kept_prompts": float(len(chosen.prompts)), "pairs": float(len(chosen.pairs)),
            "prompts": float(len(records)), "samples": float(samples),
        }
    rt.barrier()
    return reporter.results(metrics, outputs)
