"""`grpo` through `torchrun -m gradatim.trainer`: TRL GRPO with our reward functions, on the tiny model."""

from __future__ import annotations

from gradatim.storage import s3
from tests.trainer_harness import run_trainer, stage_spec


def test_grpo_runs_and_reports_reward_parts(cluster, tmp_path):
    params = {"numGenerations": 4, "batchSize": 8, "microBatchSize": 4, "maxSteps": 3, "maxCompletionLength": 24, "maxLength": 256,
              "learningRate": 1e-4, "beta": 0.0, "epsilonHigh": 0.28, "precision": "fp32", "gradientCheckpointing": False,
              "rewards": {"format": 0.1, "lengthAware": {"maxLength": 24, "positiveControlLength": 16, "negativeControlLength": 8},
                          "repetitionPenalty": {"ngramSize": 3, "maxRepeats": 2}}}
    spec = stage_spec(cluster, "grpo", params, {"model": {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:rl:16"}]})
    result = run_trainer(cluster, spec, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = s3.read_json(cluster.s3_client(), spec.output.uri + "results.json")
    assert results["metrics"]["steps"] == 3 and results["outputs"]["model"].endswith("/model/")
    history = results["rewardHistory"]
    assert len(history) == 3
    # An untrained model runs out of tokens (-0.5) or stops without a think block (-1): the format overrides;
    # the total is the weighted sum of the parts TRL logged.
    for h in history:
        assert -1.0 <= h["rewards/correctness/mean"] <= -0.5
        expected = 8 / 13 * h["rewards/correctness/mean"] + 1 / 13 * h["rewards/repetition/mean"] + 0.1 * h["rewards/format/mean"]
        assert abs(h["reward"] - expected) < 1e-4, h


def test_rewards_read_think_tokens_that_trl_decodes_away():
    """`<think>` is a special token of the tiny tokenizer (as of many reasoning tokenizers): TRL's completion text
    drops it, so the rewards score the ids."""
    from gradatim.api.hyperparams import GRPOParams
    from gradatim.trainer.stages.grpo import reward_functions
    from gradatim.trainer.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    params = GRPOParams.model_validate({"maxCompletionLength": 64, "rewards": {"format": 0.1}})
    ids = tokenizer("<think> 2+3: 2+3=5, so 5. </think> The answer is $\\boxed{5}$.<|im_end|>", add_special_tokens=False)["input_ids"]
    trl_text = [{"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}]
    correctness, _, format_ = reward_functions(params, tokenizer)
    assert "<think>" not in trl_text[0]["content"]
    assert correctness([None], [trl_text], [ids], ["5"]) == [1.0]
    assert format_([None], [trl_text], [ids]) == [1.0]
