"""`eval`: pass@1 over k samples with a confidence interval, on planted outputs and end to end on 2 processes."""

from __future__ import annotations

import json

import pytest

from gradatim.storage import s3
from gradatim.trainer.artifacts import download_dir
from gradatim.trainer.rewards import is_correct
from gradatim.trainer.stages.eval import summarize
from tests.trainer_harness import run_trainer, stage_spec


def test_pass_at_1_on_planted_completions():
    planted = {  # gold -> k=4 completions
        "5": ["$\\boxed{5}$", "$\\boxed{5}$", "$\\boxed{4}$", "$\\boxed{5}$"],           # 3/4
        "\\frac{1}{2}": ["$\\boxed{\\frac{2}{4}}$", "$\\boxed{0.5}$", "no", "$\\boxed{2}$"],  # 2/4
        "-3": ["$\\boxed{3}$"] * 4,                                                     # 0/4
    }
    verdicts = [[is_correct(gold, c) for c in cs] for gold, cs in planted.items()]
    assert [sum(v) for v in verdicts] == [3, 2, 0]
    summary = summarize(verdicts, 0.95)
    assert summary["pass@1"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert summary["ci_low"] < summary["pass@1"] < summary["ci_high"]
    # stdev of (0.75, 0.5, 0) is 0.3819; 1.96 * 0.3819 / sqrt(3) = 0.4322
    assert summary["ci_high"] - summary["pass@1"] == pytest.approx(0.4322, abs=1e-3)
    assert summarize([[True, True]], 0.95) == {"pass@1": 1.0, "ci_low": 1.0, "ci_high": 1.0, "problems": 1.0}


def test_eval_runs_on_two_processes_and_writes_per_problem_results(cluster, tmp_path):
    params = {"samplesPerProblem": 2, "temperature": 0.8, "maxNewTokens": 24, "maxBatchTokens": 2048}
    inputs = {"model": {"builtin": "tiny-model"}, "evalData": [{"builtin": "tiny-math:eval:12", "name": "math"}, {"builtin": "tiny-math:rl:6", "name": "rl"}]}
    spec = stage_spec(cluster, "eval", params, inputs)
    result = run_trainer(cluster, spec, tmp_path, nproc=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    store = cluster.s3_client()
    results = s3.read_json(store, spec.output.uri + "results.json")
    metrics = results["metrics"]
    assert {"pass@1", "pass@1/math", "pass@1/rl", "pass@1_ci_low/math", "completion_length_mean"} <= set(metrics)
    local = download_dir(store, results["outputs"]["results"], tmp_path / "results")
    rows = [json.loads(line) for line in (local / "math.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(12)), "both processes' shares were gathered"
    assert all(len(r["completions"]) == 2 and len(r["correct"]) == 2 for r in rows)
    rates = [sum(r["correct"]) / 2 for r in rows]
    assert metrics["pass@1/math"] == pytest.approx(sum(rates) / len(rates))
