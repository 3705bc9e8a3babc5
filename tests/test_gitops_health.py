"""GitOps health: the Argo CD Lua checks in manifests/gitops/argocd/health/, run by a real Lua (LuaJIT, the nearest
to Argo CD's gopher-lua: Lua 5.1, every number a double) without the libraries Argo CD leaves out of argocd-cm
scripts; the Flux CEL health expressions in manifests/gitops/flux/ (cel-python); and kstatus on our own kinds.
Unit cases cover every phase of the API; the live cases read the objects of one namespace of the test cluster,
where the operator and the real Kubeflow controllers bring stages, pipelines, PyTorchJobs and TrainJobs into each
state."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

import celpy
import lupa.luajit21 as luajit
import pytest
import yaml

from gradatim.api import GROUP, VERSION
from gradatim.api.pipeline import PipelinePhase
from gradatim.api.stage import STAGE_PHASES
from gradatim.gitops import CHECKS, generated_files, health_key, health_scripts
from gradatim.planner.conditions import conditions_for
from gradatim.planner.jobs import KINDS
from tests.operator_harness import running_harness

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = health_scripts(REPO)
KEYS = {kind: health_key(group, kind) for group, kind in CHECKS}
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}  # argo-cd isValidHealthStatusCode

# Every phase of the API and the health it shows; a phase added to the API fails test_every_phase_has_a_health
# until it is mapped here and in the Lua.
PHASE_HEALTH = {"Succeeded": "Healthy", "Cached": "Healthy", "Pending": "Progressing", "Running": "Progressing", "Retrying": "Progressing",
                "Suspended": "Suspended", "Failed": "Degraded", "Invalid": "Degraded", "Blocked": "Degraded"}
# What kstatus (and so Flux's `wait`) makes of each phase's conditions.
PHASE_KSTATUS = {"Succeeded": "Current", "Cached": "Current", "Pending": "InProgress", "Running": "InProgress", "Retrying": "InProgress",
                 "Suspended": "InProgress", "Failed": "Failed", "Invalid": "Failed", "Blocked": "Failed"}
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def argo_health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """Runs a kind's check as Argo CD runs an argocd-cm script: `obj` a global, the chunk returns {status, message};
    no string, math, io, os or debug library, and no string methods either (gopher-lua without open libs)."""
    lua = luajit.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute('getmetatable("").__index = nil')
    g = lua.globals()
    for lib in ("string", "math", "io", "os", "debug", "coroutine", "package", "require", "jit", "bit", "ffi"):
        g[lib] = None
    g.obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPTS[KEYS[kind]])
    out = dict(hs.items())
    assert set(out) == {"status", "message"} and out["status"] in ARGO_STATUSES and isinstance(out["message"], str), out
    return out


def flux_status(kind: str, obj: dict[str, Any]) -> str:
    """Flux's CEL status evaluator (fluxcd/pkg runtime/cel StatusEvaluator.Evaluate) with the example's expressions:
    a stale observedGeneration is InProgress, then inProgress, failed, current in that order, the first true wins,
    none true is InProgress; an expression that cannot be evaluated leaves the status Unknown."""
    check = next(c for c in FLUX["spec"]["healthCheckExprs"] if c["kind"] == kind)
    status = obj.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"].get("generation"):
        return "InProgress"
    env = celpy.Environment()
    activation = {k: celpy.json_to_cel(v) for k, v in obj.items()}  # the object's top-level fields, no `self`
    for field, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if field in check:
            try:
                value = env.program(env.compile(check[field])).evaluate(activation)
            except celpy.CELEvalError:
                return "Unknown"
            if isinstance(value, celpy.CELEvalError):
                return "Unknown"
            if value:
                return result
    return "InProgress"


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus `Compute` for a kind it has no rules for (cli-utils pkg/kstatus/status): a stale observedGeneration
    or Reconciling=True is InProgress, Stalled=True Failed; then Ready decides; no such condition at all is Current."""
    status = obj.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"].get("generation"):
        return "InProgress"
    conditions = status.get("conditions") or []
    for c in conditions:
        if c["type"] == "Reconciling" and c["status"] == "True":
            return "InProgress"
        if c["type"] == "Stalled" and c["status"] == "True":
            return "Failed"
    ready = next((c for c in conditions if c["type"] == "Ready"), None)
    return "Current" if ready is None or ready["status"] == "True" else "InProgress"


