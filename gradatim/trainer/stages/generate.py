"""`generate`: teacher rollouts with rejection sampling. k samples per prompt, each checked by math-verify
against the gold answer; correct traces are kept, per-prompt pass rates recorded, prompts whose pass rate
lies in a band selected ("at the edge of the model's ability"), and (correct, incorrect) pairs of one prompt
written for rollout DPO.

At scale the prompts are cut into chunks, dealt out to the stage's engines (each rank, or each tensor-parallel
vLLM engine, or an endpoint's clients). Each chunk's outputs go to S3 as part files as soon as it is done, then a
`GenerateChunk` record; a retry skips every chunk with a record. The last step writes each output's manifest from
the records, which makes the parts one artifact the next stages read."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradatim.api.hyperparams import GenerateParams
from gradatim.api.resolved import ResolvedStageSpec
from gradatim.api.runfiles import CHUNKS_DIR, GenerateChunk
from gradatim.storage.s3 import S3Location, read_json, write_json
from gradatim.trainer.artifacts import upload_files, write_manifest
from gradatim.trainer.generation import Completion, Usage, messages, open_engine
from gradatim.trainer.report import Reporter
from gradatim.trainer.rewards import grade
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import load_all, write_jsonl

log = logging.getLogger("gradatim.trainer")

OUTPUT_NAMES = ("traces", "pairs", "prompts", "stats", "rollouts")


@dataclass(frozen=True)
class Selection:
    traces: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    stats: list[dict[str, Any]]


def select(records: Sequence[dict[str, Any]], groups: Sequence[Sequence[Completion]], verdicts: Sequence[Sequence[bool]],
           params: GenerateParams, seed: int) -> Selection:
    traces, pairs, prompts, stats = [], [], [], []
    band = params.pass_rate_band
    for index, (record, group, correct) in enumerate(zip(records, groups, verdicts)):
        rate = sum(correct) / len(correct)
        base = {"id": record.get("id"), "prompt": record["prompt"], "answer": str(record["answer"])}
        stats.append(base | {"pass_rate": rate, "samples": len(correct)})
        good = [c for c, ok in zip(group, correct) if ok and c.finished]
        bad = [c for c, ok in zip(group, correct) if not ok]
        traces += [base | {"completion": c.text, "pass_rate": rate} for c in good]
        if band is None or band.min <= rate <= band.max:
            prompts.append(base | {"pass_rate": rate})
        if params.write_pairs and good and bad:
            rng = random.Random(f"{seed}:{record.get('id', index)}")  # per record: the same pairs however the prompts are chunked
            good, bad = rng.sample(good, len(good)), rng.sample(bad, len(bad))
            count = min(params.max_pairs_per_prompt, len(good) * len(bad))
            # Every incorrect rollout once before any repeats; correct ones are reused when they are fewer.
            pairs += [base | {"chosen": good[i % len(good)].text, "rejected": bad[i % len(bad)].text} for i in range(count)]
    return Selection(traces, pairs, prompts, stats)


def chunk_records(store: Any, output_uri: str) -> dict[int, GenerateChunk]:
    """The records of the chunks written so far, by number."""
    return {n: GenerateChunk.model_validate(read_json(store, output_uri + GenerateChunk.name(n))) for n in finished_chunks(store, output_uri)}


def finished_chunks(store: Any, output_uri: str) -> set[int]:
    """The numbers of the chunks written so far, from their records' names alone (one LIST per 1,000 chunks)."""
    loc = S3Location.parse(output_uri + CHUNKS_DIR)
    pages = store.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key)
    return {int(item["Key"].rsplit("chunk-", 1)[1].split(".")[0]) for page in pages for item in page.get("Contents", [])}


