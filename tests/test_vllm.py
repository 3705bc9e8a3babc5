"""The vLLM engine, for real: vLLM's CPU build (`.venv-vllm`, made by `make venv-vllm`, which `make test` runs)
drives generate, eval and two GRPO steps through `torchrun -m gradatim.trainer`. Each test asserts the engine that
ran is vLLM, and that it agrees with transformers: greedy completions token for token, GRPO rollouts' log-probs
against the policy's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gradatim.storage import s3
from gradatim.trainer.artifacts import download_dir
from tests.trainer_harness import REPO, run_trainer, stage_spec

VLLM_PYTHON = Path(os.environ.get("GRADATIM_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"
VLLM_ENV = {"VLLM_CACHE_ROOT": str(Path.home() / ".cache" / "gradatim" / "vllm")}  # the model-inspection cache survives runs


@pytest.fixture(scope="module")
def vllm_python() -> str:
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make venv-vllm` (make test does), which builds vLLM's CPU build beside .venv")
    return str(VLLM_PYTHON)


def results_of(cluster, spec) -> dict:
    return s3.read_json(cluster.s3_client(), spec.output.uri + "results.json")


def test_eval_through_vllm_matches_transformers_greedy(cluster, tmp_path, vllm_python):
    """Greedy eval of tiny-teacher by both engines: the same completions, so the same pass@1."""
    inputs = {"model": {"builtin": "tiny-teacher"}, "evalData": [{"builtin": "tiny-math:eval:16", "name": "math"}]}
    rows = {}
    for engine in ("vllm", "hf"):
        spec = stage_spec(cluster, "eval", {"samplesPerProblem": 1, "temperature": 0.0, "maxNewTokens": 96, "engine": engine}, inputs)
        result = run_trainer(cluster, spec, tmp_path / engine, env=VLLM_ENV, python=vllm_python)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        results = results_of(cluster, spec)
        assert results["engine"] == engine
        local = download_dir(cluster.s3_client(), results["outputs"]["results"], tmp_path / engine / "results")
        rows[engine] = [json.loads(line) for line in (local / "math.jsonl").read_text().splitlines()]
    same = sum(a["completions"] == b["completions"] for a, b in zip(rows["vllm"], rows["hf"]))
    assert same >= 15, f"only {same} of 16 greedy completions agree"
    assert sum(r["pass_rate"] for r in rows["vllm"]) >= 8, "tiny-teacher solves most of them through vLLM too"


def test_generate_through_vllm(cluster, tmp_path, vllm_python):
    params = {"samplesPerPrompt": 4, "temperature": 0.8, "maxNewTokens": 96, "chunkSize": 8, "engine": "vllm"}
    spec = stage_spec(cluster, "generate", params, {"model": {"builtin": "tiny-teacher"}, "data": [{"builtin": "tiny-math:train:16"}]})
    result = run_trainer(cluster, spec, tmp_path, env=VLLM_ENV, python=vllm_python)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = results_of(cluster, spec)
    metrics = results["metrics"]
    assert results["engine"] == "vllm"
    assert metrics["samples"] == 64 and metrics["requests"] == 2, "one vLLM call per chunk, n=4 samples per prompt"
    assert metrics["kept_traces"] > 0 and metrics["completion_tokens"] > 0
    rollouts = [json.loads(line) for line in (download_dir(cluster.s3_client(), results["outputs"]["rollouts"], tmp_path / "rollouts")
                                               / "part-000000.jsonl").read_text().splitlines()]
    assert all(len(set(r["completions"])) > 1 for r in rollouts if not all(r["correct"])), "the k samples of a prompt differ (n=k, seeded)"


def test_two_grpo_steps_with_vllm_rollouts_from_the_current_weights(cluster, tmp_path, vllm_python):
    """TRL's colocated vLLM generates the rollouts; after each step TRL loads the policy's weights into it. Its
    log-probs of its own samples agree with the policy's (the gap TRL measures; vLLM runs in bfloat16 here)."""
    params = {"numGenerations": 4, "batchSize": 8, "microBatchSize": 4, "maxSteps": 2, "maxCompletionLength": 24, "maxLength": 256,
              "learningRate": 1e-3, "beta": 0.0, "precision": "fp32", "gradientCheckpointing": False, "engine": "vllm"}
    spec = stage_spec(cluster, "grpo", params, {"model": {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:rl:16"}]})
    result = run_trainer(cluster, spec, tmp_path, env=VLLM_ENV, python=vllm_python)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = results_of(cluster, spec)
    metrics = results["metrics"]
    assert results["engine"] == "vllm" and metrics["steps"] == 2
    assert metrics["rollout_logp_gap_mean"] < 0.02 and metrics["rollout_logp_gap_max"] < 0.1, metrics
    assert len(results["rewardHistory"]) == 2 and all("sampling/sampling_logp_difference/mean" in h for h in results["rewardHistory"])
