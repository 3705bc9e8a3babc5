"""The planner's decisions, as pure functions of the observed world."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.api.runfiles import RunProgress, RunResults
from gradatim.planner.graph import cache_keys, downstream, find_cycle, topological_order
from gradatim.planner.stage import CreateJob, DeleteJob, Observed, Reads, SetJobSuspended, StorageFault, plan_stage, reads_for

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def pipeline(**spec) -> TrainingPipeline:
    return TrainingPipeline.model_validate(
        {"metadata": {"name": "recipe", "namespace": "ml", "uid": "p-uid"},
         "spec": {"storage": {"bucket": "models", "secretRef": {"name": "s3"}}, **spec}}
    )


def stage(name: str, type_: str = "sft", deps=(), model=None, status=None, generation=1, labels=None, **spec) -> TrainingStage:
    inputs = {"model": model or {"hf": "org/base"}, "data": [{"uri": "s3://data/train/"}]}
    if type_ == "eval":
        inputs = {"model": model or {"hf": "org/base"}, "evalData": [{"builtin": "tiny-math:eval", "name": "math"}]}
    body = {
        "metadata": {"name": name, "namespace": "ml", "uid": f"{name}-uid", "generation": generation, "labels": labels or {}},
        "spec": {"pipeline": "recipe", "type": type_, "dependsOn": list(deps), "inputs": inputs, type_: {}, **spec},
    }
    if status:
        body["status"] = status
    return TrainingStage.model_validate(body)


def observe(st, pipe=None, siblings=(), job=None, results=None, progress=None, now=NOW, **more) -> Observed:
    """The run files as the shell reads them: through the types the trainer writes them with."""
    sibs = {s.metadata["name"]: s for s in (*siblings, st)}
    results = RunResults.model_validate(results) if results is not None else None
    progress = RunProgress.model_validate(progress) if progress is not None else None
    return Observed(stage=st, pipeline=pipe or pipeline(), siblings=sibs, job=job, results=results, progress=progress, now=now, **more)


def key_of(name, *stages, pipe=None):
    return cache_keys({s.metadata["name"]: s for s in stages}, (pipe or pipeline()).spec.image)[name]


def done(st: TrainingStage, *others, outputs=None, phase="Succeeded") -> TrainingStage:
    key = key_of(st.metadata["name"], st, *others)
    status = {"phase": phase, "cacheKey": key, "observedGeneration": 1, "outputs": outputs or {"model": f"s3://models/ml/recipe/{st.metadata['name']}/{key}/model/"}}
    return TrainingStage.model_validate(st.model_dump(by_alias=True) | {"status": status})


def job(name, *conditions, suspend=False):
    return {"metadata": {"name": name}, "spec": {"runPolicy": {"suspend": suspend}},
            "status": {"conditions": [{"type": t, "status": "True", "message": m} for t, m in conditions]}}


def test_a_stage_without_dependencies_starts_its_first_attempt():
    plan = plan_stage(observe(stage("sft")))
    assert plan.status.phase == "Running" and plan.status.attempt == 1 and plan.status.job_name == "sft-a1"
    [create] = plan.actions
    assert isinstance(create, CreateJob) and create.job["metadata"]["name"] == "sft-a1"
    assert {c.type: c.status for c in plan.status.conditions} == {"Ready": "False", "Reconciling": "True", "Stalled": "False", "Succeeded": "Unknown"}
    assert plan.events[0].reason == "JobCreated"


def test_a_job_whose_status_write_was_lost_is_adopted_not_mistaken_for_a_cache_hit():
    st = stage("sft")
    key = key_of("sft", st)
    orphan = job("sft-a1", ("Succeeded", "done"))
    orphan["metadata"]["labels"] = {"gradatim.io/cache-key": key}
    plan = plan_stage(observe(st, job=orphan, results={"metrics": {"train_loss": 1.0}, "outputs": {"model": "s3://m/"}}))
    assert plan.status.phase == "Succeeded" and plan.status.attempt == 1 and plan.status.job_name == "sft-a1" and not plan.actions
    running = job("sft-a1", ("Running", "running"))
    running["metadata"]["labels"] = {"gradatim.io/cache-key": key}
    plan = plan_stage(observe(st, job=running))
    assert plan.status.phase == "Running" and plan.status.job_name == "sft-a1" and not plan.actions, "adopted, not created twice"
    stale = job("sft-a1", ("Succeeded", "done"))
    stale["metadata"]["labels"] = {"gradatim.io/cache-key": "another-key"}
    plan = plan_stage(observe(st, job=stale, results={"metrics": {}, "outputs": {"model": "s3://m/"}}))
    assert plan.status.phase == "Cached" and plan.status.attempt == 0, "a job of other content is not this run's"


def test_a_running_job_reports_its_progress_and_the_activity_before_its_steps():
    st = stage("rollouts")
    running = job("rollouts-a1", ("Running", "running"))
    running["metadata"]["labels"] = {"gradatim.io/cache-key": key_of("rollouts", st)}
    plan = plan_stage(observe(st, job=running, progress={"step": 40, "totalSteps": 1800, "etaSeconds": 120.5, "activity": "training tiny-teacher"}))
    assert plan.status.progress.model_dump(exclude_none=True) == {"step": 40, "total_steps": 1800, "percent": 2, "eta_seconds": 120, "text": "training tiny-teacher 40/1800"}
    plan = plan_stage(observe(st, job=running, progress={"step": 3, "totalSteps": 12, "etaSeconds": 9}))
    assert plan.status.progress.text == "3/12" and plan.status.progress.percent == 25


def test_waits_for_dependencies_then_resolves_their_outputs():
    mid = stage("midtrain", "midtrain")
    sft = stage("sft", deps=["midtrain"], model={"fromStage": "midtrain"})
    waiting = plan_stage(observe(sft, siblings=[mid]))
    assert waiting.status.phase == "Pending" and not waiting.actions and "midtrain" in waiting.message
    mid_done = done(mid, sft)
    plan = plan_stage(observe(sft, siblings=[mid_done]))
    [create] = plan.actions
    import json
    resolved = json.loads(create.configmap["data"]["stage.json"])
    assert resolved["inputs"]["model"]["uri"] == mid_done.status.outputs["model"]
    from gradatim.api.resolved import ResolvedStageSpec

    contract = ResolvedStageSpec.model_validate(resolved)  # what the trainer will read
    assert contract.typed_params() == sft.params() and contract.inputs.model.produced_by.stage == "midtrain"
    assert resolved["output"]["uri"] == f"s3://models/ml/recipe/sft/{plan.status.cache_key}/"


def test_success_records_results_and_cached_needs_no_job():
    st = stage("sft")
    running = plan_stage(observe(st)).status
    st = TrainingStage.model_validate(st.model_dump(by_alias=True) | {"status": running.model_dump(by_alias=True)})
    results = {"metrics": {"train_loss": 0.5}, "outputs": {"model": "s3://models/x/model/"}}
    plan = plan_stage(observe(st, job=job("sft-a1", ("Succeeded", "")), results=results))
    assert plan.status.phase == "Succeeded" and plan.status.metrics == {"train_loss": 0.5} and not plan.actions
    assert {c.type: c.status for c in plan.status.conditions}["Ready"] == "True"
    cached = plan_stage(observe(stage("sft"), results=results))
    assert cached.status.phase == "Cached" and not cached.actions and cached.status.attempt == 0


def _with_status(st, status):
    return TrainingStage.model_validate(st.model_dump(by_alias=True) | {"status": status.model_dump(by_alias=True)})


def test_failure_backs_off_retries_and_stops_at_the_limit():
    st = stage("sft", retryLimit=1, retryBackoffSeconds=10)
    st = _with_status(st, plan_stage(observe(st)).status)
    failed = plan_stage(observe(st, job=job("sft-a1", ("Failed", "OOMKilled"))))
    assert failed.status.phase == "Retrying" and failed.status.retries == 1 and failed.requeue_after == 10
    assert "OOMKilled" in failed.message
    assert [a.name for a in failed.actions if isinstance(a, DeleteJob)] == ["sft-a1"], "the failed attempt's job goes at once"
    st = _with_status(st, failed.status)
    again = plan_stage(observe(st, job=job("sft-a1", ("Failed", "OOMKilled")), now=NOW + timedelta(seconds=5)))
    assert again.status.phase == "Retrying" and again.status.retries == 1, "one failure is counted once"
    gone = plan_stage(observe(st, job=None, now=NOW + timedelta(seconds=6)))
    assert gone.status.phase == "Retrying" and gone.status.retries == 1 and not gone.actions and "OOMKilled" in gone.message, \
        "with its job deleted, the back-off still holds and the failure is still told"
    pod = {"metadata": {"name": "sft-a1-master-0"}, "status": {"phase": "Failed"}}
    stopping = plan_stage(observe(_with_status(st, gone.status), job=None, pods=(pod,), now=NOW + timedelta(seconds=11)))
    assert stopping.status.phase == "Retrying" and not stopping.actions and "OOMKilled" in stopping.message, \
        "no next attempt while the failed one's pods are still there"
    lingering = plan_stage(observe(st, job=job("sft-a1", ("Failed", "OOMKilled")), now=NOW + timedelta(seconds=11)))
    assert lingering.status.job_name == "sft-a1" and not any(isinstance(a, CreateJob) for a in lingering.actions), \
        "no next attempt while the failed one's job is still there (being deleted)"
    due = plan_stage(observe(st, job=None, now=NOW + timedelta(seconds=11)))
    assert due.status.job_name == "sft-a2" and isinstance(due.actions[0], CreateJob)
    st = _with_status(st, due.status)
    final = plan_stage(observe(st, job=job("sft-a2", ("Failed", "NaN loss")), now=NOW + timedelta(seconds=60)))
    assert final.status.phase == "Failed" and "retry limit 1" in final.message
    assert {c.type: c.status for c in final.status.conditions}["Stalled"] == "True"


def test_the_operator_enforces_the_deadline_from_the_jobs_start():
    """training-operator v1.9 checks activeDeadlineSeconds only when an event touches the job: the planner does it,
    on time (a requeue at the deadline), counting from the job's startTime (not time queued)."""
    st = stage("sft", activeDeadlineSeconds=60, retryLimit=1, retryBackoffSeconds=5)
    st = _with_status(st, plan_stage(observe(st)).status)
    running = job("sft-a1", ("Running", ""))
    queued = plan_stage(observe(st, job=job("sft-a1"), now=NOW + timedelta(seconds=600)))
    assert queued.status.phase == "Running" and not queued.actions, "a job that never started has not used its time"
    running["status"]["startTime"] = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    early = plan_stage(observe(st, job=running, now=NOW + timedelta(seconds=20)))
    assert early.status.phase == "Running" and not early.actions and 40 <= early.requeue_after <= 42
    late = plan_stage(observe(st, job=running, now=NOW + timedelta(seconds=61)))
    assert late.status.phase == "Retrying" and late.status.retries == 1
    assert "spec.activeDeadlineSeconds (60 s" in late.message and [a.name for a in late.actions if isinstance(a, DeleteJob)] == ["sft-a1"]
    st = _with_status(st, late.status)
    st = _with_status(st, plan_stage(observe(st, job=None, now=NOW + timedelta(seconds=70))).status)
    assert st.status.job_name == "sft-a2"
    second = job("sft-a2", ("Running", ""))
    second["status"]["startTime"] = (NOW + timedelta(seconds=70)).strftime("%Y-%m-%dT%H:%M:%SZ")
    final = plan_stage(observe(st, job=second, now=NOW + timedelta(seconds=131)))
    assert final.status.phase == "Failed" and "retry limit 1" in final.message
    assert [a.name for a in final.actions if isinstance(a, DeleteJob)] == ["sft-a2"], "an overdue last attempt is stopped too"


