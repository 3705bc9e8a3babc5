"""`gradatim run DIR`: the same CRs on this machine without Kubernetes. The real CLI, the real trainer under
torchrun, real S3 (the test cluster's SeaweedFS through AWS_*, or one the run starts itself); no mocks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradatim.cluster.process import is_running
from gradatim.local.world import read_status
from gradatim.planner.graph import cache_keys, stages_by_name
from gradatim.planner.render import output_uri
from gradatim.report.collect import report_uri
from gradatim.storage.s3 import S3Location

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"learningRate": 1e-3, "batchSize": 8, "microBatchSize": 4, "maxSteps": 2, "maxLength": 256, "precision": "fp32",
         "gradientCheckpointing": False, "warmupRatio": 0.0}
CPU = {"nodes": 1, "gpusPerNode": 0, "cpu": "1", "memory": "2Gi", "shmSize": "256Mi"}
TINY = {"builtin": "tiny-model"}
EVAL_SET = {"builtin": "tiny-math:eval:8", "name": "math"}


def pipeline(name: str, bucket: str) -> dict[str, Any]:
    return {"apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": name},
            "spec": {"storage": {"bucket": bucket, "secretRef": {"name": "s3"}}, "resources": CPU}}


def stage(name: str, pipe: str, type_: str, deps: tuple[str, ...] = (), **spec: Any) -> dict[str, Any]:
    # retryLimit 0: a broken stage fails the test at once rather than after two back-offs
    return {"apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingStage", "metadata": {"name": name},
            "spec": {"pipeline": pipe, "type": type_, "dependsOn": list(deps), "retryLimit": 0, **spec}}


def small_recipe(bucket: str) -> list[dict[str, Any]]:
    """Every kind of hand-over: generate (independent), decontaminate -> midtrain -> sft -> eval."""
    return [
        pipeline("small", bucket),
        stage("rollouts", "small", "generate", inputs={"model": TINY, "data": [{"builtin": "tiny-math:train:16"}]},
              generate={"samplesPerPrompt": 2, "maxNewTokens": 16}),
        stage("decontaminate", "small", "decontaminate", inputs={"data": [{"builtin": "tiny-math:train:64"}], "evalData": [EVAL_SET]},
              decontaminate={}),
        stage("midtrain", "small", "midtrain", ("decontaminate",), inputs={"model": TINY, "data": [{"fromStage": "decontaminate"}]}, midtrain=TRAIN),
        stage("sft", "small", "sft", ("midtrain", "decontaminate"),
              inputs={"model": {"fromStage": "midtrain"}, "data": [{"fromStage": "decontaminate"}]},
              sft={**TRAIN, "systemMessage": "Think, then answer."}),  # the default (Phi-4-reasoning's) outgrows maxLength 256
        stage("eval", "small", "eval", ("sft",), inputs={"model": {"fromStage": "sft"}, "evalData": [EVAL_SET]},
              eval={"samplesPerProblem": 2, "maxNewTokens": 16}),
    ]


def write_recipe(directory: Path, namespace: str, docs: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({"namespace": namespace, "resources": ["pipeline.yaml", "stages.yaml"]}))
    (directory / "pipeline.yaml").write_text(yaml.safe_dump(docs[0], sort_keys=False))
    (directory / "stages.yaml").write_text(yaml.safe_dump_all(docs[1:], sort_keys=False))
    return directory


def run_env(**extra: str) -> dict[str, str]:
    """This process's environment without any S3 settings, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **extra}


def gradatim_run(directory: Path, env: dict[str, str], *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gradatim", "run", str(directory), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def phases(state: Path) -> dict[str, str]:
    _, _, stages = read_status(state)
    return {s.metadata["name"]: s.status.phase for s in stages}


def kernels_of(state: Path, stage: str) -> str:
    """The CPU kernels a stage's trainer computed with, as its log says (gradatim/trainer/kernels.py)."""
    for log in sorted(state.glob(f"jobs/*/{stage}-a*-master-0/pytorch.log"), reverse=True):
        found = re.search(r"CPU kernels: (.*)", log.read_text())
        if found:
            return found.group(1)
    return "not logged"


def explain(done: subprocess.CompletedProcess, state: Path) -> str:
    logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(state.glob("jobs/*/*/pytorch.log")))
    run_log = (state / "run.log").read_text() if (state / "run.log").exists() else ""
    return f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\nrun.log:\n{run_log}\n{logs}"


