"""A tiny run of every benchmark, so none can rot: each must finish and print its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, python: str = sys.executable) -> str:
    result = subprocess.run([python, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_data_pipeline_benchmark_runs():
    out = run("data_pipeline.py", "--records", "1500", "--packer-docs", "400", "--max-length", "512")
    last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert int(last["records"]) == 1500
    assert float(last["old_peak_rss_mb"]) > 0 and float(last["new_peak_rss_mb"]) > 0 and float(last["packer_speedup"]) > 0
    assert 0 < float(last["new_peak_anon_mb"]) <= float(last["new_peak_rss_mb"])
    assert 0 < float(last["new_data_rss_mb"]) < float(last["new_peak_rss_mb"]) and float(last["data_rss_ratio"]) > 0
    assert re.search(r"^new packer on all [\d,]+ documents", out, re.MULTILINE)


def test_trainer_throughput_benchmark_runs():
    out = run("trainer_throughput.py", "--hidden", "32", "--layers", "1", "--docs", "48", "--max-length", "128", "--micro-batch", "8",
              "--precision", "fp32")
    assert re.search(r"midtrain packed / padded: x[\d.]+", out) and re.search(r"sft gradatim / plain TRL SFTTrainer: x[\d.]+", out)


def test_generation_engines_benchmark_runs_both_engines():
    from tests.test_vllm import VLLM_PYTHON

    assert VLLM_PYTHON.exists(), "run make venv-vllm (make test does)"
    out = run("generation_engines.py", "--prompts", "4", "--samples", "2", "--max-new-tokens", "8", python=str(VLLM_PYTHON))
    last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert float(last["engine_hf_tokens_per_s"]) > 0 and float(last["engine_vllm_tokens_per_s"]) > 0 and float(last["vllm_over_hf"]) > 0


def test_operator_scale_benchmark_runs(cluster):
    out = run("operator_scale.py", "--stages", "12", "--pipelines", "3", "--chain", "3", "--resync-seconds", "2",
              "--state-dir", str(cluster.state_dir))
    last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert float(last["rss_mb"]) > 0 and float(last["p99_handoff_ms"]) >= 0 and float(last["requests_per_reconcile"]) >= 0
    assert int(last["stages_live"]) == 12 + 12 + 3


def test_cpu_threads_benchmark_runs():
    out = run("cpu_threads.py", "--batch", "8", "--new-tokens", "8", "--rounds", "1")
    last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert int(last["cores"]) >= 1 and float(last["alone_ratio"]) > 0 and float(last["shared_ratio"]) > 0
    assert re.search(r"beside a busy core\s+1 thread\(s\) \(limit\s*\):\s+[\d,]+ tokens/s", out), out


def test_cpu_kernels_benchmark_runs_a_recipe_under_two_settings(tmp_path):
    """A three-stage recipe (eval, midtrain, eval) run whole under the pinned AVX2 kernels and under those of a CPU
    without AVX2: the table, each row's spread, the verdicts per setting and the kernels' speed."""
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    evals = {"samplesPerProblem": 2, "maxNewTokens": 16}
    docs = [
        {"apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "kernels"},
         "spec": {"storage": {"bucket": "gradatim", "secretRef": {"name": "s3"}},
                  "resources": {"nodes": 1, "gpusPerNode": 0, "cpu": "1", "memory": "2Gi", "shmSize": "256Mi"}}},
        {"apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingStage", "metadata": {"name": "eval-base"},
         "spec": {"pipeline": "kernels", "type": "eval", "inputs": {"model": {"builtin": "tiny-model"}, "evalData": [{"builtin": "tiny-math:eval:8"}]},
                  "eval": evals}},
        {"apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingStage", "metadata": {"name": "midtrain"},
         "spec": {"pipeline": "kernels", "type": "midtrain", "inputs": {"model": {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:train:64"}]},
                  "midtrain": {"learningRate": 1e-3, "batchSize": 8, "microBatchSize": 8, "maxSteps": 2, "maxLength": 256, "precision": "fp32",
                               "gradientCheckpointing": False}}},
        {"apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingStage", "metadata": {"name": "eval-midtrain"},
         "spec": {"pipeline": "kernels", "type": "eval", "dependsOn": ["midtrain"],
                  "inputs": {"model": {"fromStage": "midtrain"}, "evalData": [{"builtin": "tiny-math:eval:8"}]}, "eval": evals}},
    ]
    (recipe / "recipe.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    out = run("cpu_kernels.py", "--recipe", str(recipe), "--settings", "avx2,default", "--seed", "3", "--steps", "5", "--batch", "4",
              "--new-tokens", "8", "-j", "1")
    last = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert last["settings"] == "avx2,default", out
    assert float(last["avx2_step_ratio"]) == 1.0 and float(last["default_step_ratio"]) > 0 and float(last["default_sampling_ratio"]) > 0
    assert re.search(r"^avx2 +training step .*\[ATen AVX2, MKL AVX2, oneDNN AVX2", out, re.MULTILINE), out
    assert re.search(r"^default +training step .*\[ATen DEFAULT, MKL COMPATIBLE", out, re.MULTILINE), out
    assert float(last["spread_eval-base"]) >= 0 and float(last["spread_eval-midtrain"]) >= 0
    assert re.search(r"^eval-midtrain +\d+\.\d \[", out, re.MULTILINE), out
    assert last["verdicts_hold"].endswith("/2")
