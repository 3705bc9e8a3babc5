"""`gradatim quickstart` end to end on the test cluster (a small recipe in the same shape as the example, so it
runs in a minute), and the live view's rows."""

from __future__ import annotations

import hashlib
import io
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from rich.console import Console

from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.planner.graph import cache_keys
from gradatim.planner.pipeline import plan_pipeline
from gradatim.cluster.quickstart import EXAMPLE, current_phase, example_pipeline
from gradatim.local.view import follow, headline, stage_views, table

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parents[1]
TRAIN = {"maxSteps": 4, "batchSize": 8, "microBatchSize": 4, "maxLength": 256, "precision": "fp32", "gradientCheckpointing": False}


def small_recipe(root: Path, namespace: str) -> Path:
    """The example's pipeline with three of its stage types, small enough for a test."""
    root.mkdir(parents=True)
    (root / "kustomization.yaml").write_text(yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                                             "namespace": namespace, "resources": ["pipeline.yaml", "stages.yaml"]}))
    (root / "pipeline.yaml").write_text((EXAMPLE / "pipeline.yaml").read_text().replace("name: mini-reasoning", "name: small"))
    evals = [{"builtin": "tiny-math:eval:8", "name": "math"}]

    def stage(name: str, type_: str, spec: dict) -> dict:
        return {"apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingStage", "metadata": {"name": name},
                "spec": {"pipeline": "small", "type": type_, **spec}}

    stages = [
        stage("decontaminate", "decontaminate", {"inputs": {"data": [{"builtin": "tiny-math:train:32"}], "evalData": evals}, "decontaminate": {}}),
        stage("midtrain", "midtrain", {"dependsOn": ["decontaminate"], "inputs": {"model": {"builtin": "tiny-model"}, "data": [{"fromStage": "decontaminate"}]},
                                       "midtrain": TRAIN}),
        stage("eval-midtrain", "eval", {"dependsOn": ["midtrain"], "inputs": {"model": {"fromStage": "midtrain"}, "evalData": evals},
                                        "eval": {"samplesPerProblem": 2, "maxNewTokens": 16, "systemMessage": "Think."}}),
    ]
    (root / "stages.yaml").write_text(yaml.safe_dump_all(stages))
    return root


def quickstart(cluster, example: Path, *more: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "gradatim", "quickstart", "--state-dir", str(cluster.state_dir), "--example", str(example), "--timeout", "600", *more]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO)


def test_quickstart_runs_the_recipe_follows_it_and_reports(cluster, tmp_path):
    example = small_recipe(tmp_path / "recipe", f"qs-{time.monotonic_ns() % 100000}")
    first = quickstart(cluster, example)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    out = first.stdout
    for stage in ("decontaminate", "midtrain", "eval-midtrain"):
        assert any(stage in line and "Running" in line for line in out.splitlines()), f"the view never showed {stage} running:\n{out}"
        assert any(stage in line and "Succeeded" in line for line in out.splitlines()), out
    assert "loss " in out and "pass@1 " in out, out
    page = Path(next(line.split()[-1] for line in out.splitlines() if line.startswith("Report:")))
    html = page.read_text()
    assert "eval-midtrain" in html and "midtrain" in html and (page.parent / "loss.png").exists()
    ns, name = example_pipeline(example)
    body = cluster.s3_client().get_object(Bucket=cluster.s3_bucket, Key=f"{ns}/{name}/report/index.html")["Body"].read().decode()
    assert body == html

    digest = hashlib.sha256(page.read_bytes()).hexdigest()
    started = time.monotonic()
    again = quickstart(cluster, example)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert time.monotonic() - started < 60, "a re-run should have nothing to do"
    assert "Running" not in again.stdout
    assert hashlib.sha256(page.read_bytes()).hexdigest() == digest, "a re-run that changed nothing changed the report"

    # An edited stage: the pipeline still says Succeeded when the quickstart starts following; it must wait for
    # the operator to run the edited stage and the one after it under their new keys.
    stages = list(yaml.safe_load_all((example / "stages.yaml").read_text()))
    stages[1]["spec"]["midtrain"]["maxSteps"] = 3
    (example / "stages.yaml").write_text(yaml.safe_dump_all(stages))
    edited = quickstart(cluster, example)
    assert edited.returncode == 0, edited.stdout[-3000:] + edited.stderr[-3000:]
    for stage in ("midtrain", "eval-midtrain"):
        assert any(stage in line and "Succeeded" in line for line in edited.stdout.splitlines()), edited.stdout
    assert any("midtrain " in line and "Running" in line for line in edited.stdout.splitlines()), edited.stdout
    assert hashlib.sha256(page.read_bytes()).hexdigest() != digest, "the report shows the edited run"


