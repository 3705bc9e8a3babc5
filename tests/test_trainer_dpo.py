"""`dpo` through `torchrun -m gradatim.trainer` on planted (correct, incorrect) pairs from SeaweedFS."""

from __future__ import annotations

import math

from gradatim.storage import s3
from gradatim.trainer.artifacts import upload_dir
from gradatim.trainer.sources import write_jsonl
from gradatim.trainer.tiny import tiny_math
from tests.trainer_harness import run_trainer, stage_spec


PARAMS = {"beta": 0.1, "learningRate": 1e-3, "batchSize": 8, "microBatchSize": 4, "maxSteps": 8,
          "maxLength": 256, "precision": "fp32", "gradientCheckpointing": False, "warmupRatio": 0.0}


def run_dpo(cluster, tmp_path, **params):
    """(metrics, logged losses) of a dpo stage on 64 planted pairs: a worked solution over a wrong guess."""
    pairs = [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "chosen": p.solution(), "rejected": "<think> no idea </think> The answer is $\\boxed{0}$."}
             for p in tiny_math("train", 64)]
    spec = stage_spec(cluster, "dpo", PARAMS | params, {})
    data_uri = spec.output.uri.replace("/dpo/", "/dpo-inputs/") + "pairs/"
    write_jsonl(pairs, tmp_path / "pairs" / "part-00000.jsonl")
    upload_dir(cluster.s3_client(), tmp_path / "pairs", data_uri)
    spec = spec.model_copy(update={"inputs": spec.inputs.model_validate({"model": {"builtin": "tiny-model"}, "data": [{"uri": data_uri}]})})
    result = run_trainer(cluster, spec, tmp_path / "run")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = s3.read_json(cluster.s3_client(), spec.output.uri + "results.json")["metrics"]
    losses = [float(line.split("loss=")[1].split()[0]) for line in (result.stdout + result.stderr).splitlines() if "Step " in line and "loss=" in line]
    return metrics, losses


def test_dpo_prefers_the_chosen_rollouts(cluster, tmp_path):
    metrics, losses = run_dpo(cluster, tmp_path)
    assert abs(losses[0] - math.log(2)) < 0.02, "DPO starts at ln 2: the policy equals its reference"
    assert losses[-1] < losses[0] - 0.1 and metrics["reward_margin"] > 0 and metrics["reward_accuracy"] > 0.5, (losses, metrics)


def test_the_sft_term_keeps_the_chosen_completions_likely(cluster, tmp_path):
    plain, _ = run_dpo(cluster, tmp_path / "plain")
    rpo, losses = run_dpo(cluster, tmp_path / "rpo", sftWeight=1.0)
    assert losses[0] > math.log(2) + 0.5, "the first loss adds the chosen completions' NLL to ln 2"
    assert rpo["reward_margin"] > 0 and rpo["chosen_logps"] > plain["chosen_logps"] + 1.0, (plain, rpo)


def test_pairs_are_scored_after_the_system_message_their_rollouts_were_sampled_with():
    from gradatim.trainer.stages.dpo import to_preference

    pair = {"prompt": "What is 1 + 1?", "chosen": "<think> 1+1=2 </think> $\\boxed{2}$", "rejected": "$\\boxed{3}$"}
    row = to_preference(pair, "Think step by step.")
    assert row["prompt"] == [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": "What is 1 + 1?"}]
    assert row["chosen"] == [{"role": "assistant", "content": pair["chosen"]}]
    assert to_preference(pair)["prompt"] == [{"role": "user", "content": "What is 1 + 1?"}]