def test_a_small_pipeline_runs_to_succeeded_and_a_rerun_is_all_cached(cluster, tmp_path):
    ns = f"local-{uuid.uuid4().hex[:6]}"  # a fresh prefix in the shared bucket, so nothing is cached yet
    recipe = write_recipe(tmp_path / "recipe", ns, small_recipe(cluster.s3_bucket))
    state = tmp_path / "state"
    env = run_env(**{k: v for k, v in cluster.env.items() if k.startswith("AWS_")})

    first, first_seconds = gradatim_run(recipe, env, "--state-dir", str(state))
    assert first.returncode == 0, explain(first, state)
    names = ["rollouts", "decontaminate", "midtrain", "sft", "eval"]
    assert phases(state) == {n: "Succeeded" for n in names}, explain(first, state)
    for name in names:  # the live view, a line per change without a terminal
        assert re.search(rf"^\[\d+:\d\d\] {name}\s+\w+\s+Succeeded", first.stdout, re.M), first.stdout
        assert (state / "jobs" / ns / f"{name}-a1-master-0" / "pytorch.log").is_file()

    # The operator's S3 layout: each stage's outputs under output_uri with the planner's cache key, the report beside them.
    namespace, pipe, stages = read_status(state)
    assert namespace == ns
    keys = cache_keys(stages_by_name(stages), pipe.spec.image)
    expected = {n: output_uri(pipe, ns, "small", n, keys[n]) for n in names}
    for st in stages:
        name = st.metadata["name"]
        assert st.status.cache_key == keys[name]
        assert st.status.outputs and all(uri.startswith(expected[name]) for uri in st.status.outputs.values())
    store = cluster.s3_client()
    listed = [o["Key"] for page in store.get_paginator("list_objects_v2").paginate(Bucket=cluster.s3_bucket, Prefix=f"{ns}/")
              for o in page.get("Contents", [])]
    prefixes = [S3Location.parse(u).key for u in expected.values()]
    report_prefix = S3Location.parse(report_uri(pipe, ns)).key
    assert report_prefix == f"{ns}/small/report/"
    assert all(k.startswith(report_prefix) or any(k.startswith(p) for p in prefixes) for k in listed), listed
    assert all(p + "results.json" in listed for p in prefixes)
    assert report_prefix + "index.html" in listed
    page = state / "report" / "index.html"
    first_page = page.read_text()
    assert 'id="ablation"' in first_page and 'data-stage="eval"' in first_page

    second, second_seconds = gradatim_run(recipe, env, "--state-dir", str(state))
    assert second.returncode == 0, explain(second, state)
    assert phases(state) == {n: "Cached" for n in names}
    assert not (state / "jobs").exists() or not list((state / "jobs").rglob("pytorch.log")), "a cached stage started a job"
    assert second_seconds < 60 and second_seconds < first_seconds / 2, (first_seconds, second_seconds)
    # The same report: the same results, so the same page, but for the phase column saying how they were got.
    assert page.read_text() == first_page.replace("<td>Succeeded</td>", "<td>Cached</td>")


def test_a_failed_quality_gate_fails_the_run_and_blocks_what_follows(cluster, tmp_path):
    docs = [pipeline("gated", cluster.s3_bucket),
            stage("decontaminate", "gated", "decontaminate", inputs={"data": [{"builtin": "tiny-math:train:64"}], "evalData": [EVAL_SET]},
                  decontaminate={}, qualityGate={"metric": "removed_fraction", "comparison": ">=", "threshold": 0.5}),
            stage("midtrain", "gated", "midtrain", ("decontaminate",), inputs={"model": TINY, "data": [{"fromStage": "decontaminate"}]}, midtrain=TRAIN)]
    recipe = write_recipe(tmp_path / "recipe", f"local-{uuid.uuid4().hex[:6]}", docs)
    state = tmp_path / "state"
    done, _ = gradatim_run(recipe, run_env(**{k: v for k, v in cluster.env.items() if k.startswith("AWS_")}), "--state-dir", str(state))
    assert done.returncode == 1, explain(done, state)
    assert phases(state) == {"decontaminate": "Failed", "midtrain": "Blocked"}
    assert "decontaminate: Failed: spec.qualityGate: removed_fraction = 0, needs >= 0.5" in done.stdout, done.stdout
    assert not list(state.glob("jobs/*/midtrain-*")), "a stage behind a failed gate ran"
    assert (state / "report" / "index.html").is_file(), "a failed run still gets its report"


