"""The operator and the pod runner, as real processes, on the real API server, Kubeflow controllers and SeaweedFS.
Jobs run tests/stand_in_trainer.py (named as such), a stand-in for gradatim.trainer."""

from __future__ import annotations

import json
from datetime import datetime
import os
import random
import signal
import time
import urllib.parse
import urllib.request

import pytest
from kubernetes import client

from gradatim.planner.jobs import KINDS, job_suspend_flag, suspend_patch
from gradatim.storage import s3
from gradatim.cluster.kubelet import free_port
from gradatim.cluster.layout import StateLayout
from gradatim.cluster.state import ClusterState
from tests.operator_harness import STORAGE_PATIENCE_SECONDS, running_harness


@pytest.fixture(scope="module")
def h(cluster, kube, tmp_path_factory):
    with running_harness(cluster, kube, tmp_path_factory.mktemp("operator"), "op") as harness:
        yield harness


@pytest.fixture(scope="module")
def tj(cluster, kube, tmp_path_factory):
    """Pipelines with `backend: trainjob`: Kubeflow Trainer v2 TrainJobs on JobSet, on gradatim-torch."""
    with running_harness(cluster, kube, tmp_path_factory.mktemp("trainjob"), "tj", backend="trainjob") as harness:
        yield harness


@pytest.fixture(params=["pytorchjob", "trainjob"])
def hb(request):
    """The core scenarios run on both backends; the rest on PyTorchJob (the default where its CRD is installed)."""
    return request.getfixturevalue("h" if request.param == "pytorchjob" else "tj")


def pod_creations(h, job: str) -> list:
    """The controllers' own record of each pod they created for `job`: training-operator's events on the
    PyTorchJob, the Job controller's on a TrainJob's node Job."""
    return [e for name in (job, f"{job}-node-0") for e in h.events(name)
            if e.reason == "SuccessfulCreatePod" or (e.reason == "SuccessfulCreate" and e.involved_object.kind == "Job")]


def s3_client(cluster):
    return s3.client(cluster.s3_endpoint, cluster.s3_access_key, cluster.s3_secret_key, cluster.s3_region)


def test_four_stage_pipeline_runs_to_the_end_handing_outputs_over_s3(hb, cluster):
    hb.pipeline("four")
    hb.stage("gen", "four", "generate", generate={"samplesPerPrompt": 2})
    hb.stage("mid", "four", "midtrain", deps=("gen",), inputs={"model": {"builtin": "tiny-model"}, "data": [{"fromStage": "gen"}]})
    hb.stage("sft", "four", "sft", deps=("mid", "gen"), inputs={"model": {"fromStage": "mid"}, "data": [{"fromStage": "gen", "output": "traces"}]})
    hb.stage("ev", "four", "eval", deps=("sft",), model={"fromStage": "sft"}, env={"STAND_IN_METRICS": '{"pass@1": 0.5}'})
    pipe = hb.wait("trainingpipelines", "four", lambda o: (o.get("status") or {}).get("phase") == "Succeeded", 240, "Succeeded")
    assert pipe["status"]["progress"] == "4/4" and [s["name"] for s in pipe["status"]["stages"]] == ["gen", "mid", "sft", "ev"]
    assert {c["type"]: c["status"] for c in pipe["status"]["conditions"]}["Ready"] == "True"
    sft = hb.get("trainingstages", "sft")
    mid = hb.get("trainingstages", "mid")
    cm = client.CoreV1Api(hb.kube).read_namespaced_config_map(f"{sft['status']['jobName']}-spec", hb.namespace)
    resolved = json.loads(cm.data["stage.json"])
    assert resolved["inputs"]["model"]["uri"] == mid["status"]["outputs"]["model"]
    assert resolved["output"]["uri"] == f"s3://{cluster.s3_bucket}/{hb.namespace}/four/sft/{sft['status']['cacheKey']}/"
    store = s3_client(cluster)
    assert s3.read_json(store, resolved["output"]["uri"] + "results.json")["outputs"]["model"].startswith("s3://")
    ev = hb.get("trainingstages", "ev")
    assert ev["status"]["metrics"]["pass@1"] == 0.5 and ev["status"]["phase"] == "Succeeded"
    assert ev["status"]["progress"]["text"] == "3/3"
    reasons = {e.reason for e in hb.events("sft")}
    assert {"JobCreated", "JobSucceeded"} <= reasons, reasons
    for name in ("gen", "mid", "sft", "ev"):
        assert len(hb.jobs(name)) == 1


