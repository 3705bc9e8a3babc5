"""`generate`: rejection sampling, the pass-rate band and DPO pairs, on planted rollouts and end to end."""

from __future__ import annotations

import json

from gradatim.storage import s3
from gradatim.api.hyperparams import GenerateParams, PassRateBand
from gradatim.trainer.artifacts import download_dir
from gradatim.trainer.generation import Completion
from gradatim.trainer.rewards import is_correct
from gradatim.trainer.stages.generate import select
from tests.trainer_harness import run_trainer, stage_spec


def c(text: str, finished: bool = True) -> Completion:
    return Completion(text, [1, 2, 3], finished)


def test_rejection_sampling_band_and_pairs_on_planted_rollouts():
    records = [{"id": "a", "prompt": "What is 2 + 3?", "answer": "5"}, {"id": "b", "prompt": "What is 2 * 3?", "answer": "6"},
               {"id": "c", "prompt": "What is 9 - 3?", "answer": "6"}]
    groups = [
        [c("<think> 2+3=5 </think> $\\boxed{5}$"), c("$\\boxed{4}$"), c("$\\boxed{5}$", finished=False), c("$\\boxed{7}$")],
        [c("$\\boxed{6}$")] * 4,
        [c("$\\boxed{1}$")] * 4,
    ]
    verdicts = [[is_correct(r["answer"], x.text) for x in g] for r, g in zip(records, groups)]
    assert [sum(v) for v in verdicts] == [2, 4, 0]
    params = GenerateParams(samples_per_prompt=4, pass_rate_band=PassRateBand(min=0.25, max=0.75), max_pairs_per_prompt=2)
    out = select(records, groups, verdicts, params, seed=0)
    assert [t["id"] for t in out.traces] == ["a", "b", "b", "b", "b"], "only correct, finished rollouts are kept"
    assert [p["id"] for p in out.prompts] == ["a"], "pass rates 1.0 and 0.0 fall outside the band"
    assert [p["id"] for p in out.pairs] == ["a", "a"] and all(is_correct("5", p["chosen"]) and not is_correct("5", p["rejected"]) for p in out.pairs)
    assert [s["pass_rate"] for s in out.stats] == [0.5, 1.0, 0.0]


def test_generate_stage_end_to_end(cluster, tmp_path):
    spec = stage_spec(cluster, "generate", {"samplesPerPrompt": 3, "temperature": 1.0, "maxNewTokens": 16, "maxBatchTokens": 2048},
                      {"model": {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:train:10"}]})
    result = run_trainer(cluster, spec, tmp_path, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    store = cluster.s3_client()
    results = s3.read_json(store, spec.output.uri + "results.json")
    assert set(results["outputs"]) == {"traces", "pairs", "prompts", "stats", "rollouts"}
    folder = download_dir(store, results["outputs"]["stats"], tmp_path / "stats")
    stats = [json.loads(line) for part in sorted(folder.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert len(stats) == 10 and all(s["samples"] == 3 for s in stats)
    assert results["metrics"]["samples"] == 30 and results["metrics"]["kept_prompts"] == 10
    assert abs(results["metrics"]["pass_rate_mean"] - sum(s["pass_rate"] for s in stats) / 10) < 1e-9