@pytest.mark.parametrize("patch, where", [
    ({"sft": {"sft": {**TRAIN, "learningRate": -1}}},
     "stages.yaml: TrainingStage sft: spec.sft.learningRate: Invalid value: -1: spec.sft.learningRate in body should be greater than 0"),
    ({"eval": {"eval": None}}, "stages.yaml: TrainingStage eval: spec.eval: Required value: eval settings are required when type is eval"),
    ({"midtrain": {"inputs": {"model": {"fromStage": "sft"}, "data": [{"fromStage": "decontaminate"}]}}},
     'stages.yaml: TrainingStage midtrain: spec.inputs.model.fromStage: Invalid value: "object": inputs.model.fromStage must name a stage that is listed in dependsOn'),
    ({"decontaminate": {"decontaminate": {"ngramsize": 8}}},
     'stages.yaml: TrainingStage decontaminate: spec.decontaminate.ngramsize: unknown field; did you mean "ngramSize"?'),
    ({"sft": {"resources": {"memory": "-8Gi"}}},
     'stages.yaml: TrainingStage sft: spec.resources.memory: Invalid value: "-8Gi": spec.resources.memory in body should match'),
], ids=["out-of-range", "missing-type-block", "fromStage-not-a-dependency", "unknown-field", "negative-memory"])
def test_a_bad_recipe_names_the_file_object_and_field_and_runs_nothing(tmp_path, patch, where):
    docs = small_recipe("gradatim")
    for doc in docs[1:]:
        for key, value in patch.get(doc["metadata"]["name"], {}).items():
            if value is None:
                doc["spec"].pop(key)
            else:
                doc["spec"][key] = value
    recipe = write_recipe(tmp_path / "recipe", "default", docs)
    done, _ = gradatim_run(recipe, run_env(), "--state-dir", str(tmp_path / "state"), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert where in done.stderr and "nothing was run" in done.stderr
    assert not (tmp_path / "state").exists(), "a bad recipe started something"


def test_without_s3_settings_it_starts_its_own_seaweedfs_and_keeps_its_data(tmp_path):
    docs = [pipeline("solo", "local-runs"),
            stage("decontaminate", "solo", "decontaminate", inputs={"data": [{"builtin": "tiny-math:train:64"}], "evalData": [EVAL_SET]},
                  decontaminate={"ngramSize": 8})]
    recipe = write_recipe(tmp_path / "recipe", "solo-ns", docs)
    env = run_env(GRADATIM_HOME=str(tmp_path / "home"))
    state = tmp_path / "home" / "runs" / "solo-ns" / "solo"  # the default state dir

    done, _ = gradatim_run(recipe, env, timeout=600)
    assert done.returncode == 0, explain(done, state)
    assert "SeaweedFS in" in done.stdout and phases(state) == {"decontaminate": "Succeeded"}
    assert (state / "s3" / "seaweedfs").is_dir() and (state / "report" / "index.html").is_file()
    record = yaml.safe_load((state / "s3" / "process.json").read_text())
    assert not is_running(record["pid"], record["command"][0]), "SeaweedFS outlived the run"

    again, _ = gradatim_run(recipe, env, timeout=600)  # a new SeaweedFS on the same data: the outputs are still there
    assert again.returncode == 0, explain(again, state)
    assert phases(state) == {"decontaminate": "Cached"}


@pytest.mark.timeout(3600)
def test_quickstart_recipe_runs_locally_and_its_table_rises_through_sft(tmp_path):
    """The README's recipe as shipped (seed 0), every stage for real, two jobs at a time as on the cluster, with a
    SeaweedFS of its own. Held-out pass@1 rises base < midtrain < SFT, each beyond the interval of the row before;
    DPO and GRPO do not undo SFT (at this scale they do not add beyond their intervals either: see the recipe's
    report notes), and both are scored on GRPO's training prompts too."""
    env = run_env(GRADATIM_HOME=str(tmp_path / "home"))
    state = tmp_path / "state"
    done, _ = gradatim_run(REPO / "examples" / "quickstart", env, "--state-dir", str(state), "-j", "2", timeout=3500)
    assert done.returncode == 0, explain(done, state)
    found = phases(state)
    assert len(found) == 12 and set(found.values()) == {"Succeeded"}, found
    assert (state / "report" / "index.html").is_file()
    _, _, stages = read_status(state)
    metrics = {s.metadata["name"]: s.status.metrics for s in stages if s.spec.type == "eval"}
    table = {name: (m["pass@1/math-eval"], m["pass@1_ci_low/math-eval"], m["pass@1_ci_high/math-eval"]) for name, m in metrics.items()}
    ran_on = f"CPU kernels: {kernels_of(state, 'sft')} (sft), {kernels_of(state, 'eval-sft')} (eval-sft)"
    for before, after in (("eval-base", "eval-midtrain"), ("eval-midtrain", "eval-sft")):
        assert table[after][0] > table[before][2], f"{after} does not beat {before}'s 95% interval: {table}; {ran_on}"
    for later in ("eval-dpo", "eval-grpo"):
        assert table[later][0] >= table["eval-sft"][1], f"{later} fell below SFT's 95% interval: {table}; {ran_on}"
        assert "pass@1/grpo-prompts" in metrics[later], metrics[later]


def test_gradatim_run_imports_no_kopf():
    """`gradatim run` needs no Kubernetes: the shell it shares with the operator lives outside gradatim.operator."""
    code = "import sys, gradatim.cli, gradatim.local.run; print(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
