"""Tiny real things for tests and the quickstart: verifiable math problems made procedurally, a BPE tokenizer
trained on the fly with a ChatML template and `<think>` tokens, and a small Llama-style model from a config.

Nothing here is downloaded. The problems have gold answers in LaTeX and a worked solution, so a model can be
trained on correct traces and checked with math-verify. The worked solutions go one digit at a time (column
addition with carries, column subtraction with borrows, one-digit products), so that a model of ~1M parameters
learns them in a few minutes on a CPU: every digit it writes is a one-digit fact about nearby digits.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Split = Literal["train", "eval", "rl"]
SPLITS: tuple[Split, ...] = ("train", "eval", "rl")
KINDS = ("add", "sub", "mul", "mix", "frac", "linear")

PAD, BOS, EOS = "<|pad|>", "<|endoftext|>", "<|im_end|>"
IM_START, THINK, END_THINK = "<|im_start|>", "<think>", "</think>"
SPECIAL_TOKENS = [PAD, BOS, IM_START, EOS, THINK, END_THINK]
# ChatML, as Phi-4-reasoning uses; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Problem:
    """One verifiable problem: its prompt, gold answer (LaTeX) and a worked solution, step by step."""

    id: str
    kind: str
    prompt: str
    answer: str
    steps: tuple[str, ...]

    def solution(self, think: bool = True) -> str:
        """A correct completion: the reasoning (in `<think>` when asked), then the boxed answer."""
        reasoning = " ".join(self.steps)
        body = f"{THINK} {reasoning} {END_THINK}" if think else reasoning
        return f"{body} The answer is $\\boxed{{{self.answer}}}$."

    def record(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "prompt": self.prompt, "answer": self.answer}


def latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _digits(n: int) -> list[int]:
    """The decimal digits of n >= 0, units first."""
    return [int(d) for d in reversed(str(n))]


def _columns_add(x: int, y: int) -> tuple[str, int]:
    """Column addition of x, y >= 0, one digit pair (and carry) at a time, units first: `3+7=10, 1+1+1=3`."""
    xs, ys = _digits(x), _digits(y)
    width = max(len(xs), len(ys))
    xs, ys = xs + [0] * (width - len(xs)), ys + [0] * (width - len(ys))
    carry, parts = 0, []
    for dx, dy in zip(xs, ys):
        total = dx + dy + carry
        parts.append(f"{dx}+{dy}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return ", ".join(parts), x + y


def _columns_sub(x: int, y: int) -> tuple[str, int]:
    """Column subtraction of y from x >= y >= 0, borrowing where a digit is too small: `13-5=8, 1-0-1=0`."""
    xs, ys = _digits(x), _digits(y)
    ys = ys + [0] * (len(xs) - len(ys))
    borrow, parts = 0, []
    for dx, dy in zip(xs, ys):
        need = dy + borrow
        lend = dx < need
        top = f"1{dx}" if lend else f"{dx}"
        parts.append(f"{top}-{dy}" + (f"-{borrow}" if borrow else "") + f"={dx + 10 * lend - need}")
        borrow = int(lend)
    return ", ".join(parts), x - y


def _columns_mul(x: int, d: int) -> tuple[str, int]:
    """x >= 0 times one digit d, units first with carries: `4*3=12, 1*3+1=4`."""
    carry, parts = 0, []
    for dx in _digits(x):
        total = dx * d + carry
        parts.append(f"{dx}*{d}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return ", ".join(parts), x * d


def _add(x: int, y: int) -> str:
    cols, total = _columns_add(x, y)
    return f"{x}+{y}: {cols}, so {total}."


def _sub(x: int, y: int) -> str:
    """x - y for x, y >= 0; a negative difference is found as y - x first."""
    if x >= y:
        cols, diff = _columns_sub(x, y)
        return f"{x}-{y}: {cols}, so {diff}."
    cols, diff = _columns_sub(y, x)
    return f"{x}-{y} is below 0. {y}-{x}: {cols}, so {diff}. So {-diff}."


def _mul(x: int, d: int) -> str:
    cols, product = _columns_mul(x, d)
    return f"{x}*{d}: {cols}, so {product}."


def _make(rng: random.Random, kind: str) -> tuple[str, Fraction, tuple[str, ...]]:
    """(prompt, answer, worked steps) of one problem of `kind`. Every kind stays within ~85 tokens of solution, so a
    completion fits the quickstart's 96 new tokens."""
    a, b, c = rng.randint(2, 19), rng.randint(2, 19), rng.randint(2, 9)
    if kind == "add":
        return f"What is {a} + {b}?", Fraction(a + b), (_add(a, b),)
    if kind == "sub":
        return f"What is {a} - {b}?", Fraction(a - b), (_sub(a, b),)
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        return f"What is {a} * {b}?", Fraction(a * b), (_mul(a, b),)
    if kind == "mix":
        return f"What is {a} + {b} * {c}?", Fraction(a + b * c), (_mul(b, c), _add(a, b * c))
    if kind == "frac":
        # Coprime denominators and numerators in lowest terms: the sum over q*s is already reduced, so every step
        # is a one-digit product or a column addition.
        q = rng.randint(2, 9)
        s = rng.choice([d for d in range(2, 10) if math.gcd(d, q) == 1])
        p = rng.choice([n for n in range(1, q) if math.gcd(n, q) == 1])
        r = rng.choice([n for n in range(1, s) if math.gcd(n, s) == 1])
        common, total = q * s, Fraction(p, q) + Fraction(r, s)
        return (
            f"What is {p}/{q} + {r}/{s}? Give the answer as a reduced fraction.",
            total,
            (f"Numerators {p}*{s}={p * s}, {r}*{q}={r * q}.", _add(p * s, r * q), f"Denominator {q}*{s}={common}, so {p * s + r * q}/{common}."),
        )
    if kind == "linear":
        a, x = rng.randint(2, 9), rng.randint(2, 9)
        b = rng.randint(2, min(19, a * x - 1))
        rhs = a * x - b
        return f"Solve for x: {a}x - {b} = {rhs}.", Fraction(x), (f"{a}x = {rhs}+{b}.", _add(rhs, b), f"x = {a * x}/{a} = {x}.")
    raise ValueError(f"unknown kind {kind!r}")


