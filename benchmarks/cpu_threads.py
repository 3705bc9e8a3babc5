"""Trainer threads on a shared CPU: the tiny model's sampling (an eval or generate stage) with torch's default thread
count (one per core) against the thread count the trainer now takes from its container's CPU limit
(GRADATIM_CPU_LIMIT, one here), each alone and each beside a neighbour that keeps one core busy, as a second stage
does on the quickstart's two cores. Everything in one process, the neighbour a child process spinning on one core.

Usage: python benchmarks/cpu_threads.py [--batch 128 --new-tokens 96 --rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gradatim.trainer import tiny  # noqa: E402


def spin(stop) -> None:  # a neighbour stage: one core busy until told to stop
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def tokens_per_second(model, tokenizer, batch: int, new_tokens: int, rounds: int) -> float:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False, add_generation_prompt=True)
             for p in tiny.tiny_math("eval", batch)]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(**enc, do_sample=True, temperature=0.6, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        best = max(best, batch * new_tokens / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    default_threads = torch.get_num_threads()
    tokenizer = tiny.build_tokenizer()
    tokenizer.padding_side = "left"
    model = tiny.build_model(tokenizer).eval()
    print(f"{cores} core(s); torch's default: {default_threads} thread(s); a batch of {args.batch} x {args.new_tokens} new tokens")
    results = {}
    for neighbour in (False, True):
        stop = multiprocessing.Event()
        child = multiprocessing.Process(target=spin, args=(stop,), daemon=True) if neighbour else None
        if child:
            child.start()
        try:
            for label, threads in (("default", default_threads), ("limit", 1)):
                torch.set_num_threads(threads)
                results[(label, neighbour)] = tokens_per_second(model, tokenizer, args.batch, args.new_tokens, args.rounds)
                where = "beside a busy core" if neighbour else "alone"
                print(f"{where:18} {threads} thread(s) ({label:7}): {results[(label, neighbour)]:9,.0f} tokens/s", flush=True)
        finally:
            if child:
                stop.set()
                child.join()
    torch.set_num_threads(default_threads)
    alone = results[("limit", False)] / results[("default", False)]
    shared = results[("limit", True)] / results[("default", True)]
    print(f"one thread / default, alone: x{alone:.2f}; beside a busy core: x{shared:.2f}")
    print(f"cores={cores} default_threads={default_threads} alone_ratio={alone:.3f} shared_ratio={shared:.3f}")


if __name__ == "__main__":
    main()