def test_the_same_recipe_runs_as_trainjobs_with_one_switch(cluster, kube, tmp_path):
    """`gradatim quickstart --backend trainjob` (`make quickstart BACKEND=trainjob`): the real trainer through
    Kubeflow Trainer v2, JobSet and the Job controller instead of training-operator."""
    from kubernetes import client

    example = small_recipe(tmp_path / "recipe", f"qstj-{time.monotonic_ns() % 100000}")
    done = quickstart(cluster, example, "--backend", "trainjob")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ns, _ = example_pipeline(example)
    api = client.CustomObjectsApi(kube)
    stages = api.list_namespaced_custom_object("gradatim.io", "v1alpha1", ns, "trainingstages")["items"]
    assert {s["status"]["backend"] for s in stages} == {"trainjob"} and {s["status"]["phase"] for s in stages} == {"Succeeded"}
    jobs = api.list_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", ns, "trainjobs")["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == ["decontaminate-a1", "eval-midtrain-a1", "midtrain-a1"]
    assert all(any(c["type"] == "Complete" and c["status"] == "True" for c in j["status"]["conditions"]) for j in jobs)
    assert api.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"] == []


def test_an_interrupted_quickstart_leaves_no_trainer_running_and_the_next_one_resumes(cluster, kube, tmp_path):
    """SIGTERM (as Ctrl-C) while a trainer runs: the quickstart suspends the pipeline, and the cluster's pod runner
    stops the trainer (the pod is only removed once its processes are gone); the next quickstart resumes it."""
    from kubernetes import client

    example = small_recipe(tmp_path / "recipe", f"qsi-{time.monotonic_ns() % 100000}")
    ns, name = example_pipeline(example)
    argv = [sys.executable, "-m", "gradatim", "quickstart", "--state-dir", str(cluster.state_dir), "--example", str(example)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    core = client.CoreV1Api(kube)
    try:
        deadline = time.monotonic() + 300
        while not any(p.status.phase == "Running" for p in core.list_namespaced_pod(ns).items):
            assert proc.poll() is None and time.monotonic() < deadline, "no trainer pod ever ran"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode != 0 and f"Suspended TrainingPipeline {ns}/{name}" in out, out[-3000:]
    pipeline = client.CustomObjectsApi(kube).get_namespaced_custom_object("gradatim.io", "v1alpha1", ns, "trainingpipelines", name)
    assert pipeline["spec"]["suspend"] is True
    live = [p.metadata.name for p in core.list_namespaced_pod(ns).items if p.status.phase not in ("Succeeded", "Failed")]
    assert live == [], "a trainer pod outlived the quickstart"

    again = quickstart(cluster, example)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    pipeline = client.CustomObjectsApi(kube).get_namespaced_custom_object("gradatim.io", "v1alpha1", ns, "trainingpipelines", name)
    assert pipeline["spec"]["suspend"] is False and pipeline["status"]["phase"] == "Succeeded"


def test_quickstart_names_the_field_of_a_bad_recipe(cluster, tmp_path):
    example = small_recipe(tmp_path / "recipe", "qs-bad")
    stages = list(yaml.safe_load_all((example / "stages.yaml").read_text()))
    del stages[0]["spec"]["decontaminate"]
    (example / "stages.yaml").write_text(yaml.safe_dump_all(stages))
    result = quickstart(cluster, example)
    assert result.returncode == 1
    assert "spec.decontaminate: Required value" in result.stderr, result.stderr[-3000:]


def stage(name: str, type_: str, deps: list[str], status: dict | None) -> TrainingStage:
    inputs = {"model": {"builtin": "tiny-model"}, "evalData": [{"builtin": "tiny-math:eval"}]} if type_ == "eval" else {
        "model": {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:train"}]}
    return TrainingStage.model_validate({"metadata": {"name": name, "namespace": "ns"}, "status": status,
                                         "spec": {"pipeline": "p", "type": type_, "dependsOn": deps, "inputs": inputs, type_: {}}})


def test_stage_views_are_in_pipeline_order_with_live_values_and_results():
    stages = [
        stage("eval", "eval", ["sft"], None),
        stage("sft", "sft", [], {"phase": "Running", "attempt": 2, "progress": {"step": 5, "totalSteps": 20, "percent": 25, "etaSeconds": 75}}),
    ]
    stages[1].status.progress.loss = 1.25  # from progress.json, by the operator
    views = stage_views(stages)
    assert [v.name for v in views] == ["sft", "eval"]
    sft, ev = views
    assert (sft.phase, sft.step, sft.total_steps, sft.eta_seconds, sft.live, sft.attempt) == ("Running", 5, 20, 75, "loss 1.25", 2)
    assert ev.phase == "Pending" and ev.live == "" and ev.result == ""
    assert "ETA 1:15" in sft.line()
    done = stage_views([stage("eval", "eval", [], {"phase": "Succeeded", "metrics": {"pass@1": 0.25, "pass@1_ci_low": 0.2, "pass@1_ci_high": 0.3}})])
    assert done[0].result == "pass@1 25.0% [20.0%, 30.0%]"
    assert headline("generate", {"acceptance_rate": 0.5}) == "accepted 50.0%"
    two_sets = {"pass@1": 0.5, "pass@1_ci_low": 0.4, "pass@1_ci_high": 0.6, "pass@1/math": 0.25, "pass@1_ci_low/math": 0.2, "pass@1_ci_high/math": 0.3}
    assert headline("eval", two_sets, "math") == "pass@1 25.0% [20.0%, 30.0%]", "the first eval set's, not the mean over sets"
    assert headline("eval", two_sets, "unknown") == "pass@1 50.0% [40.0%, 60.0%]"
    teacher = stage("rollouts", "generate", [], {"phase": "Running", "progress": {"step": 40, "totalSteps": 1800, "etaSeconds": 90, "text": "training tiny-teacher 40/1800", "loss": 0.5}})
    [view] = stage_views([teacher])
    assert "training tiny-teacher 40/1800" in view.line() and "loss 0.5" in view.line() and "ETA 1:30" in view.line()


def test_the_pipeline_phase_counts_only_once_its_status_has_caught_up_with_the_specs():
    def done(name, deps, generation=1, observed=1, key=None, phase="Succeeded"):
        st = stage(name, "sft", deps, {"phase": phase, "observedGeneration": observed, "cacheKey": key})
        st.metadata["generation"] = generation
        return st

    first = [done("a", []), done("b", ["a"])]
    keys = cache_keys({s.metadata["name"]: s for s in first}, "img")
    settled = [done("a", [], key=keys["a"]), done("b", ["a"], key=keys["b"])]
    body = {"metadata": {"generation": 1}, "status": {"phase": "Succeeded", "observedGeneration": 1}}
    assert current_phase(body, settled) == "Succeeded"
    assert current_phase({**body, "status": {"phase": "Failed", "observedGeneration": 1}}, settled) == "Failed"
    edited = [done("a", [], generation=2, observed=1, key=keys["a"]), settled[1]]
    assert current_phase(body, edited) == "Running", "the operator has not seen the edit yet"
    assert current_phase(body, [done("a", [], phase="Running", key=keys["a"]), settled[1]]) == "Running"
    assert current_phase({"metadata": {"generation": 2}, "status": {"phase": "Succeeded", "observedGeneration": 1}}, settled) == "Running"
    assert current_phase({**body, "status": {"phase": "Running"}}, settled) == "Running"
    # b still shows its result under its key from before a changed: the pipeline's status does not count it done.
    pipe = TrainingPipeline.model_validate({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"storage": {"bucket": "models", "secretRef": {"name": "s"}}}})
    downstream = {"a": settled[0], "b": done("b", ["a"], key="its-key-before-a-changed")}
    assert plan_pipeline(pipe, downstream, NOW, keys).phase == "Pending"
    assert plan_pipeline(pipe, {"a": settled[0], "b": settled[1]}, NOW, keys).phase == "Succeeded"


def test_follow_prints_a_line_per_change_without_a_terminal():
    states = iter([("Running", "Running", 1), ("Running", "Running", 1), ("Succeeded", "Succeeded", 4)])

    def poll():
        phase, stage_phase, step = next(states)
        s = stage("sft", "sft", [], {"phase": stage_phase, "progress": {"step": step, "totalSteps": 4, "percent": 25 * step}})
        return phase, stage_views([s])

    buffer = io.StringIO()
    assert follow("p", poll, interval=0, console=Console(file=buffer, force_terminal=False)) == "Succeeded"
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 and "Running" in lines[0] and "1/4" in lines[0] and "Succeeded" in lines[1]


def test_the_live_view_fits_80_and_120_columns_and_keeps_names_phases_and_results_whole():
    """The quickstart's stages mid-run, rendered as a terminal of each width shows them."""
    recipe = [d for f in ("pipeline.yaml", "stages.yaml") for d in yaml.safe_load_all((EXAMPLE / f).read_text()) if d and d["kind"] == "TrainingStage"]
    statuses = {
        "teacher-rollouts": {"phase": "Succeeded", "metrics": {"acceptance_rate": 0.8312}},
        "eval-base": {"phase": "Succeeded", "metrics": {"pass@1": 0.0125, "pass@1_ci_low": 0.001, "pass@1_ci_high": 0.024}},
        "decontaminate": {"phase": "Cached", "metrics": {"removed_fraction": 0.0}},
        "midtrain": {"phase": "Running", "attempt": 2, "progress": {"step": 412, "totalSteps": 1236, "etaSeconds": 3725, "loss": 0.4567,
                                                                     "text": "training tiny-teacher 412/1236"}},
        "eval-midtrain": {"phase": "Retrying", "attempt": 2},
        "sft": {"phase": "Failed", "metrics": {}},
    }
    stages = [stage(d["metadata"]["name"], d["spec"]["type"], d["spec"].get("dependsOn", []), statuses.get(d["metadata"]["name"])) for d in recipe]
    stages[[s.metadata["name"] for s in stages].index("midtrain")].status.progress.loss = 0.4567
    views = stage_views(stages)
    for width in (80, 120, 160):
        console = Console(width=width, record=True, force_terminal=True, color_system=None, file=io.StringIO())
        console.print(table("TrainingPipeline default/mini-reasoning  Running  12:34", views, width))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width, text
        for v in views:
            [row] = [line for line in text.splitlines() if f" {v.name} " in line]  # the name whole, on one row
            assert v.phase in row, text
            assert v.result in row, text  # "pass@1 1.2% [0.1%, 2.4%]" whole
        assert "412/1236" in text, "the running stage's progress gave way: " + text
        if width >= 120:
            assert "1:02:05" in text and "loss 0.4567" in text, text  # ETA and live values
        if width >= 160:
            assert " midtrain " in text and "█" in text and "type" in text, text