def test_failed_upstream_and_failed_gate_block_downstream_with_the_reason():
    mid = stage("midtrain", "midtrain")
    failed = TrainingStage.model_validate(mid.model_dump(by_alias=True) | {"status": {"phase": "Failed", "observedGeneration": 1, "conditions": [
        {"type": "Stalled", "status": "True", "reason": "RetryLimitExceeded", "message": "job midtrain-a3 failed: OOM", "lastTransitionTime": NOW.isoformat()}]}})
    sft = stage("sft", deps=["midtrain"], model={"fromStage": "midtrain"})
    plan = plan_stage(observe(sft, siblings=[failed]))
    assert plan.status.phase == "Blocked" and "midtrain failed: job midtrain-a3 failed: OOM" in plan.message
    ev = stage("eval", "eval", deps=["sft"], model={"fromStage": "sft"})
    blocked_sft = _with_status(sft, plan.status)
    assert "sft is blocked" in plan_stage(observe(ev, siblings=[failed, blocked_sft])).message

    gated = stage("gated", "eval", qualityGate={"metric": "pass@1", "threshold": 0.9})
    gated = _with_status(gated, plan_stage(observe(gated)).status)
    plan = plan_stage(observe(gated, job=job("gated-a1", ("Succeeded", "")), results={"metrics": {"pass@1": 0.4}, "outputs": {}}))
    assert plan.status.phase == "Failed" and plan.status.gate.passed is False and "pass@1 = 0.4" in plan.message
    after = stage("after", deps=["gated"])
    assert "failed its quality gate" in plan_stage(observe(after, siblings=[_with_status(gated, plan.status)])).message