def test_failure_retries_from_the_checkpoint_then_succeeds(hb, cluster):
    hb.pipeline("retry")
    hb.stage("flaky", "retry", env={"STAND_IN_FAIL_ATTEMPTS": "1", "STAND_IN_STEPS": "4"}, retryLimit=2)
    st = hb.wait_phase("flaky", "Succeeded", timeout=120)
    assert st["status"]["attempt"] == 2 and st["status"]["retries"] == 1
    results = s3.read_json(s3_client(cluster), f"s3://{cluster.s3_bucket}/{hb.namespace}/retry/flaky/{st['status']['cacheKey']}/results.json")
    assert results["resumedAt"] == 1, "attempt 2 resumed from the checkpoint attempt 1 wrote at step 1"
    assert [j["metadata"]["name"] for j in hb.jobs("flaky")] == ["flaky-a2"], "the failed attempt's job was deleted"
    # The controller's own record: attempt 1's pod was created once, never brought back beside attempt 2.
    assert len(pod_creations(hb, "flaky-a1")) == 1, [(e.reason, e.message) for n in ("flaky-a1", "flaky-a1-node-0") for e in hb.events(n)]


def test_retry_limit_fails_the_stage_and_blocks_downstream(h):
    h.pipeline("doomed")
    h.stage("broken", "doomed", env={"STAND_IN_FAIL_ATTEMPTS": "99"}, retryLimit=1)
    h.stage("after", "doomed", "eval", deps=("broken",), model={"fromStage": "broken"})
    st = h.wait_phase("broken", "Failed", timeout=120)
    assert st["status"]["attempt"] == 2 and "retry limit 1 reached" in next(c["message"] for c in st["status"]["conditions"] if c["type"] == "Stalled")
    after = h.wait_phase("after", "Blocked")
    stalled = next(c for c in after["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "dependency broken failed" in stalled["message"]
    assert h.jobs("after") == []
    pipe = h.wait("trainingpipelines", "doomed", lambda o: (o.get("status") or {}).get("phase") == "Failed", 30, "Failed")
    assert "broken" in next(c["message"] for c in pipe["status"]["conditions"] if c["type"] == "Stalled")


def test_the_trainers_one_line_reason_is_the_stalled_message(h):
    # The real trainer (any image but the stand-in's runs gradatim.trainer): it fails on its first input, in seconds.
    h.pipeline("why", image="gradatim/trainer:test")
    h.stage("nomodel", "why", model={"builtin": "tiny-foo"}, retryLimit=0)
    st = h.wait_phase("nomodel", "Failed", timeout=120)
    message = next(c["message"] for c in st["status"]["conditions"] if c["type"] == "Stalled")
    assert message.startswith("job nomodel-a1 failed: inputs.model: builtin model 'tiny-foo' is unknown; use tiny-model"), message
    assert any(e.type == "Warning" and "tiny-foo" in e.message for e in h.events("nomodel"))
    [pod] = client.CoreV1Api(h.kube).list_namespaced_pod(h.namespace, label_selector="gradatim.io/stage=nomodel").items
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 1 and "tiny-foo" in terminated.message, "the pod runner writes the container's state as the kubelet does"


@pytest.mark.parametrize("kill, how", [("container", "exit 137, Error"), ("worker", "a torchrun worker got SIGKILL")])
def test_a_trainer_killed_for_memory_says_which_resource_to_raise(h, kill, how):
    h.pipeline(f"oom-{kill}")
    h.stage(f"big-{kill}", f"oom-{kill}", env={"STAND_IN_KILL": kill}, retryLimit=0, resources={"memory": "1536Mi"})
    st = h.wait_phase(f"big-{kill}", "Failed", timeout=120)
    message = next(c["message"] for c in st["status"]["conditions"] if c["type"] == "Stalled")
    assert message.startswith(f"job big-{kill}-a1 failed: the trainer was killed for memory ({how}): raise spec.resources.memory (now 1536Mi) "
                              "or lower sft.microBatchSize"), message


def test_cache_reapply_does_nothing_and_an_edit_reruns_only_downstream(h):
    h.pipeline("cache")
    h.stage("c-up", "cache", "midtrain")
    h.stage("c-mid", "cache", deps=("c-up",), model={"fromStage": "c-up"})
    h.stage("c-down", "cache", "eval", deps=("c-mid",), model={"fromStage": "c-mid"})
    for name in ("c-up", "c-mid", "c-down"):
        h.wait_phase(name, "Succeeded", timeout=120)
    before = {n: h.get("trainingstages", n)["status"] for n in ("c-up", "c-mid", "c-down")}
    h.patch_stage("c-mid", {"seed": 0})  # re-apply the same spec: no new generation, no work
    time.sleep(6)
    assert {n: h.get("trainingstages", n)["status"]["attempt"] for n in ("c-up", "c-mid", "c-down")} == {"c-up": 1, "c-mid": 1, "c-down": 1}
    assert len(h.jobs()) >= 3 and all(len(h.jobs(n)) == 1 for n in ("c-up", "c-mid", "c-down"))

    h.patch_stage("c-mid", {"seed": 7})
    mid = h.wait("trainingstages", "c-mid", lambda o: o["status"].get("observedGeneration") == 2 and o["status"]["phase"] == "Succeeded", 120, "rerun")
    down = h.wait("trainingstages", "c-down", lambda o: o["status"]["attempt"] == 2 and o["status"]["phase"] == "Succeeded", 120, "rerun")
    up = h.get("trainingstages", "c-up")
    assert up["status"]["attempt"] == 1 and up["status"]["cacheKey"] == before["c-up"]["cacheKey"]
    assert mid["status"]["cacheKey"] != before["c-mid"]["cacheKey"] and down["status"]["cacheKey"] != before["c-down"]["cacheKey"]

    # Back to the old spec: its outputs still exist under the old key, so it is a cache hit, not a run.
    h.patch_stage("c-mid", {"seed": 0})
    mid = h.wait("trainingstages", "c-mid", lambda o: o["status"].get("observedGeneration") == 3 and o["status"]["phase"] == "Cached", 60, "Cached")
    assert mid["status"]["cacheKey"] == before["c-mid"]["cacheKey"] and len(h.jobs("c-mid")) == 2
    h.wait("trainingstages", "c-down", lambda o: o["status"]["phase"] == "Cached" and o["status"]["cacheKey"] == before["c-down"]["cacheKey"], 60, "Cached")


def test_suspend_stops_the_job_and_resume_finishes_it(hb):
    hb.pipeline("pause")
    hb.stage("slow", "pause", env={"STAND_IN_STEPS": "40", "STAND_IN_STEP_SECONDS": "0.5"})
    hb.wait_phase("slow", "Running")
    hb.wait("trainingstages", "slow", lambda o: ((o["status"].get("progress") or {}).get("step") or 0) >= 2, 60, "progressing")
    hb.patch_stage("slow", {"suspend": True})
    hb.wait_phase("slow", "Suspended")
    job = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = hb.jobs("slow")[0]
        if any(c["type"] == "Suspended" and c["status"] == "True" for c in (job.get("status") or {}).get("conditions", [])):
            break
        time.sleep(0.3)
    assert job_suspend_flag(job) is True
    if hb.backend == "pytorchjob":  # training-operator omits `active` once it is 0; a TrainJob's jobsStatus lags
        assert job["status"]["replicaStatuses"]["Master"].get("active", 0) == 0
    deadline = time.monotonic() + 30
    while hb.pods("slow") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert hb.pods("slow") == [], "the suspended job's pods are gone, their processes stopped"
    hb.patch_stage("slow", {"suspend": False})
    st = hb.wait_phase("slow", "Succeeded", timeout=120)
    assert st["status"]["attempt"] == 1


def test_deleting_a_pipeline_cascades_to_stages_jobs_and_configmaps(hb):
    hb.pipeline("gone")
    hb.stage("long", "gone", env={"STAND_IN_STEPS": "100", "STAND_IN_STEP_SECONDS": "0.5"})
    hb.wait_phase("long", "Running")
    hb.wait("trainingstages", "long", lambda o: any(r.get("kind") == "TrainingPipeline" for r in o["metadata"].get("ownerReferences", [])), 30, "owned")
    assert hb.jobs("long")
    hb.custom.delete_namespaced_custom_object("gradatim.io", "v1alpha1", hb.namespace, "trainingpipelines", "gone")
    core = client.CoreV1Api(hb.kube)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = (hb.jobs("long"), hb.pods("long"), core.list_namespaced_config_map(hb.namespace, label_selector="gradatim.io/stage=long").items,
                hb.custom.list_namespaced_custom_object("gradatim.io", "v1alpha1", hb.namespace, "trainingstages", field_selector="metadata.name=long")["items"])
        if not any(left):
            break
        time.sleep(0.5)
    assert not any(left), left


def test_kueue_admits_the_job_and_a_suspend_under_kueue_deletes_the_attempt(hb):
    """With a queue, the job is created suspended with Kueue's label and the operator never flips `suspend` itself
    (here the test admits it, as Kueue would); a user's suspend stops the attempt by deleting its job instead."""
    kind = KINDS[hb.backend]

    def admit(job: str) -> None:
        hb.custom.patch_namespaced_custom_object(kind.group, kind.version, hb.namespace, kind.plural, job, suspend_patch(kind, False))

    hb.pipeline("queued", queueName="team-a")
    hb.stage("q", "queued", env={"STAND_IN_STEPS": "12", "STAND_IN_STEP_SECONDS": "0.5"})
    hb.wait("trainingstages", "q", lambda o: "waiting for Kueue admission" in json.dumps(o.get("status") or {}), 60, "waiting for admission")
    [job] = hb.jobs("q")
    assert job_suspend_flag(job) and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    time.sleep(3)
    assert job_suspend_flag(hb.jobs("q")[0]) and hb.pods("q") == [], "nothing runs before admission"
    admit("q-a1")
    hb.wait("trainingstages", "q", lambda o: ((o["status"].get("progress") or {}).get("step") or 0) >= 2, 60, "progressing")
    assert not job_suspend_flag(hb.jobs("q")[0]), "the operator left Kueue's admission alone"
    hb.patch_stage("q", {"suspend": True})
    hb.wait_phase("q", "Suspended")
    deadline = time.monotonic() + 30
    while (hb.jobs("q") or hb.pods("q")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert hb.jobs("q") == [] and hb.pods("q") == [], "suspended under Kueue: the attempt's job was deleted"
    hb.patch_stage("q", {"suspend": False})
    hb.wait("trainingstages", "q", lambda o: (o.get("status") or {}).get("jobName") == "q-a2", 60, "a new attempt")
    admit("q-a2")
    st = hb.wait_phase("q", "Succeeded", timeout=120)
    assert st["status"]["attempt"] == 2


def test_the_operator_stops_an_attempt_past_its_deadline_on_time(h):
    """training-operator v1.9 has no timer for activeDeadlineSeconds; the operator enforces the stage's deadline."""
    h.pipeline("timed")
    h.stage("late", "timed", env={"STAND_IN_STEPS": "200", "STAND_IN_STEP_SECONDS": "0.5"}, activeDeadlineSeconds=6, retryLimit=0)
    st = h.wait_phase("late", "Failed", timeout=60)
    stalled = next(c for c in st["status"]["conditions"] if c["type"] == "Stalled")
    assert "ran past spec.activeDeadlineSeconds (6 s" in stalled["message"]
    started = next(e for e in h.events("late") if e.reason == "JobCreated").first_timestamp
    failed = datetime.fromisoformat(stalled["lastTransitionTime"].replace("Z", "+00:00"))
    assert (failed - started).total_seconds() <= 6 + 6, "stopped within seconds of the deadline, not at a resync"
    deadline = time.monotonic() + 30
    while (h.jobs("late") or h.pods("late")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert h.jobs("late") == [] and h.pods("late") == [], "the overdue job and its pods are gone"


def test_pods_the_cluster_refuses_stall_the_stage_with_the_api_servers_words(hb):
    """A missing ServiceAccount (or PriorityClass) makes the controller's pod creation fail, which only its events
    tell; the stage is Blocked (kstatus: Stalled) with the API server's message, and runs once the account exists."""
    hb.pipeline("refused", serviceAccountName="trainer-sa")
    hb.stage("nosa", "refused", env={"STAND_IN_STEPS": "2"})
    st = hb.wait_phase("nosa", "Blocked", timeout=60)
    stalled = next(c for c in st["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "PodCreationFailed"
    assert 'serviceaccount "trainer-sa" not found' in stalled["message"] and "nosa-a1 cannot create its pods" in stalled["message"]
    client.CoreV1Api(hb.kube).create_namespaced_service_account(hb.namespace, {"metadata": {"name": "trainer-sa"}})
    st = hb.wait_phase("nosa", "Succeeded", timeout=240)
    assert st["status"]["attempt"] == 1, "the same job went on once the account existed"
    if hb.backend == "pytorchjob":
        hb.pipeline("unranked", priorityClassName="no-such-priority")
        hb.stage("noprio", "unranked")
        st = hb.wait_phase("noprio", "Blocked", timeout=60)
        assert "no PriorityClass with name no-such-priority was found" in st["status"]["conditions"][0]["message"]


def test_failed_gate_blocks_downstream(h):
    h.pipeline("gated")
    h.stage("check", "gated", "eval", env={"STAND_IN_METRICS": '{"pass@1": 0.1}'}, qualityGate={"metric": "pass@1", "comparison": ">=", "threshold": 0.5})
    h.stage("next", "gated", deps=("check",))
    st = h.wait_phase("check", "Failed")
    assert st["status"]["gate"]["passed"] is False and st["status"]["gate"]["value"] == 0.1
    nxt = h.wait_phase("next", "Blocked")
    assert "check failed its quality gate: pass@1 = 0.1, needs >= 0.5" in next(c["message"] for c in nxt["status"]["conditions"] if c["type"] == "Stalled")


def test_a_cycle_is_reported_on_every_stage_on_it(h):
    h.pipeline("loop")
    h.stage("a", "loop", deps=("b",))
    h.wait("trainingstages", "a", lambda o: any("no stage b" in c["message"] for c in (o.get("status") or {}).get("conditions", [])),
           what="Blocked on b missing")
    h.stage("b", "loop", deps=("a",))
    def stalled_on_cycle(o):
        stalled = [c["message"] for c in (o.get("status") or {}).get("conditions", []) if c["type"] == "Stalled"]
        return (o.get("status") or {}).get("phase") == "Blocked" and bool(stalled) and "dependency cycle" in stalled[0]
    for name in ("a", "b"):
        # b's arrival re-plans a, which was Blocked on b missing.
        st = h.wait("trainingstages", name, stalled_on_cycle, what="Blocked on a dependency cycle")
        message = next(c["message"] for c in st["status"]["conditions"] if c["type"] == "Stalled")
        assert "a -> b -> a" in message or "b -> a -> b" in message, message
    assert h.jobs("a") == [] and h.jobs("b") == []


def test_a_missing_secret_stalls_one_pipeline_and_others_keep_running(h):
    h.pipeline("nosecret", secret="does-not-exist")
    h.pipeline("fine")
    h.stage("orphan", "nosecret")
    h.stage("healthy", "fine")
    st = h.wait_phase("orphan", "Invalid")
    message = next(c["message"] for c in st["status"]["conditions"] if c["type"] == "Stalled")
    assert "spec.storage.secretRef.name" in message and "does-not-exist" in message
    h.wait_phase("healthy", "Succeeded")
    assert any(e.reason == "InvalidReference" for e in h.events("orphan"))


def test_unreachable_s3_is_retried_then_stalls_and_a_missing_bucket_names_the_field_at_once(h):
    h.pipeline("nos3", storage={"bucket": "gradatim", "endpoint": f"http://127.0.0.1:{free_port()}", "secretRef": {"name": "s3"}})
    h.pipeline("nobucket", storage={"bucket": "no-such-bucket", "secretRef": {"name": "s3"}})
    h.stage("lost", "nos3")
    h.stage("bucketless", "nobucket")
    retrying = h.wait("trainingstages", "lost", lambda o: "retrying S3" in _condition(o, "Reconciling"), 30, "retrying S3")
    assert retrying["status"]["phase"] == "Pending" and _condition(retrying, "Stalled") == ""
    lost = h.wait_phase("lost", "Blocked", timeout=STORAGE_PATIENCE_SECONDS + 30)
    assert "spec.storage.endpoint: cannot reach S3" in _condition(lost, "Stalled")
    assert [e.reason for e in h.events("lost") if e.type == "Warning"] == ["StorageUnavailable"]
    bucketless = h.wait_phase("bucketless", "Invalid", timeout=60)
    assert "spec.storage.bucket: bucket 'no-such-bucket' does not exist" in next(c["message"] for c in bucketless["status"]["conditions"] if c["type"] == "Stalled")
    assert h.jobs("lost") == [] and h.jobs("bucketless") == []


def _condition(obj: dict, type_: str) -> str:
    return next((c.get("message", "") for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_ and c["status"] == "True"), "")


def test_an_s3_freeze_during_a_run_is_waited_out_not_reported_as_a_user_error(h, cluster):
    """SeaweedFS stopped (SIGSTOP: connections hang, as in a network partition) while a stage runs: the operator's
    reads time out, the stage stays Running and says what it retries; once S3 answers again, the run finishes."""
    seaweedfs = ClusterState.load(StateLayout(cluster.state_dir)).processes["seaweedfs"].pid
    h.pipeline("frozen")
    h.stage("patient", "frozen", env={"STAND_IN_STEPS": "40", "STAND_IN_STEP_SECONDS": "0.5"})
    h.wait("trainingstages", "patient", lambda o: ((o.get("status") or {}).get("progress") or {}).get("step", 0) >= 2, 120, "stepping")
    os.kill(seaweedfs, signal.SIGSTOP)
    try:
        held = h.wait("trainingstages", "patient", lambda o: "retrying S3" in _condition(o, "Reconciling"), 30, "retrying S3")
        assert held["status"]["phase"] == "Running" and _condition(held, "Stalled") == ""
        time.sleep(5)
        assert h.get("trainingstages", "patient")["status"]["phase"] == "Running"
    finally:
        os.kill(seaweedfs, signal.SIGCONT)
    done = h.wait_phase("patient", "Succeeded", timeout=180)
    assert done["status"]["attempt"] == 1 and "StorageAvailable" not in [c["type"] for c in done["status"]["conditions"]]
    assert not [e for e in h.events("patient") if e.type == "Warning"]


def test_operator_survives_sigkill_at_random_points(h):
    h.pipeline("crashy")
    chain = ["c1", "c2", "c3", "c4"]
    for i, name in enumerate(chain):
        deps = (chain[i - 1],) if i else ()
        h.stage(name, "crashy", deps=deps, model={"fromStage": chain[i - 1]} if i else None, env={"STAND_IN_STEPS": "3"})
    rng = random.Random(1234)
    for _ in range(10):
        time.sleep(rng.uniform(0.5, 3.0))
        h.operator.kill()
        h.operator.start()
    h.wait("trainingpipelines", "crashy", lambda o: (o.get("status") or {}).get("phase") == "Succeeded", 240, "Succeeded")
    for name in chain:
        st = h.get("trainingstages", name)["status"]
        jobs = sorted(j["metadata"]["name"] for j in h.jobs(name))
        assert jobs == [f"{name}-a{n}" for n in range(1, st["attempt"] + 1)], (name, jobs, st["attempt"])
        assert st["phase"] == "Succeeded" and st["attempt"] == 1


def test_liveness_and_metrics_endpoints(h):
    assert urllib.request.urlopen(f"http://127.0.0.1:{h.liveness_port}/healthz", timeout=5).status == 200
    text = h.metrics()
    for series in ("gradatim_reconcile_total", "gradatim_job_creations_total", "gradatim_reconcile_duration_seconds_bucket",
                   "gradatim_dependency_to_job_seconds_count", "gradatim_build_info", "gradatim_stage_phase", "gradatim_stage_result"):
        assert series in text, series


def test_the_embedded_prometheus_scrapes_the_operators_stage_series(h, cluster):
    h.pipeline("scraped")
    h.stage("seen", "scraped", "eval", env={"STAND_IN_METRICS": '{"pass@1/math": 0.25}'})
    h.wait_phase("seen", "Succeeded")
    selector = f'{{job="gradatim-operator", namespace="{h.namespace}", pipeline="scraped", stage="seen"}}'

    def query(expr: str) -> list:
        url = f"{cluster.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        return json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]

    deadline = time.monotonic() + 60
    while not query(f'gradatim_stage_phase{selector[:-1]}, phase="Succeeded"}} == 1') and time.monotonic() < deadline:
        time.sleep(1)
    assert query(f'gradatim_stage_phase{selector[:-1]}, phase="Succeeded"}} == 1'), "Prometheus never saw the stage succeed"
    result = query(f'gradatim_stage_result{selector[:-1]}, metric="pass@1/math"}}')
    assert float(result[0]["value"][1]) == 0.25


def test_operator_namespaces_set_by_the_cli_after_import_reach_the_relist(monkeypatch):
    """`gradatim operator -n ml` imports the handlers (through the CLI) before it parses -n and sets the variable;
    the resync must still see it."""
    import gradatim.cli  # noqa: F401  (imports the operator package, as the command does)
    from gradatim.operator import handlers

    monkeypatch.setenv("GRADATIM_OPERATOR_NAMESPACES", "ml,research")
    assert handlers.watched_namespaces() == ["ml", "research"]
    monkeypatch.setenv("GRADATIM_OPERATOR_NAMESPACES", "")
    assert handlers.watched_namespaces() == []