def run_chunk(number: int, rows: list[dict[str, Any]], engine: Any, params: GenerateParams, spec: ResolvedStageSpec, rt: Runtime,
              store: Any, on_batch: Any, write: bool) -> GenerateChunk:
    """Samples, grades and selects one chunk, writes its part files and then its record."""
    started, before = time.perf_counter(), Usage(**engine.usage.__dict__)
    groups = engine.sample([messages(r["prompt"], params.system_message) for r in rows], params.samples_per_prompt, params,
                           spec.seed * 100_003 + number, on_batch)
    verdicts = [[grade(r, c.text) for c in group] for r, group in zip(rows, groups)]
    chosen = select(rows, groups, verdicts, params, spec.seed)
    rollouts = [{"id": r.get("id"), "prompt": r["prompt"], "answer": str(r["answer"]), "completions": [c.text for c in g],
                 "correct": v, "finished": [c.finished for c in g], "tokens": [c.tokens for c in g]} for r, g, v in zip(rows, groups, verdicts)]
    used = engine.usage
    record = GenerateChunk(
        chunk=number, prompts=len(rows), samples=sum(len(v) for v in verdicts), correct=sum(sum(v) for v in verdicts),
        pass_rate_sum=sum(s["pass_rate"] for s in chosen.stats), kept_traces=len(chosen.traces), kept_prompts=len(chosen.prompts),
        pairs=len(chosen.pairs), prompt_tokens=used.prompt_tokens - before.prompt_tokens,
        completion_tokens=used.completion_tokens - before.completion_tokens, requests=used.requests - before.requests,
        retries=used.retries - before.retries, seconds=time.perf_counter() - started, engine=engine.name, attempt=spec.attempt,
    )
    if not write:  # another process of this tensor-parallel engine writes the same results
        return record
    local = rt.workdir / "generate" / f"chunk-{number:06d}"
    part = f"part-{number:06d}.jsonl"
    for name, items in zip(OUTPUT_NAMES, (chosen.traces, chosen.pairs, chosen.prompts, chosen.stats, rollouts)):
        write_jsonl(items, local / name / part)
    files = upload_files(store, local, spec.output.uri)["files"]
    record = record.model_copy(update={"files": files})
    write_json(store, spec.output.uri + GenerateChunk.name(number), record.to_wire())  # last: the chunk is done
    return record


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    records = load_all(spec.inputs.data, store, rt, spec.seed)
    total, size = len(records), params.chunk_size
    chunks = math.ceil(total / size)
    engine, place = open_engine(params, spec.inputs.model, store, rt, spec.seed,
                                on_teacher_step=lambda step, steps, loss: reporter.preparing("training tiny-teacher", step, steps, loss))
    done = rt.from_rank0(finished_chunks(store, spec.output.uri) if rt.is_rank0 else None)  # one list: no chunk done twice
    mine = [c for c in range(chunks) if c % place.replicas == place.replica and c not in done]
    progressed = sum(min(size, total - c * size) for c in done)
    if done:
        log.info("Resuming: %d of %d chunk(s) (%d prompts) were written by an earlier attempt", len(done), chunks, progressed)

    def advance(n: int) -> None:  # this engine's share, scaled to the stage's: the engines go at about one pace
        nonlocal progressed
        progressed += n * place.replicas
        reporter.progress(min(progressed, total), total, tokens=engine.usage.unreported_tokens() * place.replicas, samples=n * params.samples_per_prompt * place.replicas,
                          **({"endpoint_retries": float(engine.usage.retries)} if engine.name == "endpoint" else {}))

    for number in mine:
        rows = records.select(range(number * size, min(total, (number + 1) * size))).to_list()
        run_chunk(number, rows, engine, params, spec, rt, store, advance, place.writes)
    rt.barrier()
    outputs: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if rt.is_rank0:
        records_of = chunk_records(store, spec.output.uri)
        missing = sorted(set(range(chunks)) - set(records_of))
        if missing:
            raise RuntimeError(f"chunks {missing[:10]} have no record after every engine finished; S3 lost a write")
        for name in OUTPUT_NAMES:
            files = {rel.split("/", 1)[1]: meta for r in records_of.values() for rel, meta in r.files.items() if rel.startswith(name + "/")}
            write_manifest(store, spec.output.uri + name + "/", files)
            outputs[name] = spec.output.uri + name + "/"
        metrics = summarize(list(records_of.values()), total) | {"chunks_reused": float(sum(c.attempt != spec.attempt for c in records_of.values()))}
    rt.barrier()
    return reporter.results(metrics, outputs, engine=engine.name)


def summarize(chunks: list[GenerateChunk], prompts: int) -> dict[str, float]:
    """The stage's metrics from its chunk records."""
    samples = sum(c.samples for c in chunks)
    return {
        "acceptance_rate": sum(c.correct for c in chunks) / max(1, samples),
        "pass_rate_mean": sum(c.pass_rate_sum for c in chunks) / max(1, prompts),
        "kept_traces": float(sum(c.kept_traces for c in chunks)), "kept_prompts": float(sum(c.kept_prompts for c in chunks)),
        "pairs": float(sum(c.pairs for c in chunks)), "prompts": float(prompts), "samples": float(samples),
        "prompt_tokens": float(sum(c.prompt_tokens for c in chunks)), "completion_tokens": float(sum(c.completion_tokens for c in chunks)),
        "requests": float(sum(c.requests for c in chunks)), "retries": float(sum(c.retries for c in chunks)),
        "generation_seconds": sum(c.seconds for c in chunks),
    }
