"""The dashboard against a real run: a pipeline of every stage type, run by the real trainer under the operator
and the pod runner under the real Kubeflow controllers, scraped by the embedded Prometheus; then every panel's PromQL, evaluated over the
run's window as Grafana would, must return data."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request

import pytest

from gradatim.monitoring.dashboard import build_dashboard, panel_queries
from gradatim.trainer.artifacts import upload_dir
from gradatim.trainer.sources import write_jsonl
from gradatim.trainer.tiny import tiny_math
from tests.operator_harness import Harness, running_harness

TRAINER_IMAGE = "ghcr.io/gradatim/trainer:0.1.0"  # the rendered command runs `-m gradatim.trainer` itself
TRAIN = {"learningRate": 1e-3, "batchSize": 8, "microBatchSize": 4, "maxSteps": 6, "maxLength": 256, "precision": "fp32",
         "gradientCheckpointing": False, "warmupRatio": 0.0}
# Panels whose value is NaN by definition on this machine: MFU needs a known device peak, and a CPU has none.
NAN_ON_CPU = {"MFU"}


@pytest.fixture(scope="module")
def h(cluster, kube, tmp_path_factory):
    with running_harness(cluster, kube, tmp_path_factory.mktemp("dashboard"), "dash") as harness:
        yield harness


def planted_pairs(cluster, tmp_path, ns: str) -> str:
    """DPO pairs uploaded to S3: an untrained model's rollouts are never correct, so they make no pairs."""
    pairs = [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "chosen": p.solution(), "rejected": "<think> no idea </think> The answer is $\\boxed{0}$."}
             for p in tiny_math("train", 32)]
    write_jsonl(pairs, tmp_path / "pairs" / "part-00000.jsonl")
    uri = f"s3://{cluster.s3_bucket}/{ns}/planted/pairs/"
    upload_dir(cluster.s3_client(), tmp_path / "pairs", uri)
    return uri


def run_every_stage_type(h: Harness, pairs_uri: str) -> None:
    h.pipeline("observed", image=TRAINER_IMAGE)
    tiny = {"builtin": "tiny-model"}
    h.stage("rollouts", "observed", "generate", inputs={"model": tiny, "data": [{"builtin": "tiny-math:train:16"}]},
            generate={"samplesPerPrompt": 2, "maxNewTokens": 16}, qualityGate={"metric": "acceptance_rate", "comparison": ">=", "threshold": 0})
    h.stage("decontaminate", "observed", "decontaminate", inputs={"data": [{"builtin": "tiny-math:train:64"}],
                                                                    "evalData": [{"builtin": "tiny-math:eval:16", "name": "math"}]})
    h.stage("midtrain", "observed", "midtrain", deps=("decontaminate",), inputs={"model": tiny, "data": [{"fromStage": "decontaminate"}]}, midtrain=TRAIN)
    h.stage("sft", "observed", "sft", deps=("midtrain", "decontaminate"),
            inputs={"model": {"fromStage": "midtrain"}, "data": [{"fromStage": "decontaminate"}]},
            sft={**TRAIN, "systemMessage": "Think, then answer."})  # the default (Phi-4-reasoning's) outgrows maxLength here
    h.stage("dpo", "observed", "dpo", deps=("sft",), inputs={"model": {"fromStage": "sft"}, "data": [{"uri": pairs_uri}]}, dpo={**TRAIN, "beta": 0.1})
    h.stage("grpo", "observed", "grpo", deps=("dpo",), inputs={"model": {"fromStage": "dpo"}, "data": [{"builtin": "tiny-math:rl:16"}]},
            grpo={**TRAIN, "maxSteps": 4, "numGenerations": 4, "maxCompletionLength": 24, "beta": 0.0,
                  "rewards": {"format": 0.1, "lengthAware": {"maxLength": 24, "positiveControlLength": 16, "negativeControlLength": 8},
                              "repetitionPenalty": {"ngramSize": 3, "maxRepeats": 2}}})
    h.stage("eval", "observed", "eval", deps=("grpo",), inputs={"model": {"fromStage": "grpo"}, "evalData": [{"builtin": "tiny-math:eval:16", "name": "math"}]},
            eval={"samplesPerProblem": 2, "maxNewTokens": 16}, qualityGate={"metric": "pass@1/math", "comparison": ">=", "threshold": 0})
    h.wait("trainingpipelines", "observed", lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"), 900, "finished")
    phases = {s["name"]: s.get("phase") for s in h.get("trainingpipelines", "observed")["status"]["stages"]}
    assert set(phases.values()) == {"Succeeded"}, f"{phases}\n{h.operator_log()}"


def grafana_variables(expr: str, namespace: str, window: float) -> str:
    """What Grafana substitutes before sending a query: the dashboard variables and its interval macros
    ($__rate_interval is four scrape intervals at least; the embedded Prometheus scrapes every second)."""
    for name, value in {"$namespace": namespace, "$pipeline": "observed", "$__rate_interval": "5s", "$__range": f"{int(window)}s"}.items():
        expr = expr.replace(name, value)
    return expr


def query_range(prometheus_url: str, expr: str, start: float, end: float) -> list[dict]:
    """One point per scrape interval, as Grafana steps at its minimum: a series a short stage left behind lives
    between its last scrape and the staleness marker one interval later."""
    url = f"{prometheus_url}/api/v1/query_range?" + urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1s"})
    body = json.load(urllib.request.urlopen(url, timeout=30))
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_every_panel_returns_data_from_a_real_run(h, cluster, tmp_path):
    start = time.time()
    run_every_stage_type(h, planted_pairs(cluster, tmp_path, h.namespace))
    time.sleep(5)  # the operator's last series, scraped every second
    end = time.time()
    empty, not_finite = [], []
    queries = panel_queries(build_dashboard())
    assert len(queries) >= 30
    for title, expr in queries:
        series = query_range(cluster.prometheus_url, grafana_variables(expr, h.namespace, end - start), start, end)
        values = [float(v) for s in series for _, v in s["values"]]
        if not values:
            empty.append(f"{title}: {expr}")
        elif title not in NAN_ON_CPU and not any(math.isfinite(v) for v in values):
            not_finite.append(f"{title}: {expr}")
        elif title in NAN_ON_CPU:
            assert all(math.isnan(v) for v in values), f"{title} claims a utilisation on a CPU"
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert not not_finite, "panels with only NaN/Inf:\n" + "\n".join(not_finite)
