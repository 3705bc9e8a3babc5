"""Generation throughput: vLLM against transformers' `generate`, through Gradatim's own engines (the code generate,
eval and the GRPO rollouts run), on the same model, prompts and sampling settings, in one process.

Every completion runs to `--max-new-tokens` (the model is freshly initialised, so it seldom stops early; the two
engines then produce the same number of tokens). Reported: completion tokens per second, and vLLM's start-up apart
from its generation (on a CPU its start-up is most of a small run, which is why `engine: auto` picks transformers
there). The `1.5b` preset is a ~1.4B-parameter Llama-style model (hidden 2048, 28 layers); it wants a GPU.

Usage: python benchmarks/generation_engines.py [--preset tiny] [--prompts 64] [--samples 4] [--max-new-tokens 128]
       python benchmarks/generation_engines.py --preset 1.5b --prompts 512 --samples 8 --max-new-tokens 1024   # a GPU
Where vLLM does not load (the default venv: PyPI's vLLM is a CUDA build), it runs transformers alone and prints
the command that runs both (the CPU build lives in `.venv-vllm`, made by `make venv-vllm`).
Last line: `engine_hf_tokens_per_s=... engine_vllm_tokens_per_s=... vllm_over_hf=... vllm_startup_s=...`
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESETS = {"tiny": {"hidden": 128, "layers": 4, "heads": 4, "kv_heads": 2},
           "1.5b": {"hidden": 2048, "layers": 28, "heads": 16, "kv_heads": 8}}


def model_dir(preset: str, work: Path) -> Path:
    """A freshly initialised model of the preset's shape, with the tiny tokenizer, saved where both engines load it."""
    import torch

    from gradatim.trainer import tiny

    shape = PRESETS[preset]

    def heads(config):
        config.num_attention_heads, config.num_key_value_heads = shape["heads"], shape["kv_heads"]
        config.head_dim = config.hidden_size // shape["heads"]

    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, seed=0, max_length=4096, hidden=shape["hidden"], layers=shape["layers"], adjust_config=heads)
    if torch.cuda.is_available():
        model = model.to(torch.bfloat16)
    target = work / f"model-{preset}"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def prompts(n: int) -> list[list[dict[str, str]]]:
    from gradatim.trainer import tiny
    from gradatim.trainer.generation import messages

    return [messages(p.prompt, None) for p in tiny.tiny_math("train", n, seed=7)]


def run_engine(name: str, directory: Path, args: argparse.Namespace) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gradatim.api.hyperparams import Sampling
    from gradatim.trainer.generation import HFEngine, VLLMEngine

    sampling = Sampling(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    started = time.perf_counter()
    if name == "hf":
        engine = HFEngine(AutoModelForCausalLM.from_pretrained(directory, dtype="auto"), tokenizer, args.max_batch_tokens, device)
    else:
        engine = VLLMEngine(directory, tokenizer, tensor_parallel_size=1, gpu_memory_utilization=0.8, max_batch_tokens=args.max_batch_tokens,
                            seed=0, distributed=False)
    startup = time.perf_counter() - started
    work = prompts(args.prompts)
    engine.sample(work[:2], 1, sampling, seed=0)  # warm-up: kernels, graphs, the first allocation
    if device.type == "cuda":
        torch.cuda.synchronize()
    before = engine.usage.completion_tokens
    started = time.perf_counter()
    groups = engine.sample(work, args.samples, sampling, seed=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = engine.usage.completion_tokens - before
    assert sum(len(g) for g in groups) == args.prompts * args.samples
    del engine
    return {"startup_s": startup, "seconds": seconds, "tokens": float(tokens), "tokens_per_s": tokens / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="k completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-batch-tokens", type=int, default=65536)
    parser.add_argument("--engines", default="hf,vllm")
    args = parser.parse_args()

    import torch

    from gradatim.trainer.generation import vllm_available

    wanted = [e for e in args.engines.split(",") if e]
    engines = [e for e in wanted if e != "vllm" or vllm_available()]
    on_gpu = torch.cuda.is_available()
    print(f"==> {args.preset} model, {args.prompts} prompts x {args.samples} samples x {args.max_new_tokens} new tokens on "
          f"{'cuda' if on_gpu else 'cpu'}; engines: {', '.join(engines)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gradatim-bench-gen-"))
    directory = model_dir(args.preset, work)
    results = {}
    for name in engines:
        results[name] = run_engine(name, directory, args)
        r = results[name]
        print(f"    {name:<5} start-up {r['startup_s']:7.1f}s  generate {r['seconds']:7.1f}s  {r['tokens']:>9,.0f} tokens  "
              f"{r['tokens_per_s']:>10,.0f} tokens/s", flush=True)
    if "vllm" in wanted and "vllm" not in engines:
        print("vLLM does not load here. CPU: make venv-vllm, then .venv-vllm/bin/python benchmarks/generation_engines.py; "
              "GPU (pip install vllm): python benchmarks/generation_engines.py --preset 1.5b --prompts 512 --samples 8 --max-new-tokens 1024")
    elif not on_gpu:
        print("No GPU here. On a GPU machine: python benchmarks/generation_engines.py --preset 1.5b --prompts 512 --samples 8 --max-new-tokens 1024")
    hf, vllm = results.get("hf", {}), results.get("vllm", {})
    ratio = vllm["tokens_per_s"] / hf["tokens_per_s"] if hf and vllm else math.nan
    print(f"engine_hf_tokens_per_s={hf.get('tokens_per_s', math.nan):.1f} engine_vllm_tokens_per_s={vllm.get('tokens_per_s', math.nan):.1f} "
          f"vllm_over_hf={ratio:.2f} vllm_startup_s={vllm.get('startup_s', math.nan):.1f}")
    return 0


if __name__ == "__main__":  # vLLM's engine starts worker processes that import this module
    sys.exit(main())
