"""`midtrain` through `torchrun -m gradatim.trainer`: packed documents, loss falls, outputs on SeaweedFS."""

from __future__ import annotations

from gradatim.storage import s3
from tests.trainer_harness import run_trainer, stage_spec


def test_midtrain_packs_documents_and_trains(cluster, tmp_path):
    params = {"learningRate": 3e-3, "batchSize": 8, "microBatchSize": 4, "maxSteps": 10, "maxLength": 256, "precision": "fp32",
              "gradientCheckpointing": False, "warmupRatio": 0.0}
    spec = stage_spec(cluster, "midtrain", params, {"model": {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:train:300"}]})
    result = run_trainer(cluster, spec, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = s3.read_json(cluster.s3_client(), spec.output.uri + "results.json")["metrics"]
    assert metrics["documents"] == 300 and metrics["sequences"] < 150, "several documents share each sequence"
    assert metrics["packing_efficiency"] > 0.8
    assert 0.8 * 10 * 8 * 256 < metrics["tokens"] <= 10 * 8 * 256, "real tokens: at most 10 steps of 8 full sequences"
    losses = [float(line.split("loss=")[1].split()[0]) for line in (result.stdout + result.stderr).splitlines() if "Step " in line and "loss=" in line]
    assert len(losses) == 10 and losses[-1] < losses[0] - 1.0, losses
