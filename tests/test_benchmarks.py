"""A tiny run of every benchmark, so none can rot: each must finish and print its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
