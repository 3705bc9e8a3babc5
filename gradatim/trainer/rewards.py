"""GRPO rewards, as pure functions of one completion: verifiable correctness (math-verify, gold first), the
length-aware scaling and format overrides of Phi-4-reasoning-plus, an n-gram repetition penalty, and a format
check. `score` composes them with the weights of the stage's spec.

The length-aware formula (cosine between the control lengths) follows the Phi-4-reasoning report §4.1; the
repetition penalty follows its 5-gram description (the exact printed formula was not available).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from gradatim.api.hyperparams import LengthAwareReward, RepetitionPenalty, Rewards

THINK_BLOCK = re.compile(r"^\s*<think>(.+?)</think>(.+)$", re.DOTALL)


def _timeout() -> int | None:
    # math-verify's timeout uses signal.alarm, which only works on the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


def is_correct(gold: str, completion: str) -> bool:
    """math-verify's judgement of the completion's final answer against the gold answer (gold first)."""
    from math_verify import parse, verify

    timeout = _timeout()
    gold_parsed = parse(gold if "$" in gold or "\\boxed" in gold else f"${gold}$", parsing_timeout=timeout)
    answer = parse(completion, parsing_timeout=timeout)
    if not gold_parsed or not answer:
        return False
    return bool(verify(gold_parsed, answer, timeout_seconds=timeout))


BOXED_LETTER = re.compile(r"\\boxed\{\s*\(?([A-Z])\)?\s*\}")
STATED_LETTER = re.compile(r"(?:answer|choice)\s*(?:is|:)?\s*\(?\*{0,2}([A-Z])\b\)?", re.IGNORECASE)


def chosen_letter(completion: str, n_choices: int) -> str | None:
    """The letter a multiple-choice completion answers: its last `\\boxed{X}`, else its last "answer: X" / "the
    answer is (X)"; None when it names no valid letter. The reasoning before `</think>` is not read."""
    final = completion.rsplit("</think>", 1)[-1]
    valid = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_choices]
    for pattern in (BOXED_LETTER, STATED_LETTER):
        found = [m.group(1).upper() for m in pattern.finditer(final)]
        if found and found[-1] in valid:
            return found[-1]
    return None


def grade(record: dict, completion: str) -> bool:
    """Whether a completion answers a problem record correctly: by letter for multiple choice (records with
    `choices`), else by math-verify against the gold answer."""
    if record.get("choices"):
        return chosen_letter(completion, len(record["choices"])) == str(record["answer"])
    return is_correct(str(record["answer"]), completion)


def length_scaled(correct: bool, length: int, cfg: LengthAwareReward) -> float:
    """Correct: `correctMax` up to L_pos, then a cosine down to `correctMin` at L_max. Wrong: a cosine from
    `incorrectMin` at length 0 up to `incorrectMax` at L_neg, so a wrong answer is penalised less the longer it
    thought. Disabled: +1 / -1."""
    if not cfg.enabled:
        return 1.0 if correct else -1.0
    if correct:
        rho = min(1.0, max(length - cfg.positive_control_length, 0) / (cfg.max_length - cfg.positive_control_length))
        return cfg.correct_min + 0.5 * (cfg.correct_max - cfg.correct_min) * (1 + math.cos(math.pi * rho))
    rho = min(1.0, length / cfg.negative_control_length)
    return cfg.incorrect_max + 0.5 * (cfg.incorrect_min - cfg.incorrect_max) * (1 + math.cos(math.pi * rho))


def repetition_penalty(token_ids: Sequence[int], cfg: RepetitionPenalty) -> float:
    """A penalty in [-1, 0]: minus the larger of the share of distinct n-grams that repeat more than
    `maxRepeats` times and the coverage of the most repeated one; 0 when nothing repeats."""
    n = cfg.ngram_size
    if len(token_ids) < n:
        return 0.0
    counts = Counter(tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1))
    repeated = {g: c for g, c in counts.items() if c > cfg.max_repeats}
    if not repeated:
        return 0.0
    share = len(repeated) / len(counts)
    coverage = max(repeated.values()) * n / len(token_ids)
    return -min(1.0, max(share, coverage))


def well_formed(completion: str, think: bool) -> bool:
    """A closed `<think>` block (when required) followed by a non-empty answer."""
    if not think:
        return bool(completion.strip())
    match = THINK_BLOCK.match(completion)
    return bool(match and match.group(1).strip() and match.group(2).strip() and "<think>" not in match.group(2))


@dataclass(frozen=True)
class Score:
    total: float
    correct: bool
    accuracy: float
    repetition: float
    format: float


def score(completion: str, token_ids: Sequence[int], gold: str, finished: bool, cfg: Rewards, think: bool = True) -> Score:
    """The reward of one completion. `finished`: it ended with EOS rather than at the length limit.
    Format overrides as in Phi-4-reasoning-plus: no EOS → accuracy -0.5; no valid think block → -1."""
    correct = is_correct(gold, completion)
    formed = well_formed(completion, think)
    if not finished:
        accuracy = -0.5
    elif not formed:
        accuracy = -1.0
    else:
        accuracy = length_scaled(correct, len(token_ids), cfg.length_aware)
    rep = repetition_penalty(token_ids, cfg.repetition_penalty)
    fmt = 1.0 if formed and finished else 0.0
    total = cfg.correctness * accuracy + cfg.repetition * rep + cfg.format * fmt
    return Score(total, correct, accuracy, rep, fmt)
