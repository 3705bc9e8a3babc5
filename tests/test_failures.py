"""Failures that say why: the trainer's one-line error record (classification, error.json, termination message),
how the planner puts it in the stage's condition and Warning event, what a kill for memory says, `fromStage` inputs
a stage type cannot fill, and resource quantities that must be positive."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from datetime import timedelta

import pytest
import torch
from botocore.exceptions import ClientError
from pydantic import ValidationError

from gradatim.api.common import Resources
from gradatim.api.hyperparams import SFTParams
from gradatim.api.runfiles import TERMINATION_LOG_ENV, TERMINATION_MESSAGE_LIMIT, TrainerError
from gradatim.api.stage import TrainingStage
from gradatim.local.jobs import LocalJobs
from gradatim.planner.stage import plan_stage
from gradatim.trainer.artifacts import ArtifactMissing
from gradatim.trainer.errors import classify, write_termination_message
from gradatim.trainer.hf import accumulation_steps
from gradatim.trainer.sources import loading, load_model
from tests.test_planner import NOW, done, job, observe, stage
from tests.trainer_harness import stage_spec


class Cluster:  # what stage_spec reads of the test cluster: the unit tests below write nothing
    s3_bucket, s3_endpoint = "runs", "http://127.0.0.1:1"


def spec_with(inputs, type_="sft", attempt=1):
    return stage_spec(Cluster, type_, {}, inputs, run="r1", attempt=attempt)


def raised(fn):
    try:
        fn()
    except Exception as err:
        return err
    raise AssertionError("did not raise")


# -- the trainer's classification -------------------------------------------------------------------------

def test_an_unknown_builtin_model_names_inputs_model_and_the_builtins():
    spec = spec_with({"model": {"builtin": "tiny-foo"}, "data": [{"builtin": "tiny-math:train"}]})
    err = raised(lambda: load_model(spec.inputs.model, None, None))
    record = classify(err, spec)
    assert record.message == ("inputs.model: builtin model 'tiny-foo' is unknown; use tiny-model (freshly initialised) or tiny-teacher "
                              "(trained on worked solutions)")
    assert record.field == "inputs.model" and record.kind == "InvalidInput" and record.attempt == 1 and record.exit_code == 1


def test_a_missing_artifact_names_the_input_by_index_and_the_upstream_stage():
    data = [{"builtin": "tiny-math:train"}, {"uri": "s3://b/x/", "producedBy": {"stage": "gen", "output": "traces"}}]
    spec = spec_with({"model": {"builtin": "tiny-model"}, "data": data})

    def read():
        with loading(spec.inputs.data[1]):
            raise ArtifactMissing("s3://b/x/ has no _manifest.json")

    record = classify(raised(read), spec)
    assert record.field == "inputs.data[1]" and record.kind == "MissingInput"
    assert record.message.startswith("inputs.data[1] (s3://b/x/): no such artifact") and record.message.endswith("check the upstream stage gen or the URI")


def test_s3_errors_reading_an_input_say_which_input_and_what_to_check():
    spec = spec_with({"model": {"uri": "s3://b/m/"}, "data": []})
    for code, words in (("NoSuchKey", "no such object; check the URI"), ("NoSuchBucket", "the bucket does not exist"),
                        ("AccessDenied", "S3 refused the credentials (AccessDenied)")):
        def read(code=code):
            with loading(spec.inputs.model):
                raise ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")

        record = classify(raised(read), spec)
        assert record.message.startswith("inputs.model (s3://b/m/): ") and words in record.message, record.message


def test_a_hub_model_that_cannot_load_names_the_id_and_the_token_secret():
    spec = spec_with({"model": {"hf": "org/x"}, "data": []})

    def read():
        with loading(spec.inputs.model):
            raise OSError("org/x is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'")

    record = classify(raised(read), spec)
    assert record.kind == "ModelLoad" and record.message.startswith("inputs.model (hf: org/x): cannot load from the Hugging Face Hub: org/x is not")
    assert record.message.endswith("check the id, revision and HF token Secret")


def test_out_of_memory_says_which_knobs_shrink_the_stage():
    spec = spec_with({"model": {"builtin": "tiny-model"}, "data": []})
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 has a total capacity of 79 GiB")
    record = classify(oom, spec, rank=3, device="cuda:0")
    assert record.message == ("out of memory on cuda:0: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB: "
                              "lower sft.microBatchSize or sft.maxLength, or set sft.sharding: fsdp")
    assert record.kind == "OutOfMemory" and record.field == "sft.microBatchSize" and record.rank == 3
    grpo = classify(MemoryError(), spec_with({"model": {"builtin": "tiny-model"}, "data": []}, "grpo"), device="cpu")
    assert "lower grpo.microBatchSize or grpo.maxCompletionLength" in grpo.message and grpo.message.endswith("or raise spec.resources.memory")


def test_a_batch_split_that_does_not_divide_names_the_field():
    spec = spec_with({"model": {"builtin": "tiny-model"}, "data": []})
    err = raised(lambda: accumulation_steps(SFTParams(batch_size=6, micro_batch_size=2), world_size=2))
    record = classify(err, spec)
    assert record.field == "sft.batchSize" and record.kind == "InvalidParams"
    assert record.message == ("sft.batchSize: 6 is not a multiple of microBatchSize 2 x 2 processes; change batchSize, microBatchSize "
                              "or the number of nodes/GPUs")


def test_anything_else_names_the_exception_and_points_at_the_log():
    record = classify(KeyError("completion"), spec_with({"model": {"builtin": "tiny-model"}, "data": []}))
    assert record.message == "KeyError: 'completion'; see the pod log" and record.kind == "Unexpected" and record.field is None


def test_the_termination_message_fits_the_kubelets_limit_and_the_first_rank_to_fail_writes_it(tmp_path, monkeypatch):
    long = TrainerError(message="x" * 10000, kind="Unexpected", attempt=2)
    text = long.termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT and TrainerError.model_validate_json(text).message.endswith("x ...")
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(path))
    write_termination_message(TrainerError(message="inputs.model: first", kind="InvalidInput", attempt=1, rank=1))
    write_termination_message(TrainerError(message="RuntimeError: a peer went away; see the pod log", kind="Unexpected", attempt=1, rank=0))
    assert TrainerError.model_validate_json(path.read_text()).message == "inputs.model: first"


# -- the planner ------------------------------------------------------------------------------------------

def failed_job(name="sft-a1"):
    return job(name, ("Failed", f"PyTorchJob {name} is failed because 1 Master replica(s) failed."))


def pod(name, exit_code, reason="Error", message=None):
    terminated = {"exitCode": exit_code, "reason": reason, **({"message": message} if message else {})}
    return {"metadata": {"name": name}, "status": {"phase": "Failed", "containerStatuses": [{"name": "pytorch", "state": {"terminated": terminated}}]}}


def stalled(plan):
    return next(c.message for c in plan.status.conditions if c.type == "Stalled")


def test_the_trainers_record_is_the_stage_message_and_warning_event():
    st = running_stage(retryLimit=2, retryBackoffSeconds=10)
    error = TrainerError(message="inputs.model: builtin model 'tiny-foo' is unknown; use tiny-model or tiny-teacher", field="inputs.model",
                         kind="InvalidInput", attempt=1)
    plan = plan_stage(observed_failure(st, error=error))
    retry_at = (NOW + timedelta(seconds=10)).isoformat()
    assert plan.message == f"job sft-a1 failed: inputs.model: builtin model 'tiny-foo' is unknown; use tiny-model or tiny-teacher; retry 1/2 at {retry_at}"
    assert plan.status.phase == "Retrying" and [(e.type, e.message) for e in plan.events] == [("Warning", plan.message)]
    stale = error.model_copy(update={"attempt": 0})  # an earlier attempt's record says nothing of this one
    plan = plan_stage(observed_failure(st, error=stale))
    assert "is failed because 1 Master replica(s) failed" in plan.message


def observed_failure(st, **extra):
    return dataclasses.replace(observe(st, job=failed_job()), **extra)


def running_stage(**spec):
    st = stage("sft", **spec)
    status = plan_stage(observe(st)).status
    return TrainingStage.model_validate(st.model_dump(by_alias=True) | {"status": status.model_dump(by_alias=True)})


def test_a_kill_for_memory_says_which_resource_to_raise():
    st = running_stage(retryLimit=0, resources={"memory": "8Gi"})
    plan = plan_stage(observed_failure(st, pods=(pod("sft-a1-master-0", 137, "OOMKilled"),)))
    assert plan.status.phase == "Failed"
    assert stalled(plan).startswith("job sft-a1 failed: the trainer was killed for memory (exit 137, OOMKilled): raise spec.resources.memory "
                                    "(now 8Gi) or lower sft.microBatchSize or sft.maxLength, or set sft.sharding: fsdp; retry limit 0 reached")
    # A replica stopped after another failed is not a kill for memory: one a runner says it stopped ("Killed"),
    # or one its controller was deleting (cleanPodPolicy: Running) when the pods were read.
    plan = plan_stage(observed_failure(st, pods=(pod("sft-a1-worker-0", 137, "Killed"), pod("sft-a1-master-0", 1, message="boom\nlast words"))))
    assert "killed for memory" not in plan.message and "last words (the pod log's last line)" in plan.message
    stopped = pod("sft-a1-worker-0", 137, "Error")
    stopped["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    plan = plan_stage(observed_failure(st, pods=(stopped, pod("sft-a1-master-0", 1, message="boom\nlast words"))))
    assert "killed for memory" not in plan.message and "last words" in plan.message


def test_torchruns_summary_of_a_worker_killed_by_sigkill_is_a_kill_for_memory():
    summary = ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n======\nRoot Cause (first observed failure):\n"
               "  rank      : 0 (local_rank: 0)\n  exitcode  : -9 (pid: 25612)  (SIGKILL)\n  traceback : Signal 9 (SIGKILL) received by PID 25612\n======")
    plan = plan_stage(observed_failure(running_stage(retryLimit=0), pods=(pod("sft-a1-master-0", 1, message=summary),)))
    assert "killed for memory (a torchrun worker got SIGKILL): raise spec.resources.memory" in plan.message
    summary = summary.replace("-9 (pid: 25612)  (SIGKILL)", "1 (pid: 25612)").replace("Signal 9 (SIGKILL) received by PID 25612", "<N/A>")
    plan = plan_stage(observed_failure(running_stage(retryLimit=0), pods=(pod("sft-a1-master-0", 1, message=summary),)))
    assert "traceback : <N/A> (the pod log's last line)" in plan.message, "the last line with words, not a rule of ===="


def test_a_worker_pods_termination_message_speaks_when_there_is_no_error_json():
    st = running_stage(retryLimit=0)
    record = TrainerError(message="out of memory on cuda:3: ...: lower sft.microBatchSize or sft.maxLength", kind="OutOfMemory", rank=11, attempt=1)
    plan = plan_stage(observed_failure(st, pods=(pod("sft-a1-master-0", 1), pod("sft-a1-worker-1", 1, message=record.termination_message()))))
    assert stalled(plan).startswith("job sft-a1 failed: out of memory on cuda:3: ...: lower sft.microBatchSize")
    peer = TrainerError(message="RuntimeError: Connection closed by peer; see the pod log", kind="Unexpected", attempt=1)
    plan = plan_stage(observed_failure(st, error=peer, pods=(pod("sft-a1-master-0", 1), pod("sft-a1-worker-1", 1, message=record.termination_message()))))
    assert "out of memory on cuda:3" in plan.message, "a known cause on a worker beats rank 0's echo of it"
    plan = plan_stage(observed_failure(st, pods=(pod("sft-a1-master-0", 2),)))
    assert "(exit 2, Error); see the pod log" in plan.message


@pytest.mark.parametrize("inputs, field, words", [
    ({"model": {"fromStage": "dec"}, "data": [{"uri": "s3://data/d/"}]}, "spec.inputs.model.fromStage",
     "stage dec is a decontaminate stage, which writes data, removed; a model comes from midtrain, sft, dpo or grpo"),
    ({"model": {"hf": "org/base"}, "data": [{"fromStage": "mid", "output": "pairs"}]}, "spec.inputs.data[0].output",
     "stage mid is a midtrain stage, which writes model; it has no output pairs"),
    ({"model": {"hf": "org/base"}, "data": [{"uri": "s3://data/d/"}, {"fromStage": "mid"}]}, "spec.inputs.data[1].fromStage",
     "stage mid is a midtrain stage, which writes model, a model; a dataset comes from generate"),
], ids=["model-from-decontaminate", "pairs-from-midtrain", "model-as-data"])
def test_a_fromstage_input_the_upstream_type_cannot_fill_is_invalid_before_any_job(inputs, field, words):
    dec = stage("dec", "decontaminate", decontaminate={}, inputs={"data": [{"uri": "s3://data/d/"}], "evalData": [{"builtin": "tiny-math:eval"}]})
    mid = stage("mid", "midtrain")
    st = stage("sft", deps=("dec", "mid"), inputs=inputs)
    plan = plan_stage(observe(st, siblings=[dec, mid]))
    assert plan.status.phase == "Invalid" and not plan.actions
    assert stalled(plan).startswith(f"{field}: {words}"), stalled(plan)
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "InvalidInput")]


def test_outputs_that_fit_pass_the_check():
    gen = stage("gen", "generate", generate={})
    st = stage("dpo", "dpo", deps=("gen",), dpo={}, inputs={"model": {"hf": "org/base"}, "data": [{"fromStage": "gen", "output": "pairs"}]})
    plan = plan_stage(observe(st, siblings=[done(gen, outputs={"traces": "s3://g/t/", "pairs": "s3://g/p/"})]))
    assert plan.status.phase == "Running" and plan.actions


def test_the_trainer_container_keeps_its_termination_message():
    plan = plan_stage(observe(stage("sft")))
    container = plan.actions[0].job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log" and container["terminationMessagePolicy"] == "FallbackToLogsOnError"


# -- `gradatim run`'s jobs: pods run by the kubelet code, their status as a kubelet writes it -------------

def local_job(name: str, code: str, **container) -> dict:
    container = {"name": "pytorch", "image": "trainer", "command": ["python", "-c", code], "terminationMessagePolicy": "FallbackToLogsOnError", **container}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "Never", "template": {"spec": {"containers": [container]}}}}}}


def run_local_job(tmp_path, name: str, code: str, **container) -> tuple[dict, dict]:
    """A one-replica PyTorchJob running `python -c code` under `gradatim run`'s LocalJobs, until it finishes."""
    jobs = LocalJobs(tmp_path / "jobs", {})
    assert jobs.create(local_job(name, code, **container), {"metadata": {"name": f"{name}-spec"}, "data": {}}, NOW)
    deadline = time.monotonic() + 60
    while not any(c["type"] in ("Succeeded", "Failed") and c["status"] == "True" for c in jobs.get(name)["status"]["conditions"]):
        assert time.monotonic() < deadline, jobs.get(name)["status"]
        jobs.sync(NOW)
        time.sleep(0.05)
    jobs.stop_all()
    return jobs.get(name), next(iter(jobs.pods(name)), None)  # a pod that never started is deleted with its job