def test_cycles_and_missing_dependencies_are_reported():
    a, b = stage("a", deps=["b"]), stage("b", deps=["a"])
    plan = plan_stage(observe(a, siblings=[b]))
    assert plan.status.phase == "Blocked" and plan.reason == "DependencyCycle" and "a -> b -> a" in plan.message
    assert find_cycle({"a": a, "b": b}) is not None
    missing = plan_stage(observe(stage("c", deps=["ghost"])))
    assert missing.reason == "DependencyNotFound" and "ghost" in missing.message
    assert plan_stage(Observed(stage("d"), None, {}, None, None, None, NOW)).reason == "PipelineNotFound"


def test_editing_a_stage_changes_its_key_and_every_key_downstream_only():
    a = stage("a", "midtrain")
    b = stage("b", deps=["a"], model={"fromStage": "a"})
    c = stage("c", "eval", deps=["b"], model={"fromStage": "b"})
    side = stage("side", "midtrain")
    before = cache_keys({s.metadata["name"]: s for s in (a, b, c, side)}, "img")
    b2 = stage("b", deps=["a"], model={"fromStage": "a"}, sft={"learningRate": 2e-5})
    after = cache_keys({s.metadata["name"]: s for s in (a, b2, c, side)}, "img")
    assert before["a"] == after["a"] and before["side"] == after["side"]
    assert before["b"] != after["b"] and before["c"] != after["c"]
    assert downstream("a", {"a": a, "b": b, "c": c}) == {"b", "c"}
    assert topological_order({"c": c, "b": b, "a": a}) == ["a", "b", "c"]
    # Resources, retries and suspend do not change what a stage produces.
    assert cache_keys({"a": stage("a", "midtrain", resources={"nodes": 4}, retryLimit=9, suspend=True)}, "img")["a"] == before["a"]


