"""The tiny math generator, tokenizer and model used by tests and the quickstart."""

from __future__ import annotations

import math
import re

from math_verify import parse, verify

from gradatim.trainer import tiny
from gradatim.trainer.tiny import KINDS, build_model, build_tokenizer, split_of, tiny_math


def test_splits_are_disjoint_deterministic_and_cover_every_kind():
    train, evals, rl = tiny_math("train", 1500), tiny_math("eval", 150), tiny_math("rl", 150)
    prompts = [{p.prompt for p in s} for s in (train, evals, rl)]
    assert len(prompts[0]) == 1500 and not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    assert all(split_of(p.prompt) == "eval" for p in evals)
    assert tiny_math("eval", 150) == evals and tiny_math("eval", 150, seed=1) != evals
    assert {p.kind for p in train} == set(KINDS)


def test_gold_answers_verify_against_worked_solutions_and_wrong_ones_do_not():
    for p in tiny_math("eval", 60):
        gold = parse(f"${p.answer}$")
        assert verify(gold, parse(p.solution())), p
        assert not verify(gold, parse("The answer is $\\boxed{1000}$.")), p


def value(expression: str) -> int:
    """An integer expression of digits, +, - and * (products first), as the worked solutions write them."""
    return sum((-1 if sign == "-" else 1) * math.prod(int(f) for f in term.split("*")) for sign, term in re.findall(r"([-+]?)([\d*]+)", expression))


def test_worked_solutions_are_true_digit_by_digit_and_fit_the_quickstart_budget():
    tok = build_tokenizer()
    equation = re.compile(r"(?<![\d/])(\d+(?:[-+*]\d+)+)=(\d+)")  # 1+1+1=3, 14-6=8, 1*3+1=4
    quotient = re.compile(r"(\d+)/(\d+) = (\d+)\.")
    longest: dict[str, int] = {}
    for p in tiny_math("train", 600) + tiny_math("eval", 200):
        text = p.solution()
        steps = equation.findall(text)
        assert steps, p
        assert all(value(lhs) == int(rhs) for lhs, rhs in steps), (p, steps)
        assert all(int(n) == int(d) * int(q) for n, d, q in quotient.findall(text)), p
        longest[p.kind] = max(longest.get(p.kind, 0), len(tok(text + tiny.EOS, add_special_tokens=False)["input_ids"]))
    assert set(longest) == set(KINDS) and max(longest.values()) <= 90, longest  # the quickstart samples 96 new tokens


def test_tokenizer_round_trips_chat_and_marks_the_end_of_the_assistant_turn():
    tok = build_tokenizer()
    p = tiny_math("train", 1)[0]
    text = tok.apply_chat_template([{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.solution()}], tokenize=False)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    for special in ("<think>", "</think>", "<|im_end|>", "<|im_start|>"):
        assert tok.convert_tokens_to_ids(special) in ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id


def test_tiny_model_runs_a_forward_pass_with_a_loss():
    import torch

    tok = build_tokenizer()
    model = build_model(tok, seed=3)
    batch = tok(["What is 2 + 3?", "What is 7 * 8?"], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss) and out.logits.shape[-1] == len(tok)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_tiny_teacher_is_a_trained_model_that_beats_the_untrained_one_and_is_cached(tmp_path):
    import time

    from gradatim.api.hyperparams import Sampling
    from gradatim.trainer.generation import HFEngine, messages
    from gradatim.trainer.rewards import is_correct

    started = time.monotonic()
    teacher, tokenizer = tiny.cached_teacher(tmp_path, seed=0)
    trained_in = time.monotonic() - started
    problems = tiny.tiny_math("eval", 40)
    prompts = [messages(p.prompt, None) for p in problems]
    greedy = Sampling(temperature=0.0, max_new_tokens=96)

    def pass_at_1(model) -> float:
        groups = HFEngine(model, tokenizer, 1 << 16, model.device).sample(prompts, 1, greedy, seed=0)
        return sum(is_correct(p.answer, g[0].text) for p, g in zip(problems, groups)) / len(problems)

    untrained = tiny.build_model(tokenizer, seed=0, **tiny.TEACHER_SHAPE)
    assert pass_at_1(untrained) == 0.0
    # ~0.85 on seeds 0 and 1; the quickstart's student only learns what the teacher gets right.
    assert pass_at_1(teacher) >= 0.5, "the teacher learned the digit-by-digit arithmetic of the worked solutions"
    groups = HFEngine(teacher, tokenizer, 1 << 16, teacher.device).sample(prompts[:8], 1, greedy, seed=0)
    assert sum(tiny.THINK in g[0].text and "\\boxed{" in g[0].text and g[0].finished for g in groups) >= 6, "it writes the trace format and stops"
    started = time.monotonic()
    tiny.cached_teacher(tmp_path, seed=0)
    assert time.monotonic() - started < min(10.0, trained_in / 5), "a second load comes from the cache"


def _save_on_rank_one(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from gradatim.trainer import tiny as t

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        if rank == 1:  # the first process on a second machine: it caches the builtin model for its machine
            tokenizer = t.build_tokenizer()
            model = t.build_model(tokenizer)
            model.save_pretrained(f"{out}/by-save-pretrained")
            t.save_local(model, tokenizer, f"{out}/by-save-local")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_builtin_model_is_saved_by_a_process_other_than_rank_0(tmp_path):
    """transformers writes nothing from a rank other than 0 while a process group is up; tiny-teacher's cache and a
    node's staged builtin model are written by whichever process comes first on a machine."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    mp.spawn(_save_on_rank_one, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert not (tmp_path / "by-save-pretrained" / "config.json").exists(), "transformers now saves on every rank: save_local may go"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "by-save-local")
    assert model.config.architectures == ["LlamaForCausalLM"], "vLLM and transformers serve pick the class by it"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "by-save-local" / "model.safetensors"), "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys(), "vLLM loads the tied embedding by its own name"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "tied embeddings come back tied"