def test_a_replica_killed_by_sigkill_exits_137_and_one_that_wrote_a_message_keeps_it(tmp_path):
    job, pod = run_local_job(tmp_path, "killed", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Failed" and terminated["exitCode"] == 137 == 128 + signal.SIGKILL
    assert job["status"]["conditions"][-1]["message"] == "PyTorchJob killed is failed because 1 Master replica(s) failed."

    record = TrainerError(message="inputs.model: x", kind="InvalidInput", attempt=1).termination_message()
    _, pod = run_local_job(tmp_path, "wrote", f"import os; open(os.environ[{TERMINATION_LOG_ENV!r}], 'w').write({record!r}); raise SystemExit(1)")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (1, "Error", record)

    _, pod = run_local_job(tmp_path, "silent", "print('line 1'); print('Traceback...'); print('ValueError: last', flush=True); raise SystemExit(3)")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"].rstrip().endswith("ValueError: last"), \
        "FallbackToLogsOnError: the log's tail"


def test_a_local_jobs_pods_get_what_the_training_operator_injects(tmp_path):
    code = "import os, json; print(json.dumps({k: os.environ[k] for k in ('MASTER_ADDR', 'MASTER_PORT', 'WORLD_SIZE', 'RANK', 'PET_NNODES')}))"
    job, pod = run_local_job(tmp_path, "env", code)
    assert pod["status"]["phase"] == "Succeeded" and job["status"]["conditions"][-1]["type"] == "Succeeded"
    env = json.loads((tmp_path / "jobs" / "ns" / "env-master-0" / "pytorch.log").read_text().strip().splitlines()[-1])
    assert env["MASTER_ADDR"] == "127.0.0.1", "the Master pod's name, on this machine"
    assert env["MASTER_PORT"] != "23456" and (env["WORLD_SIZE"], env["RANK"], env["PET_NNODES"]) == ("1", "0", "1")


def test_a_local_job_whose_secret_is_missing_fails_with_the_kubelets_words(tmp_path):
    """A kubelet waits for the Secret to be created; nothing can create one during a local run."""
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "token"}}}]
    job, _ = run_local_job(tmp_path, "nosecret", "pass", env=env)
    failed = job["status"]["conditions"][-1]
    assert failed["type"] == "Failed" and "CreateContainerConfigError" in failed["message"] and 'secret "nope" not found' in failed["message"]


