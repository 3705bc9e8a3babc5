"""`eval`: pass@1 averaged over k samples per problem, per eval set, with a confidence interval, plus the
per-problem record (every completion and whether math-verify judged it correct)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.artifacts import upload_dir
from gradatim.trainer.generation import messages, open_engine
from gradatim.trainer.report import Reporter
from gradatim.trainer.rewards import grade
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import load_records, write_jsonl


def summarize(correct: Sequence[Sequence[bool]], level: float) -> dict[str, float]:
    """pass@1 = the mean over problems of each problem's share of correct samples; the interval is the normal
    approximation over problems (the unit that varies between eval sets)."""
    rates = [sum(c) / len(c) for c in correct]
    mean = statistics.fmean(rates)
    if len(rates) < 2:
        return {"pass@1": mean, "ci_low": mean, "ci_high": mean, "problems": float(len(rates))}
    z = statistics.NormalDist().inv_cdf((1 + level) / 2)
    half = z * statistics.stdev(rates) / len(rates) ** 0.5
    return {"pass@1": mean, "ci_low": max(0.0, mean - half), "ci_high": min(1.0, mean + half), "problems": float(len(rates))}


def gather(rows: list[dict[str, Any]], rt: Runtime) -> list[dict[str, Any]]:
    """Every process's rows on rank 0, the one that writes (each process scored its own share of the
    problems); the other processes get an empty list."""
    if rt.world_size == 1:
        return rows
    parts: list[Any] | None = [None] * rt.world_size if rt.is_rank0 else None
    dist.gather_object(rows, parts, dst=0)
    return sorted((r for part in parts for r in part), key=lambda r: r["index"]) if parts else []


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any, reporter: Reporter) -> dict[str, Any]:
    params = spec.typed_params()
    engine, place = open_engine(params, spec.inputs.model, store, rt, spec.seed)
    sets = [(source.label, load_records(source, store, rt, spec.seed)) for source in spec.inputs.eval_data]
    total = sum(len(records) for _, records in sets)
    done = 0
    metrics: dict[str, float] = {}
    all_rates: list[list[bool]] = []
    lengths: list[int] = []
    out_dir = rt.workdir / "results"
    for name, records in sets:
        mine = list(range(place.replica, len(records), place.replicas))
        prompts = [messages(records[i]["prompt"], params.system_message) for i in mine]

        def advance(n: int) -> None:
            nonlocal done
            done += n * place.replicas
            reporter.progress(min(done, total), total, tokens=engine.usage.unreported_tokens() * place.replicas, samples=n * params.samples_per_problem * place.replicas)

        groups = engine.sample(prompts, params.samples_per_problem, params, spec.seed * 100_003 + place.replica, advance)
        rows = []
        for i, group in zip(mine, groups):
            gold = str(records[i]["answer"])
            verdicts = [grade(records[i], c.text) for c in group]
            rows.append({"index": i, "id": records[i].get("id", str(i)), "prompt": records[i]["prompt"], "answer": gold,
                         "completions": [c.text for c in group], "correct": verdicts, "pass_rate": sum(verdicts) / len(verdicts),
                         "lengths": [c.tokens for c in group]})
        rows = gather(rows if place.writes else [], rt)
        if rt.is_rank0:
            summary = summarize([r["correct"] for r in rows], params.confidence_level)
            metrics[f"pass@1/{name}"] = summary["pass@1"]
            metrics[f"pass@1_ci_low/{name}"] = summary["ci_low"]
            metrics[f"pass@1_ci_high/{name}"] = summary["ci_high"]
            all_rates += [r["correct"] for r in rows]
            lengths += [n for r in rows for n in r["lengths"]]
            write_jsonl(rows, out_dir / f"{name}.jsonl")
            reporter.eval_set(name, summary["pass@1"])
    outputs: dict[str, str] = {}
    if rt.is_rank0:
        overall = summarize(all_rates, params.confidence_level)
        metrics.update({"pass@1": overall["pass@1"], "pass@1_ci_low": overall["ci_low"], "pass@1_ci_high": overall["ci_high"],
                        "completion_length_mean": statistics.fmean(lengths) if lengths else 0.0,
                        "samples_per_problem": float(params.samples_per_problem)})
    usage = gather([{"index": rt.rank, **engine.usage.__dict__}] if place.writes else [], rt)  # every rank takes part
    if rt.is_rank0:
        metrics.update({k: float(sum(u[k] for u in usage)) for k in ("prompt_tokens", "completion_tokens")})
        outputs["results"] = spec.output.uri + "results/"
        upload_dir(store, out_dir, outputs["results"])
    rt.barrier()
    return reporter.results(metrics, outputs, engine=engine.name)