def split_of(prompt: str) -> Split:
    """Which split a prompt belongs to, by its hash: the splits can never share a problem."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    return "eval" if bucket == 0 else "rl" if bucket == 1 else "train"


def tiny_math(split: Split, n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> list[Problem]:
    """`n` distinct problems of one split, the same for the same arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    rng = random.Random(f"tiny-math/{seed}/{split}")
    seen: set[str] = set()
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 200 * n + 10000:
            raise ValueError(f"cannot make {n} distinct {split} problems of kinds {kinds}")
        kind = kinds[rng.randrange(len(kinds))]
        prompt, answer, steps = _make(rng, kind)
        if prompt in seen or split_of(prompt) != split:
            continue
        seen.add(prompt)
        pid = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        problems.append(Problem(pid, kind, prompt, latex(answer), steps))
    return problems


def corpus(seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: prompts and worked solutions of every split (no answers leak: the
    tokenizer only learns to segment text)."""
    texts = []
    for split in SPLITS:
        for p in tiny_math(split, 400 if split == "train" else 100, seed):
            texts += [p.prompt, p.solution(), p.solution(think=False)]
    return texts


def build_tokenizer(vocab_size: int = 384, seed: int = 0):
    """A byte-level BPE tokenizer trained on the fly, as a `PreTrainedTokenizerFast` with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # One token per digit: arithmetic is learnable digit by digit, not through arbitrary merges of numbers.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(seed), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, additional_special_tokens=[IM_START, THINK, END_THINK])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left
    return fast


def tiny_config(vocab_size: int, max_length: int = 512, hidden: int = 128, layers: int = 4):
    """A small Llama-style decoder (GQA, RoPE, SwiGLU, tied embeddings): ~1M parameters at the defaults."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_length, rope_theta=10000.0,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )


def build_model(tokenizer, seed: int = 0, adjust_config=None, **config_overrides):
    """A freshly initialised tiny model for `tokenizer`, the same for the same seed; `adjust_config(config)`
    may change its config first (as for a loaded model)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer), **config_overrides)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if adjust_config is not None:
        adjust_config(config)
    return LlamaForCausalLM(config)