def test_local_jobs_run_side_by_side_only_while_their_cpu_fits_the_machine(tmp_path):
    """As the pod runner schedules: training threads beyond the cores thrash, so a job waits for CPU as well as a
    slot; a job bigger than the machine runs once nothing else does."""
    jobs = LocalJobs(tmp_path / "jobs", {}, parallel=3)
    jobs.kubelet.cpus = 2
    cpu = lambda n: {"resources": {"requests": {"cpu": str(n)}, "limits": {"cpu": str(n)}}}  # noqa: E731
    for name, n, code in (("one", 1, "import time; time.sleep(2)"), ("two", 2, "pass"), ("also-one", 1, "import time; time.sleep(2)"), ("four", 4, "pass")):
        jobs.create(local_job(name, code, **cpu(n)), {"metadata": {"name": f"{name}-spec"}, "data": {}}, NOW)
    jobs.sync(NOW)
    assert set(jobs.running_pods) == {"one", "also-one"}, "two CPUs: the two 1-CPU jobs; the 2-CPU job waits beside them"
    assert "startTime" not in jobs.get("two")["status"] and jobs.cpu_in_use() == 2
    started, deadline = [], time.monotonic() + 60
    while len(started) < 4:
        assert time.monotonic() < deadline, {n: jobs.get(n)["status"] for n in ("one", "two", "also-one", "four")}
        jobs.sync(NOW)
        started += [n for n in jobs.running_pods if n not in started]
        assert jobs.cpu_in_use() <= 2 or set(jobs.running_pods) == {"four"}, jobs.running_pods
        time.sleep(0.05)
    jobs.stop_all()
    assert started[2:] == ["two", "four"], "then each bigger job alone, oldest first"


