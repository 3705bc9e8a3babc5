"""GRPO rewards on hand-made completions, with the report's constants."""

from __future__ import annotations

import math

import pytest

from gradatim.api.hyperparams import LengthAwareReward, RepetitionPenalty, Rewards
from gradatim.trainer.rewards import is_correct, length_scaled, repetition_penalty, score, well_formed

PHI = LengthAwareReward()  # L_max 31744, L_pos 25600, L_neg 3702


def test_correctness_is_math_verify_gold_first():
    assert is_correct("\\frac{7}{12}", "<think>...</think> The answer is $\\boxed{\\frac{7}{12}}$.")
    assert is_correct("7/12", "so $\\boxed{\\frac{14}{24}}$")
    assert is_correct("-6", "The answer is $\\boxed{-6}$.")
    assert not is_correct("-6", "The answer is $\\boxed{6}$.")
    assert not is_correct("3", "no answer here")


def test_length_aware_shape():
    assert length_scaled(True, 100, PHI) == pytest.approx(1.0)
    assert length_scaled(True, 25600, PHI) == pytest.approx(1.0)
    assert length_scaled(True, 31744, PHI) == pytest.approx(0.5)
    assert 0.5 < length_scaled(True, 28672, PHI) < 1.0
    assert length_scaled(True, 28672, PHI) == pytest.approx(0.75)  # half way: cosine midpoint
    assert length_scaled(False, 0, PHI) == pytest.approx(-1.0)     # wrong and short: lowest
    assert length_scaled(False, 3702, PHI) == pytest.approx(-0.5)
    assert length_scaled(False, 20000, PHI) == pytest.approx(-0.5)
    assert length_scaled(False, 1000, PHI) < length_scaled(False, 2000, PHI)
    # short-and-right > long-and-right > long-and-wrong > short-and-wrong
    assert length_scaled(True, 10, PHI) > length_scaled(True, 31000, PHI) > length_scaled(False, 31000, PHI) > length_scaled(False, 10, PHI)
    assert length_scaled(True, 31000, LengthAwareReward(enabled=False)) == 1.0 and length_scaled(False, 5, LengthAwareReward(enabled=False)) == -1.0


def test_repetition_penalty():
    cfg = RepetitionPenalty(ngram_size=3, max_repeats=2)
    assert repetition_penalty(list(range(50)), cfg) == 0.0
    looped = [1, 2, 3] * 20
    assert repetition_penalty(looped, cfg) == pytest.approx(-1.0)
    partly = list(range(100, 160)) + [1, 2, 3] * 4
    assert -1.0 < repetition_penalty(partly, cfg) < 0.0


def test_format_check():
    assert well_formed("<think> 2 + 3 = 5. </think> The answer is $\\boxed{5}$.", think=True)
    assert not well_formed("The answer is $\\boxed{5}$.", think=True)
    assert not well_formed("<think> 2 + 3 = 5. The answer is 5", think=True)
    assert not well_formed("<think></think> 5", think=True)


def test_composed_score_with_format_overrides():
    cfg = Rewards(length_aware=LengthAwareReward(max_length=100, positive_control_length=50, negative_control_length=20), format=0.1)
    good = score("<think> 2 + 3 = 5. </think> The answer is $\\boxed{5}$.", list(range(10)), "5", True, cfg)
    assert good.correct and good.accuracy == pytest.approx(1.0) and good.format == 1.0
    assert good.total == pytest.approx(8 / 13 * 1.0 + 0.1)
    truncated = score("<think> 2 + 3 = 5. </think> The answer is $\\boxed{5}$.", list(range(100)), "5", False, cfg)
    assert truncated.accuracy == -0.5 and truncated.format == 0.0
    no_think = score("The answer is $\\boxed{5}$.", list(range(10)), "5", True, cfg)
    assert no_think.correct and no_think.accuracy == -1.0
    wrong_short = score("<think> guess </think> $\\boxed{4}$", list(range(2)), "5", True, cfg)
    assert not wrong_short.correct and wrong_short.accuracy == pytest.approx(-0.5 - 0.25 * (1 + math.cos(math.pi * 0.1)))
    assert good.total > wrong_short.total