FLUX = yaml.safe_load((REPO / "manifests/gitops/flux/kustomization.yaml").read_text())


def ours(kind: str, phase: str, message: str = "why it is so", generation: int = 3, **status: Any) -> dict[str, Any]:
    """A stage or pipeline in `phase`, with the conditions the planner writes for it."""
    conditions = [c.to_wire() for c in conditions_for(phase, "Because", message, generation, NOW, [])]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "x", "generation": generation},
            "status": {"observedGeneration": generation, "phase": phase, "conditions": conditions, **status}}


def job(kind: str, *conditions: tuple[str, str], **status: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "j", "generation": 1},
            "status": {"conditions": [{"type": t, "status": s, "reason": f"Job{t}", "message": f"job is {t.lower()}"} for t, s in conditions], **status}}


# -- the shipped files ---------------------------------------------------------------------------------------

def test_argocd_cm_snippet_is_fresh_and_holds_the_tested_lua():
    for relative, text in generated_files(REPO).items():
        assert (REPO / relative).read_text() == text, f"{relative} is stale; run `python -m gradatim.gitops`"
        shipped = yaml.safe_load(text)
        assert shipped["metadata"]["name"] == "argocd-cm" and shipped["data"] == SCRIPTS
    assert set(KEYS.values()) == {"resource.customizations.health.gradatim.io_TrainingPipeline", "resource.customizations.health.gradatim.io_TrainingStage",
                                  "resource.customizations.health.kubeflow.org_PyTorchJob", "resource.customizations.health.trainer.kubeflow.org_TrainJob"}


def test_the_sandbox_is_as_bare_as_argocd_cm_scripts_get():
    """A check that used a string method or the math library would fail in Argo CD: here too."""
    lua = luajit.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute('getmetatable("").__index = nil')
    lua.globals().string = None
    lua.globals().math = None
    for chunk in ('return ("x"):lower()', "return math.floor(1.5)", "return string.format('%d', 1)"):
        with pytest.raises(luajit.LuaError):
            lua.execute(chunk)


