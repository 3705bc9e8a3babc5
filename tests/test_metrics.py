"""The metrics series as docs/metrics.md names them: the operator's per-stage view of status, and the trainer's
reporter (gauges, counters, MFU, device memory)."""

from __future__ import annotations

import math
import re
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gradatim.api import TrainingStage
from gradatim.api.resolved import ResolvedStageSpec
from gradatim.operator.metrics import OperatorMetrics
from gradatim.trainer import tiny
from gradatim.trainer.report import Reporter
from gradatim.trainer.telemetry import ModelFlops

DOC = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()


def stage(name: str, phase: str | None, **status) -> TrainingStage:
    body = {"metadata": {"name": name, "namespace": "ns", "generation": 1},
            "spec": {"pipeline": "p", "type": "eval", "inputs": {"model": {"builtin": "tiny-model"}, "evalData": [{"builtin": "tiny-math:eval"}]},
                     "eval": {}, "retryLimit": 3}}
    if phase:
        body["status"] = {"phase": phase, **status}
    return TrainingStage.model_validate(body)


class Samples(dict):
    """Exposed samples by name and labels, read back from the registry's text exposition."""

    def get_one(self, name: str, **labels: str) -> float:
        return self[(name, frozenset(labels.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self}

    def any_with(self, **labels: str) -> bool:
        return any(set(labels.items()) <= set(key) for _, key in self)


def samples(registry: CollectorRegistry) -> Samples:
    out = Samples()
    for line in generate_latest(registry).decode().splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', rest))
        out[(name, labels)] = float(value)
    return out


def documented(name: str) -> bool:
    base = re.sub(r"_(bucket|sum|count|created)$", "", name)
    return f"`{base}`" in DOC or base.startswith("process_") or base.startswith("python_")


def test_stage_series_follow_status_and_disappear_with_the_stage():
    registry = CollectorRegistry()
    m = OperatorMetrics(registry)
    m.observe_stage(stage("ev", "Running", attempt=2, retries=1, progress={"step": 3, "totalSteps": 10, "etaSeconds": 70}))
    s = samples(registry)
    L = {"namespace": "ns", "pipeline": "p", "stage": "ev", "type": "eval"}
    assert s.get_one('gradatim_stage_phase', **L, phase='Running') == 1
    assert s.get_one('gradatim_stage_phase', **L, phase='Failed') == 0
    assert s.get_one('gradatim_stage_step', **L) == 3 and s.get_one('gradatim_stage_total_steps', **L) == 10
    assert s.get_one('gradatim_stage_eta_seconds', **L) == 70
    assert s.get_one('gradatim_stage_failed_attempts', **L) == 1 and s.get_one('gradatim_stage_retry_limit', **L) == 3
    m.observe_stage(stage("ev", "Succeeded", attempt=2, metrics={"pass@1": 0.5, "pass@1/math": 0.5}))
    s = samples(registry)
    assert s.get_one('gradatim_stage_phase', **L, phase='Succeeded') == 1 and s.get_one('gradatim_stage_phase', **L, phase='Running') == 0
    assert s.get_one('gradatim_stage_result', **L, metric='pass@1/math') == 0.5
    assert s.get_one('gradatim_stage_eta_seconds', **L) == 0, "no ETA once finished"
    m.observe_stage(stage("other", "Pending"))
    m.keep_only([("ns", "other")])
    assert not samples(registry).any_with(stage="ev"), "a deleted stage's series are removed"
    m.forget_stage("ns", "other")
    assert "gradatim_stage_phase" not in samples(registry).names()


def test_every_operator_series_is_documented():
    registry = CollectorRegistry()
    m = OperatorMetrics(registry)
    m.observe_stage(stage("ev", "Succeeded", metrics={"pass@1": 1.0}))
    for family in registry.collect():
        assert documented(family.name + {"counter": "_total", "info": "_info"}.get(family.type, "")), family.name


def spec() -> ResolvedStageSpec:
    return ResolvedStageSpec(namespace="ns", pipeline="p", stage="sft", type="sft", attempt=1, cache_key="k", params={},
                             inputs={}, output={"uri": "s3://b/o/", "checkpointUri": "s3://b/c/"}, storage={"bucket": "b"})


def test_reporter_counts_tokens_and_reports_mfu_as_unknown_on_cpu():
    reporter = Reporter(spec(), store=None, enabled=True, serve_metrics=False)
    model = tiny.build_model(tiny.build_tokenizer())
    reporter.set_model(model)
    reporter.progress(1, 4, tokens=1000, samples=10, loss=2.5, learning_rate=1e-3)
    reporter.progress(2, 4, tokens=1000, samples=10, loss=2.0)
    s = samples(reporter.registry)
    L = {"attempt": "1", "namespace": "ns", "pipeline": "p", "stage": "sft", "type": "sft"}
    assert s.get_one('gradatim_trainer_tokens_total', **L) == 2000 and s.get_one('gradatim_trainer_steps_total', **L) == 2
    assert s.get_one('gradatim_trainer_samples_total', **L) == 20 and s.get_one('gradatim_trainer_loss', **L) == 2.0
    assert s.get_one('gradatim_trainer_model_flops_per_second', **L) > 0
    assert math.isnan(s.get_one('gradatim_trainer_mfu_ratio', **L)), "a CPU's peak is unknown: MFU is NaN, not a made-up number"
    assert s.get_one('gradatim_trainer_device_memory_bytes', **L) > 10 * 2**20
    assert s.get_one('gradatim_trainer_info', **L, device='cpu', world_size='1') == 1
    assert [h["loss"] for h in reporter.history] == [2.5, 2.0]
    for family in reporter.registry.collect():
        assert documented(family.name + {"counter": "_total", "info": "_info"}.get(family.type, "")), family.name
    with pytest.raises(ValueError, match="no trainer gauge named bogus"):
        reporter.progress(3, 4, bogus=1.0)


def test_model_flops_follow_the_palm_count():
    model = tiny.build_model(tiny.build_tokenizer(), hidden=64, layers=2)
    flops = ModelFlops.of(model)
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert flops.dense == 6 * n and flops.per_token(100) == 6 * n + 12 * 2 * 64 * 100


def test_s3_failures_are_counted_against_the_real_seaweedfs(cluster):
    from gradatim.storage import s3

    failed: list[str] = []
    wrong = s3.client(cluster.s3_endpoint, cluster.s3_access_key, "not-the-secret", cluster.s3_region)
    s3.count_failures(wrong, failed.append)
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|Forbidden"):
        s3.read_json(wrong, f"s3://{cluster.s3_bucket}/nothing.json")
    assert failed and set(failed) == {"GetObject"}
    right = s3.client(cluster.s3_endpoint, cluster.s3_access_key, cluster.s3_secret_key, cluster.s3_region)
    s3.count_failures(right, failed.append)
    before = len(failed)
    assert s3.read_json(right, f"s3://{cluster.s3_bucket}/nothing-{uuid.uuid4().hex}.json") is None, "a missing key is no failure"
    assert len(failed) == before


def test_preparing_names_its_activity_in_progress_json_and_leaves_the_stage_counters_alone(cluster):
    from gradatim.storage import s3

    store = cluster.s3_client()
    out = f"s3://{cluster.s3_bucket}/preparing-{uuid.uuid4().hex}/"
    run = spec().model_copy(update={"output": spec().output.model_copy(update={"uri": out})})
    reporter = Reporter(run, store=store, enabled=True, serve_metrics=False)
    reporter.preparing("training tiny-teacher", 1800, 1800, loss=0.25)
    progress = s3.read_json(store, out + "progress.json")
    assert progress["activity"] == "training tiny-teacher" and (progress["step"], progress["totalSteps"]) == (1800, 1800)
    assert progress["metrics"] == {"loss": 0.25} and progress["etaSeconds"] == 0
    L = {"attempt": "1", "namespace": "ns", "pipeline": "p", "stage": "sft", "type": "sft"}
    assert samples(reporter.registry).get_one("gradatim_trainer_steps_total", **L) == 0 and reporter.history == []
    time.sleep(0.2)
    reporter.progress(1, 2, samples=4)
    assert reporter.gauges["eta_seconds"]._value.get() < 5, "the stage's ETA counts from after the preparing, not from its start"
    reporter.progress(2, 2, samples=4)
    assert "activity" not in s3.read_json(store, out + "progress.json")