def test_a_deleted_local_jobs_pods_are_listed_until_their_processes_are_gone(tmp_path):
    """The planner starts a retry only once the failed attempt's pods are gone: never two gangs on one prefix."""
    jobs = LocalJobs(tmp_path / "jobs", {})
    jobs.create(local_job("slow", "import signal, time; signal.signal(signal.SIGTERM, lambda *_: time.sleep(1) or exit(143)); time.sleep(600)"),
                {"metadata": {"name": "slow-spec"}, "data": {}}, NOW)
    deadline = time.monotonic() + 30
    while not jobs.pods("slow") or jobs.pods("slow")[0]["status"]["phase"] != "Running":
        assert time.monotonic() < deadline
        jobs.sync(NOW)
        time.sleep(0.05)
    jobs.delete("slow")
    jobs.sync(NOW)
    (pod,) = jobs.pods("slow")
    assert pod["metadata"].get("deletionTimestamp"), "listed as being deleted while its process stops"
    while jobs.pods("slow"):
        assert time.monotonic() < deadline, "the deleted pod never went"
        jobs.sync(NOW)
        time.sleep(0.05)
    assert not jobs.kubelet.pods


# -- resource quantities ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-8Gi", "0", "0Gi", "0.0", -2, 0, "lots"])
def test_resource_quantities_must_be_positive(value):
    with pytest.raises(ValidationError, match="(?s)memory.*must be a positive quantity such as 32, 500m or 8Gi"):
        Resources(memory=value)


def test_positive_quantities_pass_and_the_crd_refuses_the_rest():
    assert Resources(cpu="500m", memory="8Gi", shm_size=2).model_dump()["cpu"] == "500m"
    schema = json.dumps(Resources.model_json_schema())
    assert '"minimum": 1' in schema and "[1-9]" in schema