def test_the_flux_example_is_a_kustomization_that_waits():
    assert FLUX["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1" and FLUX["kind"] == "Kustomization" and FLUX["spec"]["wait"] is True
    assert {(c["apiVersion"], c["kind"]) for c in FLUX["spec"]["healthCheckExprs"]} == {("kubeflow.org/v1", "PyTorchJob"), ("trainer.kubeflow.org/v1alpha1", "TrainJob")}


# -- unit: every phase, observedGeneration, the jobs' conditions --------------------------------------------

def test_every_phase_has_a_health():
    assert set(STAGE_PHASES) | set(get_args(PipelinePhase)) <= set(PHASE_HEALTH), "a new phase: map it in the Lua checks and here"
    for kind, phases in (("TrainingStage", STAGE_PHASES), ("TrainingPipeline", get_args(PipelinePhase))):
        for phase in phases:
            hs = argo_health(kind, ours(kind, phase))
            assert hs == {"status": PHASE_HEALTH[phase], "message": f"{phase}: why it is so"}, (kind, phase)
            assert kstatus(ours(kind, phase)) == PHASE_KSTATUS[phase], (kind, phase)


@pytest.mark.parametrize("kind", ["TrainingStage", "TrainingPipeline"])
def test_an_unobserved_generation_is_progressing_whatever_the_phase(kind):
    for phase in PHASE_HEALTH:
        stale = ours(kind, phase)
        stale["metadata"]["generation"] = 4.0  # gopher-lua holds every number as a double
        assert argo_health(kind, stale) == {"status": "Progressing", "message": "waiting for the operator to observe generation 4"}
        assert kstatus(stale) == "InProgress"


def test_no_status_is_progressing_and_a_phase_the_check_does_not_know_is_unknown():
    for kind in KEYS:
        assert argo_health(kind, {"kind": kind, "metadata": {"name": "x", "generation": 1}})["status"] == "Progressing"
    assert argo_health("TrainingStage", ours("TrainingStage", "Exploded"))["status"] == "Unknown"


def test_a_pipeline_running_with_a_stuck_stage_is_degraded_and_names_it():
    stages = [{"name": "a", "type": "sft", "phase": "Running", "attempt": 1, "message": "job a-a1 is running"},
              {"name": "b", "type": "sft", "phase": "Blocked", "attempt": 1, "message": "job b-a1 cannot create its pods: no SA"}]
    hs = argo_health("TrainingPipeline", ours("TrainingPipeline", "Running", "running a", stages=stages))
    assert hs == {"status": "Degraded", "message": "Running: running a; stage b is Blocked: job b-a1 cannot create its pods: no SA"}
    stages[1]["phase"] = "Suspended"
    assert argo_health("TrainingPipeline", ours("TrainingPipeline", "Running", "running a", stages=stages))["status"] == "Progressing"


@pytest.mark.parametrize("kind, done", [("PyTorchJob", "Succeeded"), ("TrainJob", "Complete")])
def test_job_conditions(kind, done):
    assert argo_health(kind, job(kind, ("Created", "True"), ("Running", "False"), (done, "True"))) == {"status": "Healthy", "message": f"job is {done.lower()}"}
    # Failed is terminal whatever else holds.
    assert argo_health(kind, job(kind, (done, "True"), ("Failed", "True"))) == {"status": "Degraded", "message": "job is failed"}
    assert argo_health(kind, job(kind, ("Suspended", "True"))) == {"status": "Suspended", "message": "job is suspended"}
    assert argo_health(kind, job(kind, ("Suspended", "False"), ("Running", "True")))["status"] == "Progressing"  # resumed
    assert argo_health(kind, job(kind))["status"] == "Progressing"
    assert flux_status(kind, job(kind, (done, "True"), ("Failed", "True"))) == "Failed"  # failed is evaluated before current
    assert flux_status(kind, job(kind, (done, "True"))) == "Current"
    assert flux_status(kind, job(kind, ("Suspended", "True"))) == "InProgress"
    assert flux_status(kind, {"kind": kind, "metadata": {"name": "j"}, "status": {}}) == "InProgress"
    assert kstatus(job(kind, ("Running", "True"))) == "Current", "without health expressions kstatus calls a running job done"


def test_a_trainjob_without_conditions_says_how_many_jobs_run():
    hs = argo_health("TrainJob", {"kind": "TrainJob", "metadata": {"name": "t"}, "status": {"jobsStatus": [{"name": "node", "active": 2.0}]}})
    assert hs == {"status": "Progressing", "message": "running: 2 active Jobs"}


# -- live: one namespace, objects in every state -----------------------------------------------------------

def _jobs(h, stage: str, backend: str) -> list[dict[str, Any]]:
    kind = KINDS[backend]
    return h.custom.list_namespaced_custom_object(kind.group, kind.version, h.namespace, kind.plural, label_selector=f"gradatim.io/stage={stage}")["items"]


def _wait_job(h, stage: str, backend: str, condition: str | None, timeout: float = 90) -> dict[str, Any]:
    """The stage's job once `condition` is True on it (None: once a TrainJob counts an active Job)."""
    def done(j: dict[str, Any]) -> bool:
        status = j.get("status") or {}
        if condition is None:
            return any((s.get("active") or 0) > 0 for s in status.get("jobsStatus") or [])
        return any(c["type"] == condition and c["status"] == "True" for c in status.get("conditions") or [])

    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = _jobs(h, stage, backend)
        if found and done(found[0]):
            return found[0]
        time.sleep(0.3)
    raise AssertionError(f"the job of {stage} never became {condition or 'active'}: {found}\n--- operator log ---\n{h.operator_log()}")


def _wait_pipeline(h, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    return h.wait("trainingpipelines", name, lambda o: (o.get("status") or {}).get("phase") == phase
                  and o["status"].get("observedGeneration") == o["metadata"]["generation"], timeout, phase)


@pytest.fixture(scope="module")
def live(cluster, kube, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Four pipelines at once, on both job kinds: one done, one failed (with a stage blocked behind it), one with a
    missing Secret (Invalid), one running and then suspended by a real spec patch. Returns the objects by label."""
    with running_harness(cluster, kube, tmp_path_factory.mktemp("gitops"), "gitops") as h:
        slow = {"STAND_IN_STEPS": "400", "STAND_IN_STEP_SECONDS": "0.5"}
        fail = {"STAND_IN_FAIL_ATTEMPTS": "99"}
        h.pipeline("long")
        h.stage("run-pt", "long", env=slow)
        h.stage("run-tj", "long", env=slow, backend="trainjob")
        h.stage("next", "long", "eval", deps=("run-pt",), model={"fromStage": "run-pt"})
        h.pipeline("fine")
        h.stage("ok-pt", "fine")
        h.stage("ok-tj", "fine", backend="trainjob")
        h.pipeline("broken")
        h.stage("bad-pt", "broken", env=fail, retryLimit=0)
        h.stage("bad-tj", "broken", env=fail, retryLimit=0, backend="trainjob")
        h.stage("after", "broken", "eval", deps=("bad-pt",), model={"fromStage": "bad-pt"})
        h.pipeline("nosecret", secret="does-not-exist")
        h.stage("typo", "nosecret")
        got: dict[str, Any] = {}

        got["stage/run-pt"] = h.wait_phase("run-pt", "Running")
        got["pytorchjob/running"] = _wait_job(h, "run-pt", "pytorchjob", "Running")
        got["stage/run-tj"] = h.wait_phase("run-tj", "Running")
        got["trainjob/running"] = _wait_job(h, "run-tj", "trainjob", None)
        got["stage/next"] = h.wait_phase("next", "Pending")
        got["pipeline/long"] = _wait_pipeline(h, "long", "Running")

        for name in ("ok-pt", "ok-tj"):
            got[f"stage/{name}"] = h.wait_phase(name, "Succeeded")
        got["pytorchjob/succeeded"] = _wait_job(h, "ok-pt", "pytorchjob", "Succeeded")
        got["trainjob/complete"] = _wait_job(h, "ok-tj", "trainjob", "Complete")
        got["pipeline/fine"] = _wait_pipeline(h, "fine", "Succeeded")

        for name in ("bad-pt", "bad-tj"):
            got[f"stage/{name}"] = h.wait_phase(name, "Failed")
        got["stage/after"] = h.wait_phase("after", "Blocked")
        got["pytorchjob/failed"] = _wait_job(h, "bad-pt", "pytorchjob", "Failed")
        got["trainjob/failed"] = _wait_job(h, "bad-tj", "trainjob", "Failed")
        got["pipeline/broken"] = _wait_pipeline(h, "broken", "Failed")
        got["stage/typo"] = h.wait_phase("typo", "Invalid")
        got["pipeline/nosecret"] = _wait_pipeline(h, "nosecret", "Failed")

        # The PATCH's answer is the object at the new generation before any operator could have seen it.
        got["pipeline/long-patched"] = h.custom.patch_namespaced_custom_object(GROUP, VERSION, h.namespace, "trainingpipelines", "long", {"spec": {"suspend": True}})
        got["pipeline/long-suspended"] = _wait_pipeline(h, "long", "Suspended")
        for name in ("run-pt", "run-tj"):
            got[f"stage/{name}-suspended"] = h.wait_phase(name, "Suspended")
        got["pytorchjob/suspended"] = _wait_job(h, "run-pt", "pytorchjob", "Suspended")
        got["trainjob/suspended"] = _wait_job(h, "run-tj", "trainjob", "Suspended")
        yield got


def stalled(obj: dict[str, Any]) -> str:
    return next(c["message"] for c in obj["status"]["conditions"] if c["type"] == "Stalled")


def test_live_stages_in_every_health(live):
    for label, health in (("ok-pt", "Healthy"), ("ok-tj", "Healthy"), ("run-pt", "Progressing"), ("run-tj", "Progressing"), ("next", "Progressing"),
                          ("run-pt-suspended", "Suspended"), ("run-tj-suspended", "Suspended"),
                          ("bad-pt", "Degraded"), ("bad-tj", "Degraded"), ("after", "Degraded"), ("typo", "Degraded")):
        obj = live[f"stage/{label}"]
        hs = argo_health("TrainingStage", obj)
        assert hs["status"] == health and hs["message"].startswith(obj["status"]["phase"] + ": "), (label, hs)
        assert kstatus(obj) == PHASE_KSTATUS[obj["status"]["phase"]], label
        if health == "Degraded":  # a user sees why, in the operator's own words
            assert hs["message"] == f"{obj['status']['phase']}: {stalled(obj)}", (label, hs)
    assert "retry limit 0 reached" in argo_health("TrainingStage", live["stage/bad-pt"])["message"]
    assert "dependency bad-pt failed" in argo_health("TrainingStage", live["stage/after"])["message"]


def test_live_pipelines_in_every_health(live):
    for label, health in (("fine", "Healthy"), ("long", "Progressing"), ("long-suspended", "Suspended"), ("broken", "Degraded"), ("nosecret", "Degraded")):
        obj = live[f"pipeline/{label}"]
        hs = argo_health("TrainingPipeline", obj)
        assert hs["status"] == health, (label, hs)
        assert kstatus(obj) == PHASE_KSTATUS[obj["status"]["phase"]], label
    broken = argo_health("TrainingPipeline", live["pipeline/broken"])["message"]
    assert broken.startswith("Failed: ") and "bad-pt: " in broken and "retry limit 0 reached" in broken and "bad-tj: " in broken, broken


def test_live_jobs_in_every_health_for_argo_and_flux(live):
    for label, health, flux in (("succeeded", "Healthy", "Current"), ("running", "Progressing", "InProgress"),
                                ("suspended", "Suspended", "InProgress"), ("failed", "Degraded", "Failed")):
        obj = live[f"pytorchjob/{label}"]
        assert argo_health("PyTorchJob", obj)["status"] == health, (label, obj.get("status"))
        assert flux_status("PyTorchJob", obj) == flux, label
    for label, health, flux in (("complete", "Healthy", "Current"), ("running", "Progressing", "InProgress"),
                                ("suspended", "Suspended", "InProgress"), ("failed", "Degraded", "Failed")):
        obj = live[f"trainjob/{label}"]
        assert argo_health("TrainJob", obj)["status"] == health, (label, obj.get("status"))
        assert flux_status("TrainJob", obj) == flux, label


def test_live_objects_honour_observed_generation(live):
    # A real spec patch: unobserved in the PATCH's answer, observed later.
    patched = live["pipeline/long-patched"]
    assert patched["metadata"]["generation"] > patched["status"]["observedGeneration"]
    assert argo_health("TrainingPipeline", patched) == {"status": "Progressing",
                                                        "message": f"waiting for the operator to observe generation {patched['metadata']['generation']}"}
    assert kstatus(patched) == "InProgress"
    later = live["pipeline/long-suspended"]
    assert later["metadata"]["generation"] == patched["metadata"]["generation"] == later["status"]["observedGeneration"]
    assert argo_health("TrainingPipeline", later)["status"] == "Suspended"
    # Every live stage and pipeline, one generation on: whatever its phase, Progressing until the operator looks.
    for label, obj in live.items():
        kind = {"stage": "TrainingStage", "pipeline": "TrainingPipeline"}.get(label.split("/")[0])
        if kind and label != "pipeline/long-patched":
            assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"], label
            bumped = copy.deepcopy(obj)
            bumped["metadata"]["generation"] += 1
            assert argo_health(kind, bumped)["status"] == "Progressing", label
            assert kstatus(bumped) == "InProgress", label