def test_an_edit_deletes_the_obsolete_running_job_and_starts_over():
    st = stage("sft")
    st = _with_status(st, plan_stage(observe(st)).status)
    edited = TrainingStage.model_validate(st.model_dump(by_alias=True) | {"spec": st.spec.model_dump(by_alias=True) | {"seed": 5}})
    plan = plan_stage(observe(edited, job=job("sft-a1", ("Running", ""))))
    assert isinstance(plan.actions[0], DeleteJob) and plan.actions[0].name == "sft-a1"
    assert isinstance(plan.actions[1], CreateJob) and plan.status.job_name == "sft-a2"


def test_suspend_pauses_the_job_and_kueue_jobs_are_stopped_not_unsuspended():
    st = stage("sft")
    st = _with_status(st, plan_stage(observe(st)).status)
    paused = TrainingStage.model_validate(st.model_dump(by_alias=True) | {"spec": st.spec.model_dump(by_alias=True) | {"suspend": True}})
    plan = plan_stage(observe(paused, job=job("sft-a1", ("Running", ""))))
    assert plan.status.phase == "Suspended" and plan.actions == [SetJobSuspended("sft-a1", True)]
    resumed = plan_stage(observe(st, job=job("sft-a1", ("Suspended", ""), suspend=True)))
    assert resumed.actions == [SetJobSuspended("sft-a1", False)]
    kueue = pipeline(queueName="team-a", suspend=True)
    plan = plan_stage(observe(st, pipe=kueue, job=job("sft-a1", ("Running", ""))))
    assert isinstance(plan.actions[0], DeleteJob) and plan.status.phase == "Suspended"
    # Kueue admits by flipping runPolicy.suspend; a suspended Kueue job is left alone.
    waiting = plan_stage(observe(st, pipe=pipeline(queueName="team-a"), job=job("sft-a1", suspend=True)))
    assert waiting.actions == [] and waiting.reason == "WaitingForAdmission"


