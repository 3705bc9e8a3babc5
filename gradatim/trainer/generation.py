"""Sampling k completions per prompt with transformers' `generate`, batched, on one process's share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradatim.api.hyperparams import Sampling


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    finished: bool  # ended with EOS rather than at max_new_tokens


def chat_prompt(tokenizer: Any, prompt: str, system_message: str | None) -> str:
    messages = ([{"role": "system", "content": system_message}] if system_message else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def sample(model: Any, tokenizer: Any, prompts: Sequence[str], k: int, sampling: Sampling, batch_size: int, seed: int,
           on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
    """k completions for each (already chat-formatted) prompt, in order."""
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out: list[list[Completion]] = []
    per_batch = max(1, batch_size // k)
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start : start + per_batch]
        enc = tokenizer(list(chunk), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        torch.manual_seed(seed + start)
        greedy = sampling.temperature == 0
        gen = model.generate(
            **enc, do_sample=not greedy, temperature=sampling.temperature if not greedy else None,
            top_p=sampling.top_p if not greedy else None, top_k=(sampling.top_k or None) if not greedy else None,
            max_new_tokens=sampling.max_new_tokens, num_return_sequences=k, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
        )
        new = gen[:, enc["input_ids"].shape[1]:]
        for i in range(len(chunk)):
            group = []
            for j in range(k):
                ids = new[i * k + j].tolist()
                finished = eos in ids
                ids = ids[: ids.index(eos) + 1] if finished else [t for t in ids if t != tokenizer.pad_token_id]
                group.append(Completion(tokenizer.decode(ids, skip_special_tokens=False).replace(tokenizer.eos_token, "").strip(), ids, finished))
            out.append(group)
        if on_batch:
            on_batch(len(chunk))
    return out