TEACHER_VERSION = "2"  # bump when the recipe below changes, so cached teachers are rebuilt
# At a fixed CPU budget, updates matter more than width: 3 layers and batches of 8 for 1800 steps (~3 min on one
# core) reach ~0.85 greedy pass@1 on the eval split, where 4 layers of 192 and batches of 32 for 600 steps reached ~0.1.
TEACHER_SHAPE = {"hidden": 128, "layers": 3}


def chat_example(tokenizer, problem: Problem, system_message: str | None = None) -> tuple[list[int], int]:
    """(token ids, prompt length) of one ChatML conversation whose assistant turn is the worked solution."""
    messages = ([{"role": "system", "content": system_message}] if system_message else []) + [{"role": "user", "content": problem.prompt}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(problem.solution() + EOS, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, len(prompt_ids)


def train_teacher(tokenizer, seed: int = 0, steps: int = 1800, batch_size: int = 8, lr: float = 2e-3, log=None, on_step=None):
    """The builtin `tiny-teacher`: the tiny model trained briefly on correct worked solutions of the train split
    (loss on the assistant turn only), so that `generate` samples from a real model that is right often, not
    always. A plain loop: it runs once per machine and is cached (see `cached_teacher`). `on_step(step, steps, loss)`
    hears of every tenth step."""
    import torch
    import torch.nn.functional as F

    model = build_model(tokenizer, seed=seed, **TEACHER_SHAPE)
    examples = [chat_example(tokenizer, p) for p in tiny_math("train", 2000, seed)]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for step in range(steps):
        batch = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (ids, prompt_len) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            attention[i, : len(ids)] = 1
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"tiny-teacher step {step + 1}/{steps} loss {loss.item():.4f}")
        if on_step and ((step + 1) % 10 == 0 or step == steps - 1):
            on_step(step + 1, steps, loss.item())
    model.eval()
    return model


def teacher_dir(cache_dir, seed: int = 0):
    """Where `tiny-teacher` is cached: by version, seed and the CPU kernels that train it (kernels.py). Other kernels
    or another thread count train other weights, and a teacher trained in a test's process must not stand in for
    the one a pinned trainer would train."""
    from pathlib import Path

    from gradatim.trainer.kernels import cpu_kernels

    k = cpu_kernels()
    return Path(cache_dir) / f"tiny-teacher-v{TEACHER_VERSION}-seed{seed}-{k['aten'].lower()}-mkl{k['mkl'].lower()}-{k['threads']}t"


def cached_teacher(cache_dir, seed: int = 0, log=None, on_step=None):
    """(model, tokenizer) of `tiny-teacher`, trained on first use and kept in `cache_dir` (one writer at a time;
    other processes wait for it and load the result)."""
    import fcntl
    import os
    import shutil
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = teacher_dir(cache_dir, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(str(target) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            tokenizer = build_tokenizer(seed=seed)
            model = train_teacher(tokenizer, seed=seed, log=log, on_step=on_step)
            staging = Path(str(target) + f".tmp{os.getpid()}")
            save_local(model, tokenizer, staging)
            if target.exists():  # incomplete (no config.json): staging is renamed only once whole, so only an older writer left it
                shutil.rmtree(target)
            staging.rename(target)
    return AutoModelForCausalLM.from_pretrained(target), AutoTokenizer.from_pretrained(target)


def save_local(model, tokenizer, path) -> None:
    """The model and tokenizer as `from_pretrained` loads them, written by whichever process calls it. transformers'
    `save_pretrained` writes nothing but from distributed rank 0 while a process group is up, and a builtin model is
    cached, or staged in a node's scratch, by the first process on each machine."""
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # As save_pretrained records them: vLLM and `transformers serve` pick the class and the dtype by these.
    model.config.architectures = [type(model).__name__]
    model.config.dtype = model.dtype
    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    # Each tied tensor once, under its first name in state-dict order (embed_tokens, not lm_head), as save_pretrained
    # keeps it: vLLM reads the embedding by that name and ties lm_head to it.
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state[name] = tensor.contiguous()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(path)