def test_rendered_pytorchjob_has_the_shape_kubeflow_expects():
    pipe = pipeline(queueName="team-a", priorityClassName="high", resources={"nodes": 4, "gpusPerNode": 8, "shmSize": "64Gi"})
    st = stage("sft", labels={"app.kubernetes.io/instance": "argo-app"}, env=[{"name": "NCCL_DEBUG", "value": "INFO"}])
    [create] = plan_stage(observe(st, pipe=pipe)).actions
    pj = create.job
    assert pj["apiVersion"] == "kubeflow.org/v1" and pj["kind"] == "PyTorchJob"
    assert pj["metadata"]["ownerReferences"][0]["uid"] == "sft-uid" and pj["metadata"]["ownerReferences"][0]["controller"]
    labels = pj["metadata"]["labels"]
    assert "app.kubernetes.io/instance" not in labels and labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert labels["gradatim.io/stage"] == "sft" and labels["gradatim.io/attempt"] == "1"
    spec = pj["spec"]
    assert spec["nprocPerNode"] == "8" and spec["runPolicy"]["suspend"] is True  # Kueue admits it
    assert spec["runPolicy"]["schedulingPolicy"] == {"priorityClass": "high"}
    master, worker = spec["pytorchReplicaSpecs"]["Master"], spec["pytorchReplicaSpecs"]["Worker"]
    assert master["replicas"] == 1 and worker["replicas"] == 3
    container = worker["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["command"][:3] == ["torchrun", "-m", "gradatim.trainer"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["NCCL_DEBUG"]["value"] == "INFO"
    assert env["GRADATIM_CPU_LIMIT"]["valueFrom"] == {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}  # the trainer's threads
    shm = next(v for v in worker["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    single = plan_stage(observe(stage("one"), pipe=pipeline(resources={"nodes": 1, "gpusPerNode": 0}))).actions[0].job
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"] and single["spec"]["nprocPerNode"] == "1"


def test_pipeline_status_aggregates_its_stages():
    from gradatim.planner.pipeline import plan_pipeline

    a = done(stage("a", "midtrain"))
    b = _with_status(stage("b", deps=["a"], model={"fromStage": "a"}), plan_stage(observe(stage("b", deps=["a"], model={"fromStage": "a"}), siblings=[a])).status)
    c = stage("c", "eval", deps=["b"], model={"fromStage": "b"})
    status = plan_pipeline(pipeline(), {"a": a, "b": b, "c": c}, NOW)
    assert status.phase == "Running" and status.progress == "1/3" and status.current_stage == "b"
    assert [s.name for s in status.stages] == ["a", "b", "c"]
    assert {c.type: c.status for c in status.conditions}["Reconciling"] == "True"


def test_a_pipeline_of_a_thousand_stages_keeps_its_status_writable_with_exact_counts():
    """More stages than the status lists: the 256 summaries are those that need attention (the failed ones first),
    the counts stay exact, and the condition message stays bounded."""
    from gradatim.api.pipeline import STAGE_SUMMARY_LIMIT
    from gradatim.planner.pipeline import MESSAGE_LIMIT, plan_pipeline

    def with_phase(name: str, phase: str) -> TrainingStage:
        message = {"type": "Stalled", "status": "True", "reason": "JobFailed", "message": "x" * 900, "lastTransitionTime": NOW.isoformat()}
        status = {"phase": phase, "conditions": [message] if phase == "Failed" else []}
        return stage(name, status=status)

    phases = ["Succeeded"] * 700 + ["Failed"] * 40 + ["Running"] * 60 + ["Pending"] * 200
    stages = {f"s{i:04d}": with_phase(f"s{i:04d}", p) for i, p in enumerate(phases)}
    status = plan_pipeline(pipeline(), stages, NOW)
    assert status.stages_total == 1000 and status.stages_done == 700 and status.progress == "700/1000"
    assert len(status.stages) == STAGE_SUMMARY_LIMIT and status.stages_not_listed == 1000 - STAGE_SUMMARY_LIMIT
    listed = {s.name: s.phase for s in status.stages}
    assert sum(p == "Failed" for p in listed.values()) == 40 and sum(p == "Running" for p in listed.values()) == 60
    assert sum(p == "Succeeded" for p in listed.values()) == 0, "done stages give way first"
    assert [s.name for s in status.stages] == sorted(listed), "still in dependency order"
    assert status.phase == "Failed"
    ready = {c.type: c for c in status.conditions}["Ready"]
    assert len(ready.message) <= MESSAGE_LIMIT and ready.message.endswith("more")
    TrainingPipeline.model_validate(pipeline().model_dump(by_alias=True) | {"status": status.model_dump(by_alias=True)})


# -- what the shell reads, and S3 faults that pass ------------------------------------------------------------

def test_the_planner_says_what_to_read_a_done_stage_reads_nothing():
    st = stage("sft")
    key = key_of("sft", st)
    keys = {"sft": key}

    def reads(s, job):
        return reads_for(s, job, keys, {"sft": s})

    assert reads(st, None) == Reads(results=True), "no job yet: a cache hit is possible"
    mid = stage("mid")
    after = stage("sft2", deps=("mid",), model={"fromStage": "mid"})
    both = {"mid": mid, "sft2": after}
    keys2 = cache_keys(both, pipeline().spec.image)
    assert reads_for(after, None, keys2, both) == Reads(), "its dependency is not done: nothing to look for yet"
    both["mid"] = done(mid)
    assert reads_for(after, None, keys2, both) == Reads(results=True)
    running = job("sft-a1", ("Running", "running"))
    started = TrainingStage.model_validate(st.model_dump(by_alias=True) | {"status": {"phase": "Running", "cacheKey": key, "jobName": "sft-a1", "attempt": 1, "observedGeneration": 1}})
    assert reads(started, running) == Reads(progress=True), "running: its progress only"
    assert reads(started, job("sft-a1", ("Failed", "boom"))) == Reads(results=True, error=True, pods=True)
    assert reads(started, job("sft-a1", ("Suspended", ""))) == Reads()
    finished = done(st)
    assert reads(finished, job("sft-a1", ("Succeeded", ""))) == Reads(), "settled for its spec and key"
    keys["sft"] = "another-key"
    assert reads(finished, running) == Reads(results=True), "new content: look for a cache hit"
    plan = plan_stage(observe(finished))
    assert plan.status.phase == "Succeeded" and not plan.actions, "a settled stage keeps its status without its results"


def test_an_s3_fault_that_may_pass_keeps_the_stage_running_then_blocks_it_after_the_patience():
    st = stage("sft")
    key = key_of("sft", st)
    running = job("sft-a1", ("Running", "running"))
    running["metadata"]["labels"] = {"gradatim.io/cache-key": key}
    status = {"phase": "Running", "cacheKey": key, "jobName": "sft-a1", "attempt": 1, "observedGeneration": 1}
    st = TrainingStage.model_validate(st.model_dump(by_alias=True) | {"status": status})
    fault = StorageFault("TrainingPipeline recipe spec.storage.endpoint: cannot reach S3 at http://s3:9000: timed out", transient=True)
    plan = plan_stage(observe(st, job=running, storage_fault=fault, storage_patience_seconds=60))
    assert plan.status.phase == "Running" and not plan.actions and plan.requeue_after
    conditions = {c.type: c for c in plan.status.conditions}
    assert conditions["Stalled"].status == "False" and conditions["Reconciling"].status == "True"
    assert "retrying S3" in conditions["Reconciling"].message and "spec.storage.endpoint" in conditions["Reconciling"].message
    assert conditions["StorageAvailable"].status == "False"
    held = TrainingStage.model_validate(st.model_dump(by_alias=True) | {"status": plan.status.to_wire()})
    later = plan_stage(observe(held, job=running, storage_fault=fault, storage_patience_seconds=60, now=NOW + timedelta(seconds=30)))
    assert later.status.phase == "Running", "still within the patience"
    blocked = plan_stage(observe(held, job=running, storage_fault=fault, storage_patience_seconds=60, now=NOW + timedelta(seconds=61)))
    assert blocked.status.phase == "Blocked" and blocked.reason == "StorageUnavailable"
    assert {c.type: c.status for c in blocked.status.conditions}["Stalled"] == "True"
    recovered = plan_stage(observe(held, job=running, progress={"step": 3, "totalSteps": 10}, now=NOW + timedelta(seconds=40)))
    assert recovered.status.phase == "Running" and "StorageAvailable" not in {c.type for c in recovered.status.conditions}


def test_an_s3_fault_a_user_must_fix_is_invalid_at_once():
    fault = StorageFault("TrainingPipeline recipe spec.storage.bucket: bucket 'nope' does not exist", transient=False)
    plan = plan_stage(observe(stage("sft"), storage_fault=fault))
    assert plan.status.phase == "Invalid" and "spec.storage.bucket" in plan.message and not plan.actions


def test_a_pending_job_whose_pods_are_refused_is_blocked_until_one_is_created():
    st = stage("sft")
    st = _with_status(st, plan_stage(observe(st)).status)
    refused = ({"reason": "FailedCreatePod", "message": 'pods "sft-a1-master-0" is forbidden: serviceaccount "x" not found'},)
    plan = plan_stage(observe(st, job=job("sft-a1"), events=refused))
    assert plan.status.phase == "Blocked" and 'serviceaccount "x" not found' in plan.message and not plan.actions
    assert {c.type: c.status for c in plan.status.conditions}["Stalled"] == "True"
    later = refused + ({"reason": "SuccessfulCreatePod", "message": "Created pod: sft-a1-master-0"},)
    assert plan_stage(observe(st, job=job("sft-a1"), events=later)).status.phase == "Running", "a pod created since: the old event is history"
    assert reads_for(st, job("sft-a1"), {"sft": st.status.cache_key}, {"sft": st}).events
